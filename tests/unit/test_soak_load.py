"""The soak producer's pacing (``ops.bench.soak.load.steady_load``): every job due is
enqueued, one in ``wait_every`` is handed to the waiter, the count is reported."""

from __future__ import annotations

from typing import Any, cast

from ops.bench.soak.load import SampleWaiter, steady_load


class CountingClient:
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def text_to_image(self, prompt: str, **_: Any) -> str:
        self.prompts.append(prompt)
        return f"job-{len(self.prompts) - 1}"


class CollectingWaiter:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def add(self, job_id: str) -> None:
        self.ids.append(job_id)


def test_every_job_due_is_enqueued_and_one_in_n_waited_for() -> None:
    client, waiter = CountingClient(), CollectingWaiter()
    reports: list[int] = []
    # 97 jobs at 300/s: 97/300 s, whose product with the rate is 96.99...: still 97 jobs.
    enqueued = steady_load(
        cast(Any, client),
        cast(SampleWaiter, waiter),
        rate=300.0,
        seconds=97 / 300,
        wait_every=20,
        report=reports.append,
        label="warm-up",
    )
    assert enqueued == 97 == len(client.prompts)
    assert client.prompts[0] == "warm-up 0" and client.prompts[-1] == "warm-up 96"
    assert waiter.ids == ["job-0", "job-20", "job-40", "job-60", "job-80"]
    assert reports[-1] == 97 and reports == sorted(reports)
