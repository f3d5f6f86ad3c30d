"""A chain's own status, derived from its step records (the chain record holds no status).

- ``queued``: no step has started;
- ``running``: ``current_step`` is the first step not yet completed;
- ``completed``: every step completed;
- ``failed``: ``current_step`` failed or timed out; later steps never ran;
- ``cancelled``: the chain (or one of its steps) was cancelled: ``current_step`` is the
  first step that did not complete. Cancel is final, so it wins over ``failed`` (a failed
  chain that was cancelled cannot be retried).

Steps are numbered from 1, as people count them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worker.models import JobError, JobRecord, JobStatus
from worker.store import ChainSnapshot


class ChainState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (ChainState.COMPLETED, ChainState.FAILED, ChainState.CANCELLED)


@dataclass(frozen=True)
class ChainStep:
    number: int
    job_id: str
    model: str
    status: JobStatus
    outputs: tuple[str, ...]
    error: JobError | None
    #: Where the step's outputs were kept (``worker.keep_outputs``), in output order.
    stored_outputs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.number,
            "job_id": self.job_id,
            "model": self.model,
            "status": self.status.value,
            "outputs": list(self.outputs),
            "stored_outputs": list(self.stored_outputs),
            "error": self.error.model_dump() if self.error else None,
        }


@dataclass(frozen=True)
class ChainStatus:
    id: str
    state: ChainState
    #: The running step, the failed step, or None (queued: step 1 is next; completed).
    current_step: int | None
    steps: tuple[ChainStep, ...]
    created_at: float
    metadata: dict[str, Any]
    #: Job ids of earlier attempts that ``retry_chain`` replaced.
    replaced_job_ids: tuple[str, ...]
    #: The chain's callback (``callback_url``) and how its delivery went (see JobState).
    callback: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @property
    def failed_step(self) -> ChainStep | None:
        if self.state is ChainState.FAILED and self.current_step is not None:
            return self.steps[self.current_step - 1]
        return None

    @property
    def ending_job_id(self) -> str | None:
        """The step whose ending ended the chain (the last step once it completed, else
        the first step that did not complete); None while the chain runs. A chain that
        ends again after ``retry_chain`` ends on a different (new) step record."""
        if not self.is_terminal:
            return None
        if self.current_step is None:
            return self.steps[-1].job_id
        return self.steps[self.current_step - 1].job_id

    @property
    def outputs(self) -> list[tuple[str, ...]]:
        """Every step's outputs so far, in step order (empty for steps not done)."""
        return [step.outputs for step in self.steps]

    @property
    def final_output(self) -> str | None:
        """The last step's first output, once the chain completed."""
        if self.state is ChainState.COMPLETED and self.steps[-1].outputs:
            return self.steps[-1].outputs[0]
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.id,
            "status": self.state.value,
            "current_step": self.current_step,
            "steps": [step.to_json() for step in self.steps],
            "created_at": self.created_at,
            "metadata": self.metadata,
            "replaced_job_ids": list(self.replaced_job_ids),
            **self.callback,
        }


def derive_chain_status(snapshot: ChainSnapshot, records: list[JobRecord]) -> ChainStatus:
    """The chain's status from its record and its step records, in step order."""
    steps = tuple(
        ChainStep(
            number=number,
            job_id=record.id,
            model=record.model,
            status=record.status,
            outputs=tuple(record.outputs),
            error=record.error,
            stored_outputs=tuple(record.stored_outputs),
        )
        for number, record in enumerate(records, start=1)
    )
    state, current = _state_of(steps)
    return ChainStatus(
        id=snapshot.id,
        state=state,
        current_step=current,
        steps=steps,
        created_at=snapshot.created_at,
        metadata=snapshot.metadata,
        replaced_job_ids=tuple(snapshot.replaced_job_ids),
        callback=dict(snapshot.callback),
    )


def _state_of(steps: tuple[ChainStep, ...]) -> tuple[ChainState, int | None]:
    if any(step.status is JobStatus.CANCELLED for step in steps):
        first_open = next(step for step in steps if step.status is not JobStatus.COMPLETED)
        return ChainState.CANCELLED, first_open.number
    for step in steps:
        if step.status in (JobStatus.FAILED, JobStatus.TIMED_OUT):
            return ChainState.FAILED, step.number
    if all(step.status is JobStatus.COMPLETED for step in steps):
        return ChainState.COMPLETED, None
    if all(step.status is JobStatus.QUEUED for step in steps):
        return ChainState.QUEUED, None
    running = next(step for step in steps if step.status is not JobStatus.COMPLETED)
    return ChainState.RUNNING, running.number
