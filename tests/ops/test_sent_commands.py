"""The bench's MONITOR reader tells commands clients send from commands scripts run,
against a real redis-server."""

from __future__ import annotations

from collections import Counter

import redis

from ops.bench.perf.sent_commands import SentCommands, parse_monitor_line, sent_between


def test_a_monitor_line_names_its_command_and_source() -> None:
    assert parse_monitor_line(b'1700000000.1 [0 127.0.0.1:5555] "HSET" "k" "f" "v"') == (
        "hset",
        False,
    )
    assert parse_monitor_line('1700000000.1 [0 lua] "incr" "x"') == ("incr", True)
    assert parse_monitor_line('1700000000.1 [0 unix:/tmp/r.sock] "GET" "k"') == ("get", False)
    assert parse_monitor_line("OK") == ("", False)


def test_script_commands_are_counted_apart_from_sent_ones(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()  # connected before the window: the handshake stays out
        with SentCommands(redis_url) as monitor:
            monitor.catch_up()
            before = monitor.snapshot()
            client.eval("for i = 1, 10 do redis.call('INCR', KEYS[1]) end", 1, "counter")
            pipe = client.pipeline(transaction=False)
            pipe.set("a", 1)
            pipe.get("a")
            pipe.execute()
            client.llen("queue")  # the harness's own, taken out by count
            monitor.catch_up()
            sent, by_scripts = sent_between(before, monitor.snapshot(), Counter({"llen": 1}))
        assert sent == Counter({"eval": 1, "set": 1, "get": 1})
        assert by_scripts == 10
    finally:
        client.close()
