"""run_job messages carry what the worker reads, and nothing it would read as a default."""

from __future__ import annotations

from typing import Any

from worker.messages import run_label, slim


def test_empty_and_unused_headers_are_left_out() -> None:
    headers: dict[str, Any] = {
        "lang": "py", "task": "wavequeue.run_job", "id": "t1", "shadow": None,
        "eta": "2026-01-01T00:00:00+00:00", "expires": None, "group": None,
        "group_index": None, "retries": 2, "timelimit": (None, None), "root_id": "t0",
        "parent_id": "t0", "argsrepr": "()", "kwargsrepr": "{'job_id': 'j1', ...}",
        "origin": "gen1@host", "ignore_result": True, "replaced_task_nesting": 0,
        "stamped_headers": None, "stamps": {},
    }  # fmt: skip
    properties = {"correlation_id": "t1", "reply_to": "r", "delivery_mode": 2, "priority": 0}
    body = ((), {"job_id": "j1", "poll_seq": 3}, {"callbacks": None, "chain": [{"x": 1}]})

    slim(headers, properties, body)

    assert headers == {
        "lang": "py",
        "task": "wavequeue.run_job",
        "id": "t1",
        "eta": "2026-01-01T00:00:00+00:00",
        "retries": 2,
        # Sent without a label: Flower still sees the job and the run, never kwargs' repr.
        "argsrepr": "j1",
        "kwargsrepr": "? poll 3",
    }
    assert properties == {"delivery_mode": 2, "priority": 0}
    assert body[2] == {"chain": [{"x": 1}]}  # a chain's next steps are kept


def test_a_time_limit_that_is_set_is_kept() -> None:
    headers: dict[str, Any] = {"timelimit": [30, None]}
    slim(headers, {}, None)
    assert headers == {"timelimit": [30, None]}


def test_results_are_never_asked_for() -> None:
    """send_task writes ignore_result False; the worker would then store a result per
    run. Without the header it uses run_job's own (True)."""
    headers: dict[str, Any] = {"ignore_result": False}
    slim(headers, {}, None)
    assert headers == {}


def test_a_labelled_run_keeps_its_label() -> None:
    headers: dict[str, Any] = {"task": "wavequeue.run_job", **run_label("j2", 4, "m/x")}
    slim(headers, {}, ((), {"job_id": "j2", "poll_seq": 4}, {}))
    assert headers == {
        "task": "wavequeue.run_job",
        "argsrepr": "j2",
        "kwargsrepr": "m/x poll 4",
    }
    assert run_label("j3") == {"argsrepr": "j3", "kwargsrepr": "? submit"}
