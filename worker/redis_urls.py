"""What a ``REDIS_URL`` may look like, checked when the settings are read.

redis-py and Celery parse the URL only when they first connect, and then a typo
is a ``ValueError`` traceback (``Port could not be cast to integer value``) or,
worse, a URL without a host quietly means localhost. ``check_redis_url`` refuses
such a URL up front, in words that name the problem and never the password
(``redact``), so every command says it in one line and stops with exit 78.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

#: The schemes wavequeue connects with (see ``worker.redis_connection``).
SCHEMES = ("redis", "rediss", "sentinel")
#: ``scheme://user:password@`` -> group 1 is ``scheme://user:``.
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s;]*:)[^\s;]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` (a URL, several ``;``-separated, or a sentence quoting one) with every
    password in a URL replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def check_redis_url(url: str) -> None:
    """``ValueError`` naming the first problem of ``url`` (the URL quoted without its
    password), or nothing when redis-py and Celery can use it."""
    chunks = [chunk.strip() for chunk in url.split(";")]
    shown = redact(url)
    if not url.strip() or any(not chunk for chunk in chunks):
        raise ValueError(f"empty URL or an empty part between ';' ({shown})")
    schemes = set()
    for chunk in chunks:
        problem = _problem(chunk)
        if problem is not None:
            raise ValueError(f"{problem} ({shown})")
        schemes.add(chunk.partition("://")[0].lower())
    if len(chunks) > 1 and schemes != {"sentinel"}:
        raise ValueError(f"only sentinel:// URLs can be listed with ';' ({shown})")


def _problem(chunk: str) -> str | None:
    scheme, separator, _ = chunk.partition("://")
    if not separator or scheme.lower() not in SCHEMES:
        named = scheme if separator else chunk.partition(":")[0]
        return f"scheme {named!r} is not one of " + ", ".join(f"{s}://" for s in SCHEMES)
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in chunk):
        return "the URL contains a space or a control character"
    parts = urlsplit(chunk)
    return _host_problem(parts) or _port_problem(parts) or _database_problem(parts)


def _host_problem(parts: SplitResult) -> str | None:
    try:
        host = parts.hostname
    except ValueError:
        return "the host is not valid"
    # redis-py reads a missing host as localhost: never guess which Redis was meant.
    return None if host else "the URL has no host"


def _database_problem(parts: SplitResult) -> str | None:
    database = parts.path.strip("/")
    if database and not database.isdigit():
        return f"database {database!r} is not a number (the path is /<db>, e.g. /0)"
    return None


def _port_problem(parts: SplitResult) -> str | None:
    port = parts.netloc.rpartition("@")[2]
    if port.startswith("["):  # an IPv6 address: the port follows the bracket
        port = port.partition("]")[2]
    if ":" not in port:
        return None
    text = port.rpartition(":")[2]
    if not text.isdigit():
        return f"port {text!r} is not a number"
    if not 0 < int(text) < 65536:
        return f"port {int(text)} is out of range (1-65535)"
    return None
