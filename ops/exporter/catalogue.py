"""Every metric the exporter publishes: name, type and help, in one place.

The dashboard, the alert rules and the README's metrics list use these names;
``tests/ops/test_metric_names.py`` checks them against a real scrape.
"""

from __future__ import annotations

from typing import Final

from worker.constants import LATENCY_BUCKETS, POLL_COUNT_BUCKETS, WORKER_SILENT_AFTER
from worker.models import ENDPOINTS

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
    "unacked_expected_max_age_seconds": "The longest a healthy worker holds a message "
    "(the longest countdown plus the task time limit): an older unacked message is held "
    "by a hung or dead worker until the visibility timeout",
    "workers_alive": f"Workers whose last heartbeat is at most {WORKER_SILENT_AFTER:g} s old",
    "workers_silent": f"Workers whose last heartbeat is over {WORKER_SILENT_AFTER:g} s old "
    "(killed, hung or frozen without a clean stop); forgotten after an hour",
    "sweeper_interval_seconds": "How often a worker's sweeper times out jobs past their "
    "deadline and sends lost messages again",
    "callbacks_pending": "Callbacks to backends owed and not yet delivered (nor given up on): "
    "waiting for their next attempt or being attempted",
    "polls_deferred": "Jobs whose next poll, due too far ahead to hold as a countdown, waits "
    "in Redis for a worker's dispatcher",
    "polls_deferred_max_overdue_seconds": "How long past its due time the earliest deferred "
    "poll still waits (stays near 0 while any worker's dispatcher runs)",
    "jobs_oldest_queued_age_seconds": "How long the job waiting longest has been queued "
    "(0 when none waits)",
    "jobs_ended_last_hour": "Jobs that ended in the last hour, by terminal status (from the "
    "list index; within the record TTL)",
    "budget_used_usd": "What a daily budget counts today (UTC), by scope (account, tenant): "
    "billed, unconfirmed (may be billed) and reserved by jobs in flight",
    "budget_cap_usd": "A daily cap, by scope (account, tenant; only those with a cap): the "
    "run-time cap (wavequeue budget set) or the setting",
    "budget_remaining_usd": "What a capped scope may still spend today (UTC)",
    "spend_reserved_usd": "Estimates reserved by jobs claimed for submission and not ended",
    "jobs_held_budget": "Jobs held because a daily budget had no room (held: budget)",
    "account_balance_usd": "The WaveSpeed account balance as the sweeper last read it "
    "(only with WAVEQUEUE_LOW_BALANCE set)",
    "account_balance_low": "1 while submission is paused fleet-wide for a low balance",
    "account_balance_read_age_seconds": "How long ago the sweeper last read the balance",
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
    "or the worker's own code such as submit_outcome_unknown; a code not in the known list "
    "is counted as other)",
    "jobs_timed_out": "Jobs that passed their deadline, by model",
    "jobs_ended": "Jobs that ended, by model and outcome (completed, failed, timed_out, "
    "cancelled): the denominator of failure ratios",
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
    "images_billed": "Images WaveSpeed billed (completed jobs), by model and tenant",
    "jobs_held": "Times a job was held for a daily budget with no room, by reason and tenant",
    "low_balance_pauses": "Times the sweeper paused submission fleet-wide for a low balance",
    "sweeper_held_woken": "Jobs held for a budget that the sweeper sent again (room appeared: "
    "a new UTC day, a raised cap, a reservation given back)",
}

#: Money counters the workers keep in whole micro-dollars (``worker.money``), exported in
#: US dollars: exported name -> (the counter's name in ``wq:counters``, help).
MONEY_COUNTERS: Final[dict[str, tuple[str, str]]] = {
    "spend_usd": (
        "spend_micros",
        "US dollars WaveSpeed billed for completed jobs (price per image x images), by "
        "model and tenant",
    ),
    "spend_unconfirmed_usd": (
        "spend_unconfirmed_micros",
        "US dollars WaveSpeed may bill for jobs that ended while their prediction may still "
        "run (cancelled after submit, timed out, submit outcome unknown), by model and tenant",
    ),
}

#: Every error code a failed job can carry that gets a series of its own; any other code
#: is exported as ``other``. Known codes are exported from 0, so the first failure with a
#: code is an increase Prometheus sees (a series that appears at 1 counts 0 in rate()),
#: and the label cannot grow without bound whatever WaveSpeed answers.
FAILURE_CODES: Final = (
    # WaveSpeed task codes (DESIGN.md); 5xxx end a job once its retry budget is spent.
    "1200", "1400", "1401", "1402", "1403", "1405", "5000", "5003", "5004",
    # A failed, cancelled or timed-out prediction that carried no code.
    "failed", "cancelled", "timeout",
    # HTTP statuses: 4xx end a job at once, 429 and 5xx once its retry budget is spent.
    "400", "401", "403", "404", "413", "422", "429", "500", "502", "503", "504",
    # The worker's own codes (worker/wavespeed.py, worker/runner.py, worker/settle.py).
    "submit_outcome_unknown", "connect", "transport", "tls", "client", "malformed",
    "unknown_status", "upload", "missing_input", "invalid_input", "inline_image_missing",
    "budget_exceeded", "unknown",
)  # fmt: skip
OTHER_CODE: Final = "other"
#: How a job ended (``jobs_ended``); ratios of failures leave ``cancelled`` out.
OUTCOMES: Final = ("completed", "failed", "timed_out", "cancelled")
MODELS: Final = tuple(ENDPOINTS)
#: Reasons wavequeue webhooks gives (worker/webhooks/receiver.py, signature.py).
WEBHOOK_REJECT_REASONS: Final = (
    "bad_url", "missing_headers", "bad_id", "bad_timestamp", "stale", "bad_signature",
    "malformed", "too_large", "prediction_owned",
)  # fmt: skip
WEBHOOK_IGNORE_REASONS: Final = (
    "left_to_poll", "job_ended", "unknown_job", "other_prediction", "no_prediction",
    "not_adoptable",
)  # fmt: skip
CALLBACK_KINDS: Final = ("job", "chain")
ENDING_PATHS: Final = ("poll", "webhook")
CANCEL_STAGES: Final = ("queued", "submitting", "submitted")

#: The labels of each labelled counter, with their known values: every combination of
#: known values is exported from 0. ``None``: any value (an HTTP status from a backend),
#: exported as it comes, from its first count.
COUNTER_LABELS: Final[dict[str, dict[str, tuple[str, ...] | None]]] = {
    "submissions": {"model": MODELS},
    "polls": {"model": MODELS},
    "jobs_completed": {"model": MODELS},
    "jobs_failed": {"model": MODELS, "code": (*FAILURE_CODES, OTHER_CODE)},
    "jobs_timed_out": {"model": MODELS},
    "jobs_ended": {"model": MODELS, "outcome": OUTCOMES},
    "jobs_cancelled": {"model": MODELS, "stage": CANCEL_STAGES},
    "submit_outcome_unknown": {"model": MODELS},
    "resubmissions": {"model": MODELS},
    "error_retries": {"model": MODELS},
    "orphaned_predictions": {"model": MODELS},
    "inline_uploads": {"model": MODELS},
    "orphans_adopted": {"model": MODELS},
    "jobs_ended_by": {"path": ENDING_PATHS},
    "polls_before_end": {"path": ENDING_PATHS},
    "webhooks_rejected": {"reason": WEBHOOK_REJECT_REASONS},
    "webhooks_ignored": {"reason": WEBHOOK_IGNORE_REASONS},
    "callbacks_delivered": {"kind": CALLBACK_KINDS},
    "callbacks_failed": {"kind": CALLBACK_KINDS},
    "callback_attempts_failed": {"status": None},
    # Tenants are the users' names: ``None`` here, and the exporter takes every tenant the
    # store has seen (its live counts, kept from its first enqueued job), from 0.
    "images_billed": {"model": MODELS, "tenant": None},
    "jobs_held": {"reason": ("budget",), "tenant": None},
    "tenant_jobs_ended": {"status": OUTCOMES, "tenant": None},
    "tenant_admitted": {"tenant": None},
    "outputs_kept": {"model": MODELS},
    "outputs_not_kept": {"model": MODELS},
    "persist_failures": {"model": MODELS},
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
        "low_balance_pauses",
        "sweeper_held_woken",
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
    names |= {f"{PREFIX}{name}_total" for name in MONEY_COUNTERS}
    for name in HISTOGRAMS:
        names |= {f"{PREFIX}{name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
    return names
