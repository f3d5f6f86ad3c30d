"""Every metric the exporter publishes: name, type and help, in one place.

The dashboard, the alert rules and the README's metrics list use these names;
``tests/ops/test_metric_names.py`` checks them against a real scrape.
"""

from __future__ import annotations

from typing import Final

from worker.constants import LATENCY_BUCKETS, POLL_COUNT_BUCKETS

PREFIX: Final = "wavequeue_"

GAUGES: Final[dict[str, str]] = {
    "queue_messages": "Messages waiting in a broker queue list, by queue and priority step",
    "unacked_messages": "Messages delivered to a worker and not acked yet "
    "(mostly poll countdowns the worker holds)",
    "unacked_oldest_age_seconds": "Age of the oldest unacked message; kombu redelivers it "
    "once this passes the visibility timeout",
    "visibility_timeout_seconds": "The configured broker visibility timeout",
    "jobs_live": "Jobs not yet terminal, by status and model",
    "jobs_past_deadline": "Live jobs whose deadline has passed (a worker should have timed "
    "them out at their next poll)",
    "jobs_past_deadline_max_seconds": "How far past its deadline the most overdue live job is",
    "inflight_predictions": "Submitted predictions holding a slot in the shared in-flight cap",
    "jobs_parked": "Jobs waiting in the fair line for a submission slot (the rate limit or "
    "the in-flight cap), with no message",
    "jobs_persisting": "Jobs completed at WaveSpeed whose outputs are not yet kept "
    "(persisting: the copy to durable storage has not succeeded yet)",
    "tenant_jobs_live": "Jobs not yet terminal, by tenant and status",
    "tenant_waiting": "Jobs of a tenant waiting in the fair line for a submission slot",
    "tenant_in_flight": "Jobs of a tenant submitted (or being submitted) and not yet "
    "completed at WaveSpeed",
    "callbacks_pending": "Callbacks to backends owed and not yet delivered (nor given up on): "
    "waiting for their next attempt or being attempted",
    "polls_deferred": "Jobs whose next poll, due too far ahead to hold as a countdown, waits "
    "in Redis for a worker's dispatcher",
    "polls_deferred_max_overdue_seconds": "How long past its due time the earliest deferred "
    "poll still waits (stays near 0 while any worker's dispatcher runs)",
    "redis_up": "1 if the last scrape could read Redis, else 0",
    "exporter_scrape_duration_seconds": "Time the last scrape spent reading Redis",
}

#: Counters the workers keep in ``wq:counters`` (worker/runner.py); exported with
#: ``_total``. A counter the workers add later is exported too, with a generic help.
COUNTERS: Final[dict[str, str]] = {
    "submissions": "Predictions submitted to WaveSpeed (POST answered with an id), by model",
    "polls": "Result polls answered by WaveSpeed, by model",
    "jobs_completed": "Jobs completed, by model",
    "jobs_failed": "Jobs failed, by model and error code (remote task code, HTTP status "
    "or submit_outcome_unknown)",
    "jobs_timed_out": "Jobs that passed their deadline, by model",
    "jobs_cancelled": "Jobs cancelled (JobClient.cancel, wavequeue cancel), by model and stage "
    "(queued: never submitted; submitting, submitted: WaveSpeed may still bill it)",
    "callbacks_delivered": "Callbacks a backend answered with 2xx, by kind (job, chain)",
    "callbacks_failed": "Callbacks given up on after WAVEQUEUE_CALLBACK_RETRY_FOR, by kind",
    "callback_attempts_failed": "Callback attempts answered with a non-2xx status, by status "
    "(0: no answer: refused, timed out, dropped)",
    "remote_rate_limited": "Submits WaveSpeed answered with HTTP 429",
    "limiter_waits": "Submits delayed by the shared rate limiter or in-flight cap",
    "submit_outcome_unknown": "Submit POSTs whose outcome is unknown (read timeout, dropped "
    "connection), by model",
    "resubmissions": "Submits sent again under WAVEQUEUE_AMBIGUOUS_SUBMIT=resubmit, by model",
    "error_retries": "Error retries (transport errors, 5xx), by model",
    "orphaned_predictions": "Predictions created by a submit POST whose answer came after "
    "the job had ended (timed out, or failed by a copy that took over its expired lease): "
    "they may be billed, by model",
    "records_quarantined": "Job records the sweeper could not read (corrupt, or a status "
    "added by a newer version) and set aside in wq:quarantine",
    "sweeper_passes": "Sweeper passes made (one worker sweeps at a time)",
    "sweeper_timed_out": "Live jobs past their deadline that the sweeper ended",
    "sweeper_resent": "Jobs whose message was overdue and that the sweeper sent again",
    "sweeper_catch_ups": "Catch-up passes after a broker outage (one worker per outage)",
    "parked": "Submits that found no slot (the rate limit or the in-flight cap) and joined "
    "the fair line to wait for one",
    "inline_uploads": "Inline images (data URIs, local files) the workers uploaded to "
    "WaveSpeed's media storage before a job's first submit, by model",
    "sweeper_woken": "Jobs of the fair line a sweeper pass gave slots to and sent (a slot "
    "freed by a run that died, an in-flight slot that aged out, a lost message)",
    "jobs_ended_by": "Jobs a prediction's end finished (completed, or failed remotely), by "
    "how they learnt it: path=webhook or path=poll",
    "polls_before_end": "Result polls made by the jobs of jobs_ended_by, by the same path "
    "(divide by jobs_ended_by: polls per job by completion path)",
    "webhooks_received": "WaveSpeed callbacks that reached wavequeue webhooks",
    "webhooks_rejected": "Callbacks refused, by reason: bad_url (wrong MAC), missing_headers, "
    "bad_id, bad_timestamp, stale, bad_signature, malformed, too_large, prediction_owned",
    "webhooks_duplicate": "Verified callbacks whose webhook-id was already taken (a replay or "
    "a repeated delivery): answered 200, applied once",
    "webhooks_applied": "Verified callbacks that ended their job",
    "webhooks_ignored": "Verified callbacks with nothing to do, by reason: job_ended, "
    "other_prediction, left_to_poll, no_prediction, unknown_job, not_adoptable",
    "webhooks_deferred": "Callbacks that came while their job's submit POST was in flight: "
    "answered 503 for a retry",
    "orphans_adopted": "Jobs whose submit outcome was unknown that adopted the prediction "
    "their webhook proved (no second POST), by model",
    "sweeper_callbacks": "Callback deliveries the sweeper sent (an attempt due after a long "
    "wait, or a delivery message lost)",
    "callback_copies_ignored": "Copies of a callback delivery message that found it delivered "
    "already or being attempted, and did nothing",
    "tenant_jobs_ended": "Jobs ended, by tenant and status (completed, failed, timed_out, "
    "cancelled); kept after the records expire",
    "tenant_admitted": "Submission slots the shared limiter granted, by tenant",
    "outputs_kept": "Jobs whose outputs were copied to durable storage before they "
    "completed, by model",
    "outputs_not_kept": "Jobs that completed without their outputs kept: the copy was given "
    "up on after WAVEQUEUE_PERSIST_RETRY_FOR, by model",
    "persist_failures": "Attempts to copy a job's outputs to durable storage that failed "
    "(each is tried again later; never a new submit), by model",
}

#: Counters the workers keep without labels: exported as 0 before their first
#: increment, so ``rate()`` has a series from the start.
UNLABELLED_COUNTERS: Final = frozenset(
    {
        "remote_rate_limited",
        "limiter_waits",
        "records_quarantined",
        "sweeper_passes",
        "sweeper_timed_out",
        "sweeper_resent",
        "sweeper_catch_ups",
        "parked",
        "sweeper_woken",
        "webhooks_received",
        "webhooks_duplicate",
        "webhooks_applied",
        "webhooks_deferred",
        "sweeper_callbacks",
        "callback_copies_ignored",
    }
)

#: Histograms the workers keep in ``wq:hist:<name>``, with their configured bounds.
HISTOGRAMS: Final[dict[str, tuple[str, tuple[float, ...]]]] = {
    "queued_to_submitted_seconds": (
        "Time from enqueue to the prediction's submission",
        LATENCY_BUCKETS,
    ),
    "submitted_to_completed_seconds": (
        "Time from submission to completion seen by a poll",
        LATENCY_BUCKETS,
    ),
    "end_to_end_seconds": ("Time from enqueue to completion", LATENCY_BUCKETS),
    "polls_per_job": ("Result polls a completed job needed", POLL_COUNT_BUCKETS),
}


def exported_names() -> set[str]:
    """Every sample name a scrape can contain (counters with ``_total``, histogram series)."""
    names = {PREFIX + name for name in GAUGES}
    names |= {f"{PREFIX}{name}_total" for name in COUNTERS}
    for name in HISTOGRAMS:
        names |= {f"{PREFIX}{name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
    return names
