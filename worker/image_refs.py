"""The one rule for input image references: which URLs and data URIs a request may carry.

A request's image goes to WaveSpeed, which fetches it; the day a worker fetches
images itself (to upload them), a URL becomes a request made from inside our
network. So the rule refuses, before anything is enqueued, what cannot work
from WaveSpeed's side and what would be server-side request forgery from ours:

- ``http``/``https`` only, with a host, no ``user@`` part, no control characters
  or whitespace, at most ``MAX_IMAGE_URL_CHARS`` long;
- the host is a public address, read the way C resolvers and browsers read it
  (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``, ``[::ffff:127.0.0.1]``,
  a trailing dot, full-width digits all mean 127.0.0.1), or a name that is not
  local by its spelling (``localhost``, ``*.localhost``, ``.local``,
  ``.internal``, a name without a dot);
- ``allow_private`` (the ``WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS`` setting, passed in
  by the caller: this module reads no environment) admits loopback, private and
  shared (CGNAT) addresses and local names, for in-house image hosts and the
  emulator. Link-local (where cloud metadata services answer), multicast,
  unspecified and other special-purpose addresses are refused even then: no
  image host lives there;
- ``data:image/<png|jpeg|webp|gif|bmp|tiff>;base64,<payload>`` with strict base64,
  at most ``MAX_INLINE_IMAGE_BYTES`` once decoded, whose header (``worker.image_header``)
  is an image of an accepted type with at most ``MAX_IMAGE_PIXELS`` pixels.

Names are judged by spelling only: validation does no DNS (a producer cannot
resolve names the way the fetcher will, and an answer can change between the
check and the fetch). Whoever fetches must resolve the name, check each address
with ``check_address`` and connect to that address, and do it again after every
redirect.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import unicodedata
from urllib.parse import SplitResult, urlsplit

from worker.limits import MAX_IMAGE_URL_CHARS, MAX_INLINE_IMAGE_BYTES, megabytes

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The setting that admits private addresses, named in every refusal it would lift.
PRIVATE_HINT = "set WAVEQUEUE_ALLOW_PRIVATE_IMAGE_URLS=1 for in-house image hosts"
SCHEMES = ("http", "https")
DATA_URI_TYPES = ("png", "jpeg", "jpg", "webp", "gif", "bmp", "tiff")

_DATA_URI_HEAD = re.compile(r"data:image/([a-z0-9.+-]+);base64,", re.IGNORECASE)
_ASCII_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
#: Base64 characters decoded first to read an inline image's header (192 KB of image).
_HEADER_CHARS = 256 * 1024
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
#: A label that makes a C resolver or a browser read the whole host as IPv4.
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")

_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")
)
_SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
#: Suffixes reserved for local use (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal).
_LOCAL_SUFFIXES = ("localhost", "local", "internal", "localdomain", "home.arpa")


class ImageReferenceError(ValueError):
    """Why an image reference is refused; the message names the rule it broke."""


def check_image_reference(value: str, *, allow_private: bool = False) -> str:
    """``value`` if it is an allowed http(s) URL or ``data:image`` URI; else
    ``ImageReferenceError``."""
    if value[:5].lower() == "data:":
        check_data_uri(value)
    else:
        check_image_url(value, allow_private=allow_private)
    return value


def check_data_uri(uri: str) -> None:
    """A ``data:image/<type>;base64,`` URI with a strict base64 payload within the cap."""
    head = _DATA_URI_HEAD.match(uri)
    if head is None:
        raise ImageReferenceError(
            "a data URI must be data:image/<type>;base64,<payload> with type one of "
            + ", ".join(DATA_URI_TYPES)
        )
    if head.group(1).lower() not in DATA_URI_TYPES:
        raise ImageReferenceError(
            f"data URI type image/{head.group(1)} not accepted; use one of "
            + ", ".join(DATA_URI_TYPES)
        )
    payload = uri[head.end() :]
    decoded = data_uri_bytes(uri)
    if decoded > MAX_INLINE_IMAGE_BYTES:
        raise ImageReferenceError(
            f"data URI holds {megabytes(decoded)}; inline images are capped at "
            f"{megabytes(MAX_INLINE_IMAGE_BYTES)} (host bigger images yourself and pass the URL)"
        )
    if not payload or len(payload) % 4 or not _BASE64.fullmatch(payload):
        raise ImageReferenceError(
            "data URI payload is not valid base64 (no whitespace, padded to 4 characters)"
        )
    # Read from its header as a local file is: an image WaveSpeed takes, within the
    # pixel limit (a 48 KB data URI can be a 400 MP decompression bomb).
    from worker.image_header import image_type  # noqa: PLC0415 - Pillow only when needed

    if len(payload) > _HEADER_CHARS:
        # Headers come first in PNG, JPEG, GIF, WebP and BMP: decoding a prefix spares
        # tens of milliseconds per big image. TIFF may keep its header at the end.
        try:
            image_type(base64.b64decode(payload[:_HEADER_CHARS]), "the data URI")
        except ImageReferenceError:
            pass
        else:
            return
    image_type(base64.b64decode(payload), "the data URI")


def data_uri_bytes(uri: str) -> int:
    """The decoded size of a base64 data URI's payload, without decoding it."""
    payload = uri.partition(",")[2]
    return len(payload) * 3 // 4 - (len(payload) - len(payload.rstrip("=")))


def check_image_url(url: str, *, allow_private: bool = False) -> None:
    """An http(s) URL with a host that may be fetched (see the module's rule)."""
    if len(url) > MAX_IMAGE_URL_CHARS:
        raise ImageReferenceError(f"URL is longer than {MAX_IMAGE_URL_CHARS} characters")
    bad = _ASCII_CONTROL_OR_SPACE.search(url) if url.isascii() else _unicode_control(url)
    if bad is not None:
        char = bad if isinstance(bad, str) else bad.group()
        raise ImageReferenceError(
            f"URL contains a control character or whitespace (U+{ord(char):04X})"
        )
    if "://" not in url:
        raise ImageReferenceError("must be an http(s) URL or a data:image/...;base64 URI")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ImageReferenceError(f"not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ImageReferenceError(
            f"scheme {parts.scheme!r} not allowed: an image is an http(s) URL "
            "or a data:image/...;base64 URI"
        )
    if "@" in parts.netloc:
        raise ImageReferenceError("URL with user info (user@host) not allowed")
    if not parts.hostname:
        raise ImageReferenceError("URL has no host")
    if port == 0:
        raise ImageReferenceError("URL has port 0")
    _check_host(parts, allow_private=allow_private)


def check_address(address: IPAddress, *, allow_private: bool = False, written: str = "") -> None:
    """Refuse a non-public address (a fetcher calls this on every address a name
    resolves to). ``written`` is how the URL spelled it, when that differs."""
    embedded = _embedded_ipv4(address)
    target = embedded if embedded is not None else address
    shown = str(target) + (f" (written {written!r})" if written and written != str(target) else "")
    never = _never_allowed(target)
    if never is not None:
        raise ImageReferenceError(f"{never} address {shown} not allowed")
    private = _private_kind(target)
    if private is not None and not allow_private:
        raise ImageReferenceError(
            f"private address {shown} not allowed: {private} ({PRIVATE_HINT})"
        )


def _check_host(parts: SplitResult, *, allow_private: bool) -> None:
    host = parts.hostname or ""
    if "[" in parts.netloc:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ImageReferenceError(f"host [{host}] is not a valid IPv6 address") from None
        if address.scope_id:
            raise ImageReferenceError("IPv6 zone ids (%25...) not allowed")
        check_address(address, allow_private=allow_private, written=host)
        return
    name = _ascii_host(host)
    if name.endswith("."):
        name = name[:-1]  # "127.0.0.1." and "localhost." are the same hosts
    if not _HOST_NAME.fullmatch(name):
        raise ImageReferenceError(f"host {host!r} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        ipv4 = _inet_aton(name)
        if ipv4 is None:
            raise ImageReferenceError(f"host {host!r} looks like an IPv4 address but is not one")
        check_address(ipv4, allow_private=allow_private, written=host)
        return
    local = _local_name_kind(name)
    if local is not None and not allow_private:
        raise ImageReferenceError(
            f"private host name {name!r} not allowed: {local} ({PRIVATE_HINT})"
        )


def _unicode_control(url: str) -> str | None:
    """The first control, format (bidi overrides, zero-width) or space character."""
    for char in url:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Zs"):
            return char
    return None


def _ascii_host(host: str) -> str:
    """The host as a resolver will see it: IDNA-encoded, which also maps full-width
    digits and the ideographic full stop (U+FF11, U+3002, ...) to ASCII ones."""
    if host.isascii():
        return host.lower()
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ImageReferenceError(
            f"host {host!r} is not a valid internationalized domain name"
        ) from None


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` as inet_aton(3) and the WHATWG URL parser do: 1-4 parts, each
    decimal, octal (leading 0) or hex (0x); the last part fills the remaining bytes."""
    numbers: list[int] = []
    for label in host.split("."):
        if label[:2] == "0x":
            digits = label[2:]
            number = int(digits, 16) if digits else 0
        elif len(label) > 1 and label.startswith("0"):
            if not set(label) <= set("01234567"):
                return None
            number = int(label, 8)
        elif label.isdigit():
            number = int(label)
        else:
            return None
        numbers.append(number)
    if len(numbers) > 4 or any(n > 255 for n in numbers[:-1]):
        return None
    last_bytes = 5 - len(numbers)
    if numbers[-1] >= 256**last_bytes:
        return None
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped ``::ffff:a.b.c.d``, 6to4)."""
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped or address.sixtofour
    return None


def _never_allowed(address: IPAddress) -> str | None:
    """What makes ``address`` unusable even for in-house hosts, if anything."""
    if address.is_loopback or _private_kind(address) is not None:
        return None
    for kind, applies in (
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),  # 169.254.169.254: cloud metadata
        ("multicast", address.is_multicast),
        ("special-purpose", address.is_reserved or address.is_private or not address.is_global),
    ):
        if applies:
            return kind
    return None


def _private_kind(address: IPAddress) -> str | None:
    if address.is_loopback:
        return "loopback"
    if any(address in network for network in _PRIVATE_NETWORKS):
        return "private range"
    if address in _SHARED_NETWORK:
        return "shared address space (CGNAT)"
    return None


def _local_name_kind(name: str) -> str | None:
    if name in _LOOPBACK_NAMES:
        return "a loopback name"
    for suffix in _LOCAL_SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            return f".{suffix} names are local"
    if "." not in name:
        return "a name without a dot is resolved on the local network"
    return None
