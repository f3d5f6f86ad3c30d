"""Who may see the jobs page: the rules Flower follows (``ops/flower/guard.py``).

On a loopback address no login is asked; beyond it, basic auth is required
(``WAVEQUEUE_JOBS_BASIC_AUTH=user:password``, several comma-separated) or the exporter
refuses to serve the page. Passwords are compared in constant time and never echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence

from ops.flower.guard import FlowerConfigError, check_basic_auth, is_loopback


class JobsPageConfigError(Exception):
    """The jobs page must not be served with this configuration."""


def parse_credentials(value: str | None) -> list[str]:
    """``user:password[,user:password...]`` as a list; ``JobsPageConfigError`` if malformed."""
    entries = [entry.strip() for entry in (value or "").split(",") if entry.strip()]
    try:
        check_basic_auth(entries)
    except FlowerConfigError:
        raise JobsPageConfigError(
            "WAVEQUEUE_JOBS_BASIC_AUTH must be user:password (several: comma-separated), "
            "each with a non-empty user and password"
        ) from None
    return entries


def check_exposure(address: str, credentials: Sequence[str]) -> None:
    """Beyond localhost the page needs a login, as Flower does."""
    if credentials or is_loopback(address):
        return
    shown = address or "all interfaces"
    raise JobsPageConfigError(
        f"refusing to serve the jobs page on {shown} without a login: set "
        "WAVEQUEUE_JOBS_BASIC_AUTH=user:password, listen on 127.0.0.1, or pass --no-jobs-page"
    )


def authorized(header: str | None, credentials: Sequence[str]) -> bool:
    """Whether an ``Authorization`` header carries one of ``credentials`` (always true when
    none are configured)."""
    if not credentials:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme != "Basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Every entry compared, so the time taken does not tell which one matched.
    matches = [hmac.compare_digest(given.encode(), entry.encode()) for entry in credentials]
    return any(matches)
