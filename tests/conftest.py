"""Fixtures shared by every test: a private redis-server on a free port.

Nothing here (or anywhere in the tests) talks to a Redis on 6379.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ops.localstack.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests that stop it use ``private_redis``."""
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server, flushed before each test so tests cannot see each other."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to stop and restart."""
    server = RedisServer(data_dir=tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


from typing import TYPE_CHECKING  # noqa: E402 - appended with the emulator fixture

if TYPE_CHECKING:  # the emulator fixture's type; imported lazily so unit tests skip tornado
    from tests.support.emulator import EmulatorHandle


@pytest.fixture
def emulator() -> Iterator[EmulatorHandle]:
    """A WaveSpeed emulator of this test's own on a free port: API key "test-key", 0.2 s latency.

    Starting one is a thread and a socket (milliseconds), so every test gets a fresh one.
    """
    from tests.support.emulator import running_emulator

    with running_emulator(api_key="test-key") as handle:
        yield handle
