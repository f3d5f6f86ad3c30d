"""``worker.safe_fetch.fetch`` against a real HTTP server on 127.0.0.1: the URL rule on
the first URL, on every address the name resolves to and after every redirect; bodies
streamed and refused past the cap."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from tests.support.http_files import HttpFiles, http_files
from worker.safe_fetch import FetchError, fetch


@pytest.fixture
def server() -> Iterator[HttpFiles]:
    with http_files() as files:
        yield files


def test_a_file_is_streamed_into_the_sink(server: HttpFiles) -> None:
    server.files["a.png"] = (b"\x89PNG" + b"x" * 200_000, "image/png")
    sink = io.BytesIO()

    fetched = fetch(server.url("a.png"), sink, max_bytes=1_000_000, allow_private=True)

    assert (fetched.size, fetched.content_type) == (200_004, "image/png")
    assert sink.getvalue() == server.files["a.png"][0]


def test_a_private_host_is_refused_before_any_request(server: HttpFiles) -> None:
    server.files["a.png"] = (b"png", "image/png")
    with pytest.raises(FetchError) as refused:
        fetch(server.url("a.png"), io.BytesIO(), max_bytes=1000)
    assert refused.value.refused
    assert "private address 127.0.0.1 not allowed: loopback" in str(refused.value)
    assert server.requests["a.png"] == 0


def test_a_public_name_that_resolves_to_a_private_address_is_refused(server: HttpFiles) -> None:
    server.files["a.png"] = (b"png", "image/png")
    port = server.base_url.rsplit(":", 1)[1]
    looked_up: list[str] = []

    def rebinding(host: str, _port: int) -> list[str]:
        looked_up.append(host)
        return ["93.184.216.34", "127.0.0.1"]  # one public answer, one loopback

    with pytest.raises(FetchError) as refused:
        fetch(
            f"http://images.example.com:{port}/a.png",
            io.BytesIO(),
            max_bytes=1000,
            resolver=rebinding,
        )
    assert refused.value.refused
    assert "private address 127.0.0.1 (written 'images.example.com')" in str(refused.value)
    assert looked_up == ["images.example.com"]
    assert server.requests["a.png"] == 0


def test_the_checked_address_is_the_one_connected_to(server: HttpFiles) -> None:
    """The name is resolved once, by the fetcher; the request still names the host."""
    server.files["a.png"] = (b"png", "image/png")
    port = server.base_url.rsplit(":", 1)[1]
    sink = io.BytesIO()

    fetch(
        f"http://images.internal.test:{port}/a.png",
        sink,
        max_bytes=1000,
        allow_private=True,
        resolver=lambda _host, _port: ["127.0.0.1"],
    )

    assert sink.getvalue() == b"png"


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
        ("file:///etc/passwd", "scheme 'file' not allowed"),
        ("http://user@127.0.0.1/", "user info"),
        ("http://0.0.0.0:6379/", "unspecified address 0.0.0.0"),
    ],
)
def test_every_redirect_is_checked_again(server: HttpFiles, location: str, why: str) -> None:
    server.redirects["start.png"] = location
    with pytest.raises(FetchError) as refused:
        fetch(server.url("start.png"), io.BytesIO(), max_bytes=1000, allow_private=True)
    assert refused.value.refused
    assert why in str(refused.value)


def test_redirects_are_followed_a_few_times_only(server: HttpFiles) -> None:
    for n in range(10):
        server.redirects[f"r{n}"] = server.url(f"r{n + 1}")
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch(server.url("r0"), io.BytesIO(), max_bytes=1000, allow_private=True)
    assert sum(server.requests.values()) == 6


def test_a_declared_size_over_the_cap_is_refused_before_reading(server: HttpFiles) -> None:
    server.files["big.png"] = (b"x" * 5000, "image/png")
    sink = io.BytesIO()
    with pytest.raises(FetchError, match="the limit is"):
        fetch(server.url("big.png"), sink, max_bytes=4096, allow_private=True)
    assert sink.getvalue() == b""


def test_a_body_without_end_stops_at_the_cap(server: HttpFiles) -> None:
    server.endless.add("endless.png")
    sink = io.BytesIO()
    with pytest.raises(FetchError, match="larger than the limit"):
        fetch(server.url("endless.png"), sink, max_bytes=1_000_000, allow_private=True)
    assert len(sink.getvalue()) <= 1_000_000
