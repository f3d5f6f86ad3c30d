"""The WaveSpeed client goes through a proxy only when a proxy variable is set at start,
and then through the one the variables name for the API's scheme.

(``test_wavespeed_client.py`` sends calls through a real proxy, and past it for NO_PROXY.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import urllib3

from worker.errors import ConfigError
from worker.settings import PROXY_VARS, Settings
from worker.wavespeed import WaveSpeedClient

PROXY = "http://proxy.internal:3128"


def _client(settings: Settings, base_url: str = "http://127.0.0.1:1") -> WaveSpeedClient:
    return WaveSpeedClient(
        base_url=base_url,
        api_key="sk-test",
        connect_timeout=1,
        read_timeout=1,
        proxy_from_env=settings.proxy_from_env,
    )


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*PROXY_VARS, "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_no_proxy_variable_means_a_direct_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env({})
    assert settings.proxy_from_env is False
    monkeypatch.setenv("HTTP_PROXY", PROXY)  # set after start: not read
    assert not isinstance(_client(settings).http, urllib3.ProxyManager)


@pytest.mark.parametrize("variable", PROXY_VARS)
def test_a_proxy_variable_sends_the_calls_through_it(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, PROXY)
    settings = Settings.from_env({variable: PROXY})
    assert settings.proxy_from_env is True
    scheme = "https" if variable.lower().startswith("https") else "http"

    http = _client(settings, base_url=f"{scheme}://api.wavespeed.ai").http

    assert isinstance(http, urllib3.ProxyManager)
    assert http.proxy is not None
    assert (http.proxy.host, http.proxy.port) == ("proxy.internal", 3128)


def test_a_variable_for_the_other_scheme_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", PROXY)
    settings = Settings.from_env({"HTTP_PROXY": PROXY})
    http = _client(settings, base_url="https://api.wavespeed.ai").http
    assert not isinstance(http, urllib3.ProxyManager)


def test_a_socks_proxy_without_pysocks_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("socks") is not None:
        pytest.skip("PySocks is installed: SOCKS proxies work")
    monkeypatch.setenv("ALL_PROXY", "socks5://user:hunter2@127.0.0.1:1080")
    with pytest.raises(ConfigError, match="PySocks") as raised:
        _client(Settings.from_env({"ALL_PROXY": "socks5://127.0.0.1:1080"}))
    assert "hunter2" not in str(raised.value)


def test_an_unknown_proxy_scheme_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "ftp://user:hunter2@proxy.internal:21")
    with pytest.raises(ConfigError, match=r"unknown scheme \(ftp\)") as raised:
        _client(Settings.from_env({"HTTP_PROXY": "ftp://proxy.internal:21"}))
    assert "hunter2" not in str(raised.value)


def test_the_worker_refuses_an_unusable_proxy_at_start() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("wavequeue")), "worker"],
        env={
            "WAVESPEED_API_KEY": "k",
            "HTTPS_PROXY": "ftp://user:hunter2@proxy.internal:21",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert "unknown scheme (ftp)" in done.stderr
    assert "hunter2" not in done.stderr
