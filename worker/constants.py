"""Names and defaults shared by the producer, the worker and the ops tools.

Everything that two processes must agree on without talking to each other
(Redis key layout, queue names, the task name) lives here, so that a rename
is one edit.
"""

from typing import Final

#: Every Redis key wavequeue writes starts with this prefix, so an operator can
#: find (or delete) all of them with one SCAN pattern.
KEY_PREFIX: Final = "wq:"
JOB_KEY: Final = KEY_PREFIX + "job:{job_id}"
#: A job's request (``{"input": ..., "metadata": ...}``, JSON): apart from its hash, because
#: only the submit reads it and it would push the hash out of Redis's compact encoding.
REQUEST_KEY: Final = KEY_PREFIX + "job:{job_id}:request"
#: The list index (``JobStore.list_jobs``): one sorted set per (status, model, tenant), named
#: ``<status>|<model>|<tenant>`` after the prefix, holding ``<time>:<job id>`` members, all of
#: score 0 so that they sort by text: ``<time>`` is when the job entered that status, as
#: ``%014.3f`` seconds. The store's scripts keep them: a job is in exactly one, moved at
#: every status change; ended jobs are trimmed with their records' TTL.
JOBS_INDEX_PREFIX: Final = KEY_PREFIX + "jobs:"
JOBS_INDEX_KEY: Final = JOBS_INDEX_PREFIX + "{place}"
#: The ``<model>|<tenant>`` pairs that have had a job (a small set, written when a job is
#: created): a listing looks at each pair's set in the statuses it wants. A pair with no
#: set left is dropped when a listing finds its sets empty.
JOBS_REGISTRY_KEY: Final = KEY_PREFIX + "jobs-index"
#: Live jobs by ``<status>|<model>``, kept by the store's scripts (the exporter reads it).
LIVE_KEY: Final = KEY_PREFIX + "live"
#: Live jobs by ``<status>|<tenant>``, kept in the same steps (per-tenant depth and in-flight).
TENANT_LIVE_KEY: Final = KEY_PREFIX + "tenants:live"
#: One inline image (a ``data:`` URI) of a job, until the worker uploads it: the request
#: holds a marker instead (``worker.inline_images``), so records never hold the bytes.
INLINE_KEY: Final = KEY_PREFIX + "inline:{image_id}"
#: One day's finished jobs (UTC date ``YYYY-MM-DD``), kept by the terminal transition long
#: after the records expire. Fields ``<measure>|<model>``: a terminal status (completed,
#: failed, timed_out) counts jobs, ``outputs`` counts images delivered, ``inference_ms``
#: sums WaveSpeed's inference time (whole milliseconds, so the sum stays exact).
DAILY_KEY: Final = KEY_PREFIX + "daily:{day}"
#: How long a day's aggregate is kept: a year and a bit, so a year ago is still there.
DAILY_TTL: Final = 400 * 24 * 3600
#: One UTC day's spend (``worker.budgets``), kept by the terminal transition like
#: ``DAILY_KEY`` (and as long): fields ``<measure>`` for the whole account and
#: ``<measure>|<tenant>`` per tenant, where a measure is ``billed`` (micro-dollars WaveSpeed
#: charged for completed jobs), ``images`` and ``jobs`` (billed), or ``unconfirmed``
#: (micro-dollars of jobs that ended while their prediction may still be billed).
SPEND_KEY: Final = KEY_PREFIX + "spend:{day}"
#: Micro-dollars reserved by jobs claimed for submission and not ended yet: ``total`` and
#: one field per tenant. A reservation is taken in the submit claim and given back (or
#: turned into ``billed``) by the job's terminal transition.
RESERVED_KEY: Final = KEY_PREFIX + "spend:reserved"
#: Daily caps set at run time (``wavequeue budget set``), micro-dollars or ``none`` (no cap):
#: field ``global``, ``tenant:<name>`` and ``tenant:*`` (every tenant without its own).
#: They override the settings (WAVEQUEUE_DAILY_BUDGET, WAVEQUEUE_TENANT_BUDGETS).
BUDGETS_KEY: Final = KEY_PREFIX + "budgets"
#: Jobs held because a daily cap had no room (``held: budget``), scored by when they may be
#: woken next; the sweeper (or ``wavequeue budget set``) sends them again when room appears.
HELD_KEY: Final = KEY_PREFIX + "budget:held"
#: The account balance as the sweeper last read it (``worker.balance``): ``micros``,
#: ``checked_at``, ``low`` ("1" while submission is paused for it).
BALANCE_KEY: Final = KEY_PREFIX + "balance"
CHAIN_KEY: Final = KEY_PREFIX + "chain:{chain_id}"
IDEMPOTENCY_KEY: Final = KEY_PREFIX + "idem:{key}"
#: Recent inference latencies per model (a capped list), used to time the first poll.
LATENCY_KEY: Final = KEY_PREFIX + "latency:{model}"
#: Shared WaveSpeed token bucket (images per minute) and in-flight set.
RATE_BUCKET_KEY: Final = KEY_PREFIX + "ratelimit:bucket"
IN_FLIGHT_KEY: Final = KEY_PREFIX + "ratelimit:inflight"
#: Counters the exporter reads (submissions, polls, 429s, failures by code). Each field
#: is ``name`` or ``name|label=value|label=value`` (see ``store.counter_field``).
COUNTERS_KEY: Final = KEY_PREFIX + "counters"
#: Histograms the exporter reads: one hash per name, fields ``le=<bound>``, ``sum``, ``count``.
HISTOGRAM_KEY: Final = KEY_PREFIX + "hist:{name}"
#: Bucket upper bounds (seconds) for the job latency histograms.
LATENCY_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: Bucket upper bounds for polls per completed job.
POLL_COUNT_BUCKETS: Final = (1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0)
#: Pub/sub channel on which a job announces that it ended (``{"job_id", "status"}``), one
#: per job so that a waiter hears only the jobs it waits for; a monitor that wants every
#: job's end subscribes to ``JOB_EVENTS_PATTERN``.
JOB_EVENT_CHANNEL: Final = KEY_PREFIX + "events:job:{job_id}"
JOB_EVENTS_PATTERN: Final = KEY_PREFIX + "events:job:*"
#: Sorted set of live job ids scored by deadline (for the "stuck past deadline" figure).
DEADLINES_KEY: Final = KEY_PREFIX + "deadlines"
#: Sorted set of jobs scored by when their next message is due; the sweeper re-sends
#: the ones long overdue (a message lost to a worker killed mid-fetch).
NEXT_RUN_KEY: Final = KEY_PREFIX + "next_run"
#: Sorted set of jobs whose next poll is due too far ahead to hold as a countdown message
#: (``Settings.defer_polls_after``), scored by when it is due: no message exists until a
#: worker's dispatcher (``worker.due_polls``) takes the job from here and sends it. A held
#: countdown costs ~700 bytes of Redis (kombu's ``unacked`` entry and index) and worker
#: memory for its whole wait; an entry here ~130 bytes.
DUE_POLLS_KEY: Final = KEY_PREFIX + "due_polls"
#: Sorted set of job ids whose record this version could not read (scored by when it was
#: found): kept out of the sweeper's batches, looked at again now and then (a newer
#: version may read them), listed for operators.
QUARANTINE_KEY: Final = KEY_PREFIX + "quarantine"
#: Callbacks owed (``worker.callbacks``): members ``job:<id>`` / ``chain:<id>``, scored by
#: when the sweeper should send a delivery message for it (none was sent, or it was lost,
#: or the next attempt is further off than a countdown may wait).
CALLBACKS_KEY: Final = KEY_PREFIX + "callbacks"
#: How long a new ending's callback waits for the message its ender sends before the
#: sweeper sends one (the ender crashed in between, or could not reach the broker).
CALLBACK_SEND_GRACE: Final = 60.0
#: Held by the one worker that sweeps at a time.
SWEEPER_LOCK_KEY: Final = KEY_PREFIX + "sweeper:lock"
#: Which job a WaveSpeed prediction belongs to (its id -> the job id), written with the
#: prediction id when webhooks are on: a callback can prove an unknown submit's prediction
#: to its own job only, never hand one job's prediction to another.
PREDICTION_OWNER_KEY: Final = KEY_PREFIX + "prediction:{prediction_id}"
#: A ``webhook-id`` the receiver has taken (kept ``WEBHOOK_SEEN_TTL``): a replay is
#: answered 200 and applied once, whatever job URL it is sent to.
WEBHOOK_SEEN_KEY: Final = KEY_PREFIX + "webhook:seen:{webhook_id}"
#: Longer than any replay can verify: a signature is good from 300 s before its timestamp
#: to 300 s after, so 600 s after first sight, plus room for clock skew.
WEBHOOK_SEEN_TTL: Final = 900
#: Workers by node name, scored by their last heartbeat (Redis time): the exporter counts
#: the ones that beat recently, so a page fires when every worker is dead or hung.
WORKERS_KEY: Final = KEY_PREFIX + "workers"
#: Seconds between two heartbeats of a worker (Celery's own heartbeat period).
WORKER_HEARTBEAT_INTERVAL: Final = 2.0
#: A worker whose last heartbeat is older than this is counted silent (dead or hung):
#: five missed beats, so one slow Redis round trip does not make it flap.
WORKER_SILENT_AFTER: Final = 10.0
#: Silent workers are dropped from ``WORKERS_KEY`` after this long (scaled-down, crashed).
WORKER_FORGET_AFTER: Final = 3600.0

#: Tenants are short names (``[A-Za-z0-9_.-]``, 1 to 64 characters, starting with a letter
#: or digit): they become Redis hash fields, members of the fair line (``worker.fairness``)
#: and Prometheus label values, so nothing else may appear in them (``worker.tenants``).
TENANT_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: The tenant of a job that names none.
DEFAULT_TENANT: Final = "default"

#: The one task name producers send by; they never import worker.tasks.
RUN_JOB_TASK: Final = "wavequeue.run_job"
#: Delivers one callback (``worker.callbacks``); sent by name like ``run_job``.
DELIVER_CALLBACK_TASK: Final = "wavequeue.deliver_callback"

QUEUE_HIGH: Final = "wavequeue.high"
QUEUE_NORMAL: Final = "wavequeue.normal"
QUEUES: Final = (QUEUE_HIGH, QUEUE_NORMAL)
#: Callback deliveries have a queue of their own: a slow backend never holds up jobs,
#: and operators may run workers that only deliver (``wavequeue worker -Q``).
QUEUE_CALLBACKS: Final = "wavequeue.callbacks"
#: What a worker consumes by default: the job queues and the callbacks.
WORKER_QUEUES: Final = (*QUEUES, QUEUE_CALLBACKS)

#: How many recent completions per model feed the poll schedule (``schedule.LatencyProfile``).
LATENCY_SAMPLE_SIZE: Final = 200
