"""The image URL rule: every spelling of a non-public address is refused and the
error names the rule; public hosts pass; the setting admits private hosts only.

The property tests render one address in every spelling a C resolver or a browser
accepts (decimal, octal, hex, short forms, IPv4-mapped IPv6, trailing dot,
full-width digits) and check the verdict is the address's, whatever the spelling.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.images import image_data_uri
from tests.support.url_strategies import never_v4, private_v4, public_v4, urls
from worker.image_refs import (
    PRIVATE_HINT,
    ImageReferenceError,
    check_address,
    check_image_reference,
)
from worker.limits import MAX_IMAGE_URL_CHARS, MAX_INLINE_IMAGE_BYTES

PUBLIC = [
    "https://example.com/cat.png",
    "http://example.com:8080/a/b.png?x=1&y=2#frag",
    "HTTPS://CDN.Example.COM/A.PNG",
    "https://8.8.8.8/x.png",
    "https://134744072/x.png",  # 8.8.8.8 spelled in decimal: still public
    "https://[2606:4700:4700::1111]/x.png",
    "https://[::ffff:8.8.8.8]/x.png",
    "https://xn--bcher-kva.de/a.png",
    "https://bücher.de/a.png",
    "https://d1.cloudfront.net/p/img.webp",
    "https://placeholder.invalid/previous-step-output.png",  # the chain placeholder
    image_data_uri(),
    image_data_uri(image_format="JPEG").replace("image/jpeg", "image/JPEG"),
]

#: (reference, words the error must contain). The setting does not change these.
ALWAYS_REFUSED = [
    ("file:///etc/passwd", "scheme 'file' not allowed"),
    ("ftp://example.com/a.png", "scheme 'ftp' not allowed"),
    ("gopher://example.com/", "scheme 'gopher' not allowed"),
    ("javascript:alert(1)", "must be an http(s) URL"),
    ("example.com/a.png", "must be an http(s) URL"),
    ("http:///a.png", "no host"),
    ("http://", "no host"),
    ("http://user@example.com/a.png", "user info"),
    ("http://user:pw@example.com/a.png", "user info"),
    ("http://127.0.0.1\\@example.com/", "user info"),
    ("http://example.com/a b.png", "control character or whitespace (U+0020)"),
    ("http://example.com/a\nb.png", "(U+000A)"),
    ("http://exa\tmple.com/", "(U+0009)"),
    ("http://example.com/\x1b[2J", "(U+001B)"),
    ("http://example.com/\u202egnp.exe", "(U+202E)"),
    ("http://example.com:0/", "port 0"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://[::1/", "not a valid URL"),
    ("http://%31%32%37.0.0.1/", "not a valid host name"),
    ("http://1.2.3.4.5/", "looks like an IPv4 address"),
    ("http://foo.123/", "looks like an IPv4 address"),
    ("http://089.1.1.1/", "looks like an IPv4 address"),  # 8 and 9 are not octal
    ("http://4294967296/", "looks like an IPv4 address"),
    ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
    ("http://2852039166/", "link-local address 169.254.169.254"),
    ("http://[fe80::1]/", "link-local address fe80::1"),
    ("http://[fe80::1%25eth0]/", "zone ids"),
    ("http://[::ffff:169.254.169.254]/", "link-local address 169.254.169.254"),
    ("http://0.0.0.0/", "unspecified address 0.0.0.0"),
    ("http://0/", "unspecified address 0.0.0.0"),
    ("http://[::]/", "unspecified address ::"),
    ("http://224.0.0.1/", "multicast address"),
    ("http://[ff02::1]/", "multicast address"),
    ("http://240.0.0.1/", "special-purpose address"),
    ("http://255.255.255.255/", "special-purpose address"),
    ("http://192.0.2.1/", "special-purpose address"),
    ("http://[::127.0.0.1]/", "special-purpose address"),
    ("http://example.com/" + "a" * MAX_IMAGE_URL_CHARS, "longer than 4096"),
    ("data:text/plain;base64,aGk=", "data:image/<type>;base64"),
    ("data:image/svg+xml;base64,PHN2Zz4=", "image/svg+xml not accepted"),
    ("data:image/png,rawbytes", "data:image/<type>;base64"),
    ("data:image/png;base64,iVB ORw0=", "not valid base64"),
    ("data:image/png;base64,iVBORw0", "not valid base64"),
    ("data:image/png;base64,", "not valid base64"),
    (
        "data:image/png;base64," + "A" * ((MAX_INLINE_IMAGE_BYTES // 3 + 1) * 4),
        "inline images are capped at 10.0 MB",
    ),
]

#: Private hosts: refused by default with the setting's name, admitted with it.
PRIVATE = [
    ("http://127.0.0.1:6379/", "private address 127.0.0.1 not allowed: loopback"),
    ("http://2130706433/", "127.0.0.1 (written '2130706433')"),
    ("http://0x7f000001/", "127.0.0.1 (written '0x7f000001')"),
    ("http://0x7f.1/", "127.0.0.1 (written '0x7f.1')"),
    ("http://0177.0.0.1/", "127.0.0.1 (written '0177.0.0.1')"),
    ("http://127.000.000.001/", "private address 127.0.0.1"),
    ("http://127.1/", "127.0.0.1 (written '127.1')"),
    ("http://127.0.1/", "private address 127.0.0.1"),
    ("http://127.0.0.1./", "private address 127.0.0.1"),
    ("http://0X7F.0.0.1/", "private address 127.0.0.1"),
    ("http://１２７.０.０.１/", "private address 127.0.0.1"),  # noqa: RUF001 - full-width digits
    ("http://[::1]:8080/", "private address ::1 not allowed: loopback"),
    ("http://[::ffff:127.0.0.1]/", "private address 127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "private address 127.0.0.1"),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "private address 127.0.0.1"),
    ("http://[2002:7f00:1::]/", "private address 127.0.0.1"),  # 6to4
    ("http://10.1.2.3/", "private address 10.1.2.3 not allowed: private range"),
    ("http://167772161/", "private address 10.0.0.1"),
    ("http://172.16.0.1/", "private range"),
    ("http://172.31.255.255/", "private range"),
    ("http://192.168.1.10/", "private range"),
    ("http://[fc00::1]/", "private range"),
    ("http://[fd12:3456::1]/", "private range"),
    ("http://100.64.0.1/", "shared address space (CGNAT)"),
    ("http://localhost/", "private host name 'localhost' not allowed: a loopback name"),
    ("http://LOCALHOST./", "private host name 'localhost'"),
    ("http://api.localhost/", ".localhost names are local"),
    ("http://ip6-localhost/", "a loopback name"),
    ("http://printer.local/", ".local names are local"),
    ("http://metadata.google.internal/", ".internal names are local"),
    ("http://nas.home.arpa/", ".home.arpa names are local"),
    ("http://minio:9000/bucket/a.png", "a name without a dot"),
]


@pytest.mark.parametrize("reference", PUBLIC)
def test_public_references_pass_unchanged(reference: str) -> None:
    assert check_image_reference(reference) == reference


@pytest.mark.parametrize(("reference", "why"), ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_refused_references_name_the_rule(reference: str, why: str, allow_private: bool) -> None:
    with pytest.raises(ImageReferenceError) as refused:
        check_image_reference(reference, allow_private=allow_private)
    assert why in str(refused.value)
    assert PRIVATE_HINT not in str(refused.value)  # the setting would not help


@pytest.mark.parametrize(("reference", "why"), PRIVATE)
def test_private_hosts_need_the_setting(reference: str, why: str) -> None:
    with pytest.raises(ImageReferenceError) as refused:
        check_image_reference(reference)
    assert why in str(refused.value)
    assert "set WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS=1 for in-house image hosts" in str(refused.value)
    assert check_image_reference(reference, allow_private=True) == reference


def test_a_fetcher_checks_every_resolved_address() -> None:
    """Names pass by spelling; whoever fetches checks what they resolve to."""
    check_address(ipaddress.ip_address("93.184.216.34"))
    with pytest.raises(ImageReferenceError, match=r"private address 10\.0\.0\.7"):
        check_address(ipaddress.ip_address("10.0.0.7"))
    check_address(ipaddress.ip_address("10.0.0.7"), allow_private=True)
    with pytest.raises(ImageReferenceError, match="link-local"):
        check_address(ipaddress.ip_address("169.254.169.254"), allow_private=True)


# property tests ----------------------------------------------------------------


@given(url=urls(private_v4))
def test_every_spelling_of_a_private_address_is_refused_unless_allowed(url: str) -> None:
    with pytest.raises(ImageReferenceError, match="private address"):
        check_image_reference(url)
    assert check_image_reference(url, allow_private=True) == url


@given(url=urls(never_v4))
def test_every_spelling_of_a_never_allowed_address_is_refused(url: str) -> None:
    with pytest.raises(ImageReferenceError, match=r"(unspecified|link-local|multicast|special)"):
        check_image_reference(url, allow_private=True)


@given(url=urls(public_v4))
def test_every_spelling_of_a_public_address_passes(url: str) -> None:
    assert check_image_reference(url) == url


@given(
    name=st.from_regex(
        r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,2}\.(com|net|org|io|de)", fullmatch=True
    )
)
def test_public_names_pass(name: str) -> None:
    url = f"https://{name}/image.png"
    assert check_image_reference(url) == url


@given(
    before=st.text(max_size=10),
    bad=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]),
    after=st.text(max_size=10),
)
def test_control_characters_and_whitespace_are_refused_anywhere(
    before: str, bad: str, after: str
) -> None:
    with pytest.raises(ImageReferenceError):
        check_image_reference(f"https://example.com/{before}{bad}{after}", allow_private=True)
