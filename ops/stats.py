"""``wavequeue stats``: finished jobs per day, from the daily aggregates.

Job records expire ``WAVEQUEUE_RECORD_TTL`` after they end (a day by default); what
finished each day (jobs by status and model, images delivered, inference time) is
kept far longer in ``wq:daily:<date>`` (see ``worker.store``), and this shows it.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from producer.commands.common import EXIT_COMPLETED, json_option, print_json, reports_errors
from worker.constants import DAILY_TTL
from worker.settings import Settings
from worker.store import DayTotals, JobStore, utc_day

_DAY = 24 * 3600
_MAX_DAYS = DAILY_TTL // _DAY
#: The measures shown as columns, in order, with their headings.
_COLUMNS = (
    ("completed", "completed"),
    ("failed", "failed"),
    ("timed_out", "timed_out"),
    ("cancelled", "cancelled"),
    ("outputs", "images"),
)


@click.command("stats")
@click.option(
    "--days",
    type=click.IntRange(1, _MAX_DAYS),
    default=7,
    show_default=True,
    help="How many days to show, today (UTC) included.",
)
@json_option
@reports_errors
def stats_command(days: int, as_json: bool) -> None:
    """Finished jobs per day (UTC) and model: completed, failed, timed out, cancelled, images
    delivered and WaveSpeed inference time. Kept 400 days, long after the job records."""
    store = JobStore.from_settings(Settings.from_env())
    try:
        now = store.clock()
        wanted = [utc_day(now - back * _DAY) for back in range(days)]
        totals = store.daily_totals(wanted)
    finally:
        store.client.close()
    if as_json:
        print_json({"days": [{"day": t.day, "models": t.by_model} for t in totals]})
    else:
        click.echo(_table(totals))
    sys.exit(EXIT_COMPLETED)


def _table(totals: list[DayTotals]) -> str:
    rows: list[list[Any]] = []
    for day in totals:
        for model, measures in sorted(day.by_model.items()):
            counts = [measures.get(measure, 0) for measure, _ in _COLUMNS]
            seconds = measures.get("inference_ms", 0) / 1000
            rows.append([day.day, model, *counts, f"{seconds:.1f}"])
    if not rows:
        return f"no finished jobs in the last {len(totals)} day(s)"
    header = ["day", "model", *(heading for _, heading in _COLUMNS), "inference_s"]
    cells = [header, *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        left = [row[i].ljust(widths[i]) for i in range(2)]
        right = [row[i].rjust(widths[i]) for i in range(2, len(header))]
        lines.append("  ".join(left + right))
    return "\n".join(lines)
