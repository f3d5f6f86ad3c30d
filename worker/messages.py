"""Slim ``run_job`` messages before they are published: a job's countdown message sits
in Redis (kombu's ``unacked`` hash) for as long as the job waits, so its size is most
of what an in-flight job costs in Redis.

Celery writes every header of its protocol into every message, most of them empty
(``shadow``, ``expires``, ``group``, ``timelimit``, ``stamps`` ...) or unused here
(``root_id``/``parent_id``, ``reply_to`` and ``correlation_id`` for results nobody
waits for, ``origin``). The worker reads each of them with a default, so leaving them
out changes nothing but the size: about 1.2 KB down to about 0.7 KB.

What Flower shows of a run (``run_label``): its args are the job id, its kwargs the
model and which run it is (``flux-kontext-pro poll 3``, ``... submit``); Flower's columns
put them beside the name (ops/flower/guard.py). The task name stays ``wavequeue.run_job``:
Flower labels its Prometheus series by task name, and a name per poll would make a new
series per poll number, whose first count ``rate()`` cannot see.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from worker.constants import RUN_JOB_TASK

#: Headers the worker reads with ``.get`` and a default; dropped when they hold it.
_DEFAULT_HEADERS: dict[str, Any] = {
    "shadow": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "timelimit": [None, None],
    "stamped_headers": None,
    "stamps": {},
    "replaced_task_nesting": 0,
    "argsrepr": "()",
}
#: Headers and properties with no use here: results are never waited for, and the
#: worker tracks jobs by record, not by task lineage.
_UNUSED_HEADERS = ("root_id", "parent_id", "origin")
#: ``argsrepr``/``kwargsrepr`` given to a send (``run_label``) become headers, and Celery
#: also leaves a copy of each among the message's properties.
_UNUSED_PROPERTIES = ("reply_to", "correlation_id", "origin", "argsrepr", "kwargsrepr")


def run_phase(poll_seq: int) -> str:
    """Which run of a job a message is: its submit, or its Nth poll."""
    return f"poll {poll_seq}" if poll_seq else "submit"


def run_label(job_id: str, poll_seq: int = 0, model: str | None = None) -> dict[str, str]:
    """The send options that make a ``run_job`` message readable in Flower: args the job
    id, kwargs the model ("?" when unknown) and the run (``submit``, ``poll 3``)."""
    return {"argsrepr": job_id, "kwargsrepr": f"{model or '?'} {run_phase(poll_seq)}"}


def slim(headers: dict[str, Any], properties: dict[str, Any], body: Any) -> None:
    """Drop what the worker does not need from one ``run_job`` message (in place)."""
    for name, default in _DEFAULT_HEADERS.items():
        value = headers.get(name, default)
        if isinstance(value, tuple):
            value = list(value)
        if name in headers and value == default:
            del headers[name]
    for name in _UNUSED_HEADERS:
        headers.pop(name, None)
    # run_job's results are never read (the job record is the result): without the header
    # the worker uses the task's own ignore_result (True). A message sent with send_task's
    # default (False) would have the worker store a celery-task-meta key for its run.
    headers.pop("ignore_result", None)
    for name in _UNUSED_PROPERTIES:
        properties.pop(name, None)
    if isinstance(body, tuple | list) and len(body) == 3 and isinstance(body[1], dict):
        kwargs, embed = body[1], body[2]
        if headers.get("argsrepr") in (None, "()"):
            # Sent without a label (run_label): the id and the run, never kwargs' repr.
            label = run_label(str(kwargs.get("job_id", "?")), int(kwargs.get("poll_seq", 0)))
            headers.update(label)
        if isinstance(embed, dict):
            for key in [k for k, v in embed.items() if v is None]:
                del embed[key]


@signals.before_task_publish.connect  # type: ignore[untyped-decorator]
def _slim_run_job(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    body: Any = None,
    **_: Any,
) -> None:
    if sender == RUN_JOB_TASK and headers is not None and properties is not None:
        slim(headers, properties, body)
