"""Fetching a URL that came from outside, the way ``worker.image_refs`` says it must be done.

The URL rule judges a host by its spelling; a fetch must also judge the addresses the
name resolves to, and connect to an address it judged (never resolve twice: the
second answer could differ). So ``fetch``:

1. checks the URL against the rule (``check_image_url``: http(s), a host, no
   ``user@``, no control characters, a public host unless ``allow_private``);
2. resolves the host once and checks every address with ``check_address``;
3. connects to the first address itself, sending the name as the ``Host`` header
   and as TLS server name (the certificate is still checked against the name);
4. follows at most ``MAX_REDIRECTS`` redirects, each one checked the same way;
5. streams the body into the caller's file, refusing it past ``max_bytes`` (from the
   ``Content-Length`` if given, else while reading) and past ``total_timeout`` seconds.

Anything refused or failed raises ``FetchError`` (``refused`` tells the rule from the
network), whose message names the rule or the failure. Nothing is kept in memory
beyond one chunk.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3

from worker.image_refs import ImageReferenceError, IPAddress, check_address, check_image_url
from worker.limits import megabytes
from worker.outside_text import printable

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[[str, int], list[str]]


class FetchError(Exception):
    """The fetch was refused (``refused=True``: the URL rule) or failed."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Fetched:
    """What came back: the body went to the caller's file."""

    url: str
    content_type: str
    size: int


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (TCP), as the system resolver answers."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host!r}: {exc.strerror}") from None
    return list(dict.fromkeys(str(answer[4][0]) for answer in answers))


def fetch(
    url: str,
    sink: BinaryIO,
    *,
    max_bytes: int,
    allow_private: bool = False,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    total_timeout: float = 300.0,
    resolver: Resolver = system_resolver,
) -> Fetched:
    """GET ``url`` (following checked redirects) and write the body to ``sink``."""
    give_up_at = time.monotonic() + total_timeout
    for _ in range(MAX_REDIRECTS + 1):
        response = _request(url, allow_private, connect_timeout, read_timeout, resolver)
        try:
            if response.status in _REDIRECTS:
                location = response.headers.get("Location")
                if not location:
                    raise FetchError(
                        f"{_shown(url)} answered HTTP {response.status} without a Location"
                    )
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise FetchError(f"{_shown(url)} answered HTTP {response.status}")
            size = _stream(response, sink, url, max_bytes, give_up_at)
            content_type = str(response.headers.get("Content-Type", "")).split(";")[0].strip()
            return Fetched(url=url, content_type=content_type.lower(), size=size)
        finally:
            response.release_conn()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects from {_shown(url)}")


def _request(
    url: str,
    allow_private: bool,
    connect_timeout: float,
    read_timeout: float,
    resolver: Resolver,
) -> urllib3.BaseHTTPResponse:
    try:
        check_image_url(url, allow_private=allow_private)
    except ImageReferenceError as exc:
        raise FetchError(f"{_shown(url)}: {exc}", refused=True) from None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    address = _checked_address(host, port, allow_private, resolver)
    timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            assert_hostname=host,
            server_hostname=host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    try:
        return pool.urlopen(
            "GET",
            target,
            headers={"Host": host_header, "User-Agent": "wavequeue", "Accept": "image/*"},
            redirect=False,
            preload_content=False,
            assert_same_host=False,
        )
    except urllib3.exceptions.HTTPError as exc:
        raise FetchError(f"cannot fetch {_shown(url)}: {type(exc).__name__}") from None


def _checked_address(host: str, port: int, allow_private: bool, resolver: Resolver) -> str:
    """The address to connect to: every address the name has must pass the rule."""
    literal = host.strip("[]")
    addresses = [literal] if _is_ip(literal) else resolver(host, port)
    if not addresses:
        raise FetchError(f"{host!r} resolves to no address")
    for text in addresses:
        address: IPAddress = ipaddress.ip_address(text.partition("%")[0])
        try:
            check_address(address, allow_private=allow_private, written=host)
        except ImageReferenceError as exc:
            raise FetchError(f"{host}: {exc}", refused=True) from None
    return addresses[0]


def _stream(
    response: urllib3.BaseHTTPResponse, sink: BinaryIO, url: str, max_bytes: int, give_up_at: float
) -> int:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(
            f"{_shown(url)} is {megabytes(int(declared))}; the limit is {megabytes(max_bytes)}"
        )
    size = 0
    try:
        for chunk in response.stream(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(
                    f"{_shown(url)} is larger than the limit of {megabytes(max_bytes)}"
                )
            if time.monotonic() > give_up_at:
                raise FetchError(f"{_shown(url)} took too long to download")
            sink.write(chunk)
    except urllib3.exceptions.HTTPError as exc:
        raise FetchError(f"cannot fetch {_shown(url)}: {type(exc).__name__}") from None
    return size


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _shown(url: str) -> str:
    return printable(url, 200)
