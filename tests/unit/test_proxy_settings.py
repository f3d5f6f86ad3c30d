"""The WaveSpeed session reads proxy variables only when one is set at start."""

from __future__ import annotations

import pytest

from worker.settings import PROXY_VARS, Settings
from worker.wavespeed import WaveSpeedClient


def _client(settings: Settings) -> WaveSpeedClient:
    return WaveSpeedClient(
        base_url="http://127.0.0.1:1",
        api_key="sk-test",
        connect_timeout=1,
        read_timeout=1,
        proxy_from_env=settings.proxy_from_env,
    )


def test_no_proxy_variable_means_no_environment_lookups() -> None:
    settings = Settings.from_env({})
    assert settings.proxy_from_env is False
    assert _client(settings).session.trust_env is False


@pytest.mark.parametrize("variable", PROXY_VARS)
def test_a_proxy_variable_keeps_requests_reading_the_environment(variable: str) -> None:
    settings = Settings.from_env({variable: "http://proxy.internal:3128"})
    assert settings.proxy_from_env is True
    assert _client(settings).session.trust_env is True
