"""kombu's Redis channel reuses one redis-py client while its pool is the same."""

from __future__ import annotations

from kombu.connection import Connection

import worker.kombu_clients  # noqa: F401 - installs the reuse


def test_one_client_per_channel_pool(redis_url: str) -> None:
    with Connection(redis_url) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.ping()
        given = object()
        with channel.conn_or_acquire(given) as passed:
            assert passed is given
        # A replaced pool (reconnect, failover) gets a client of its own.
        channel._pool = None
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel.pool
            assert third.ping()
