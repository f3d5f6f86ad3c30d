"""The urllib3 pool manager WaveSpeed calls go through: one per worker process, after fork.

urllib3 directly rather than requests: a submit and a poll through requests cost the
worker about twice the CPU (``python -m ops.bench.http_client``), for nothing the
client uses. What requests did around urllib3, and what is kept of it:

- **TLS**: certificates are verified, against certifi's CAs as requests did. They are
  loaded once, into one ``SSLContext`` that every connection shares (loading them per
  connection costs milliseconds).
- **Proxies**, only when ``proxy_from_env`` (``Settings``: a standard proxy variable was
  set at start). Then the calls go through the proxy requests would have picked for the
  API's URL: ``<scheme>_proxy``, else ``all_proxy`` (lower-case names first), none when
  ``NO_PROXY`` covers the host; and the CAs are ``REQUESTS_CA_BUNDLE`` or
  ``CURL_CA_BUNDLE`` when one is set. requests' own functions read these, once here:
  the same choice the requests client made on every call. Credentials in the proxy URL
  become a ``Proxy-Authorization`` header (or the SOCKS login). ``Settings`` keeps only
  the flag, so that proxy credentials never sit in it.
- **Pools**: four hosts' pools of ``pool_size`` connections each, never blocking (a
  thread past the size opens a connection that is not kept), as requests' adapter had.

Retries and redirects are the client's to set per request (``worker.wavespeed``).
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import certifi
import urllib3
from urllib3.util import Url, parse_url
from urllib3.util.ssl_ import create_urllib3_context

from worker.errors import ConfigError

#: Host pools kept (requests' ``pool_connections``): the API's host, and room for a
#: redirect's or an upload's.
NUM_POOLS = 4


@dataclass(frozen=True)
class EnvironmentProxy:
    """What the proxy variables say for one URL: the proxy (None: connect directly) and
    the CA bundle (None: certifi's)."""

    proxy: Url | None
    ca_bundle: str | None

    @property
    def credentials(self) -> tuple[str, str]:
        """The proxy URL's user and password (empty: none), percent-decoded."""
        auth = self.proxy.auth if self.proxy is not None else None
        user, _, password = (auth or "").partition(":")
        return unquote(user), unquote(password)


def environment_proxy(url: str) -> EnvironmentProxy:
    """The proxy and CA bundle requests would use for ``url`` with ``trust_env`` on.
    Raises ``ConfigError`` for a proxy that cannot be used (the message never quotes
    the proxy URL: it may hold a password)."""
    # requests only here (proxy users), and only for its reading of the environment.
    import requests  # noqa: PLC0415
    from requests.utils import select_proxy  # noqa: PLC0415

    merged = requests.Session().merge_environment_settings(url, {}, None, None, None)
    verify = merged["verify"]
    ca_bundle = verify if isinstance(verify, str) else None
    chosen = select_proxy(url, merged["proxies"])
    if not chosen:
        return EnvironmentProxy(None, ca_bundle)
    # A variable without a scheme means http, to requests as to curl.
    try:
        proxy = parse_url(chosen if "://" in chosen else f"http://{chosen}")
    except urllib3.exceptions.LocationParseError:
        raise ConfigError("the proxy variable for WaveSpeed calls is not a URL") from None
    scheme = (proxy.scheme or "").lower()
    if not proxy.host:
        raise ConfigError("the proxy variable for WaveSpeed calls names no host")
    if scheme.startswith("socks"):
        if importlib.util.find_spec("socks") is None:
            raise ConfigError(
                "a SOCKS proxy is set for WaveSpeed calls, and PySocks is not installed "
                "(pip install PySocks)"
            )
    elif scheme not in ("http", "https"):
        raise ConfigError(f"the proxy for WaveSpeed calls has an unknown scheme ({scheme})")
    return EnvironmentProxy(proxy, ca_bundle)


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A verifying context with ``ca_bundle`` (a file or a directory) or certifi's CAs."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    if ca_bundle is not None and os.path.isdir(ca_bundle):
        context.load_verify_locations(capath=ca_bundle)
    else:
        context.load_verify_locations(cafile=ca_bundle or certifi.where())
    return context


def pool_manager(base_url: str, *, pool_size: int, proxy_from_env: bool) -> urllib3.PoolManager:
    """The pool manager for calls to ``base_url``: direct, or through the environment's
    proxy when ``proxy_from_env``. Raises ``ConfigError`` for a proxy it cannot use."""
    found = environment_proxy(base_url) if proxy_from_env else EnvironmentProxy(None, None)
    pool_kw: dict[str, Any] = {
        "maxsize": pool_size,
        "block": False,
        "ssl_context": tls_context(found.ca_bundle),
        "cert_reqs": "CERT_REQUIRED",
    }
    if found.proxy is None:
        return urllib3.PoolManager(NUM_POOLS, **pool_kw)
    user, password = found.credentials
    bare_url = found.proxy._replace(auth=None).url  # the credentials go in headers only
    if (found.proxy.scheme or "").lower().startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # noqa: PLC0415 - PySocks

        return SOCKSProxyManager(bare_url, user or None, password or None, NUM_POOLS, **pool_kw)
    # As requests did: a Proxy-Authorization header when the URL names a user.
    headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
    return urllib3.ProxyManager(bare_url, NUM_POOLS, proxy_headers=headers, **pool_kw)
