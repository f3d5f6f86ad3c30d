"""Slim ``run_job`` messages before they are published: a job's countdown message sits
in Redis (kombu's ``unacked`` hash) for as long as the job waits, so its size is most
of what an in-flight job costs in Redis.

Celery writes every header of its protocol into every message, most of them empty
(``shadow``, ``expires``, ``group``, ``timelimit``, ``stamps`` ...) or unused here
(``root_id``/``parent_id``, ``reply_to`` and ``correlation_id`` for results nobody
waits for, ``origin``). The worker reads each of them with a default, so leaving them
out changes nothing but the size: about 1.2 KB down to about 0.7 KB. ``kwargsrepr``
(what Flower shows) becomes ``job <id> poll <n>``.
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
_UNUSED_PROPERTIES = ("reply_to", "correlation_id", "origin")


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
        headers["kwargsrepr"] = f"job {kwargs.get('job_id', '?')} poll {kwargs.get('poll_seq', 0)}"
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
