"""A chain's state derived from its step records, for every combination that matters."""

from __future__ import annotations

import pytest

from producer import ChainState
from producer.chain_status import derive_chain_status
from worker.models import JobError, JobRecord, JobStatus
from worker.store import ChainSnapshot


def _steps(*statuses: str) -> list[JobRecord]:
    return [
        JobRecord(
            id=f"job{number}",
            model="flux-kontext-pro",
            input={"prompt": "p"},
            status=JobStatus(status),
            outputs=[f"https://cdn.example/{number}.png"] if status == "completed" else [],
            error=JobError(code=1403, message="Task failed") if status == "failed" else None,
            created_at=0.0,
            deadline_at=60.0,
            chain_id="c1",
            step=number,
        )
        for number, status in enumerate(statuses, start=1)
    ]


@pytest.mark.parametrize(
    ("statuses", "state", "current"),
    [
        (("queued", "queued", "queued"), ChainState.QUEUED, None),
        (("submitted", "queued", "queued"), ChainState.RUNNING, 1),
        (("completed", "queued", "queued"), ChainState.RUNNING, 2),
        (("completed", "processing", "queued"), ChainState.RUNNING, 2),
        (("completed", "failed", "queued"), ChainState.FAILED, 2),
        (("completed", "completed", "timed_out"), ChainState.FAILED, 3),
        (("completed", "completed", "completed"), ChainState.COMPLETED, None),
    ],
)
def test_state_and_current_step(
    statuses: tuple[str, ...], state: ChainState, current: int | None
) -> None:
    snapshot = ChainSnapshot("c1", [f"job{n}" for n in range(1, 4)], 0.0, {}, [])
    status = derive_chain_status(snapshot, _steps(*statuses))
    assert (status.state, status.current_step) == (state, current)
    assert status.is_terminal is (state in (ChainState.COMPLETED, ChainState.FAILED))
    # Outputs so far are kept whatever happened later.
    assert [bool(outputs) for outputs in status.outputs] == [s == "completed" for s in statuses]
    if state is ChainState.FAILED:
        assert status.failed_step is not None and status.failed_step.number == current
    if state is ChainState.COMPLETED:
        assert status.final_output == "https://cdn.example/3.png"
    else:
        assert status.final_output is None
    assert status.to_json()["status"] == state.value
