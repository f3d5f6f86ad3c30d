"""The jobs page's handlers (tornado). Every Redis call runs in the executor: a slow Redis
slows the page, never the exporter's ``/metrics`` on the same IOLoop."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import redis
import tornado.web
from tornado.ioloop import IOLoop

from ops.exporter.snapshot import read_snapshot
from ops.jobs_page.auth import authorized
from ops.jobs_page.figures import PageFigures, page_figures
from ops.jobs_page.images import input_images, output_images, thumbnail_of_data_uri
from producer import JobClient, JobNotFoundError, NotRetryableError, ValidationError
from producer.chain_status import ChainStatus
from worker.errors import WavequeueError
from worker.job_listing import DEFAULT_PAGE
from worker.models import ENDPOINTS, JobState, JobStatus
from worker.money import dollars
from worker.timeline import parse_timeline

T = TypeVar("T")

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"
#: What ``since`` may be on the page, with its label.
SINCE_CHOICES = {"": "any time", "15m": "15 minutes", "1h": "1 hour", "6h": "6 hours",
                 "24h": "24 hours"}  # fmt: skip
_SPAN = {"m": 60, "h": 3600}
_JOB_ID = r"[0-9a-f]{1,64}"
#: The cost column of a job whose cost is not known (not priced, not yet estimated).
UNKNOWN_COST = "—"
#: The figures at the top, in order, with their labels.
FIGURE_LABELS = {
    "queued_high": "queued, high priority",
    "queued_normal": "queued, normal priority",
    "jobs_queued": "jobs waiting",
    "jobs_running": "jobs at WaveSpeed",
    "in_flight": "in-flight slots taken",
    "oldest_waiting_seconds": "oldest waiting",
    "completed_last_hour": "completed, last hour",
    "failed_last_hour": "failed, last hour",
    "timed_out_last_hour": "timed out, last hour",
    "cancelled_last_hour": "cancelled, last hour",
}


@dataclass(frozen=True)
class PageContext:
    """What every handler of the page is given."""

    client: JobClient
    figures_client: redis.Redis
    credentials: Sequence[str]


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def cost_text(state: JobState) -> str:
    """What the job cost (billed), or its estimate ("~") until it ends; "—" if neither."""
    if state.cost_micros is not None:
        if state.cost_unconfirmed and state.estimated_cost_micros:
            return f"{dollars(state.cost_micros)} (up to {dollars(state.estimated_cost_micros)})"
        return dollars(state.cost_micros)
    if state.estimated_cost_micros is not None:
        return "~" + dollars(state.estimated_cost_micros)
    return UNKNOWN_COST


def row_of(state: JobState, now: float) -> dict[str, Any]:
    """A job as the list shows it (and as the live refresh sends it)."""
    return {
        "job_id": state.id,
        "status": state.status.value,
        "model": state.model,
        "tenant": state.tenant,
        "age": age(now - state.created_at),
        "polls": state.polls,
        "cost": cost_text(state),
        "error": f"[{state.error.code}] {state.error.message}" if state.error else "",
    }


class PageHandler(tornado.web.RequestHandler):
    """Login, headers and the executor, for every handler of the page."""

    context: PageContext

    def initialize(self, context: PageContext) -> None:
        self.context = context

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        # Images may come from WaveSpeed's CDN (or the emulator); scripts only from here.
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: http: https:; script-src 'self'; "
            "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
        )

    def prepare(self) -> None:
        if not authorized(self.request.headers.get("Authorization"), self.context.credentials):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="wavequeue jobs"')
            self.finish("login required")

    def check_xsrf_cookie(self) -> None:
        # A cross-site form post carries the browser's basic-auth login along: refuse it
        # by its fetch metadata first, then by tornado's XSRF token.
        site = self.request.headers.get("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            raise tornado.web.HTTPError(403, "cross-site request refused")
        super().check_xsrf_cookie()

    def get_template_path(self) -> str:
        return str(TEMPLATES)

    def get_template_namespace(self) -> dict[str, Any]:
        return {**super().get_template_namespace(), "age": age}

    async def blocking(self, call: Callable[[], T]) -> T:
        return await IOLoop.current().run_in_executor(None, call)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a traceback or an exception's text: a status line is enough.
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {self._reason}")

    def figures(self) -> PageFigures:
        return page_figures(read_snapshot(self.context.figures_client, time.time()))


def _since(value: str) -> datetime.timedelta | None:
    found = re.fullmatch(r"(\d+)([mh])", value)
    return datetime.timedelta(seconds=int(found[1]) * _SPAN[found[2]]) if found else None


class ListingMixin(PageHandler):
    """The list's filters, read the same way by the page and by its live refresh."""

    def query(self) -> dict[str, Any]:
        status = self.get_argument("status", "")
        model = self.get_argument("model", "")
        tenant = self.get_argument("tenant", "").strip()
        since = self.get_argument("since", "")
        return {
            "status": status if status in {s.value for s in JobStatus} else "",
            "model": model if model in models() else "",
            "tenant": tenant,
            "since": since if since in SINCE_CHOICES else "",
            "cursor": self.get_argument("cursor", "") or None,
        }

    def rows(self, query: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        client = self.context.client
        try:
            page = client.list(
                status=query["status"] or None,
                model=query["model"] or None,
                tenant=query["tenant"] or None,
                since=_since(query["since"]),
                limit=DEFAULT_PAGE,
                cursor=query["cursor"],
            )
        except ValidationError:
            return [], None  # a hand-made cursor or tenant: nothing to show
        now = client.store.clock()
        return [row_of(state, now) for state in page.jobs], page.next_cursor


def models() -> list[str]:
    return sorted(ENDPOINTS)


class JobsView(ListingMixin):
    async def get(self) -> None:
        wanted = self.get_argument("job", "").strip().lower()
        if wanted:
            if re.fullmatch(_JOB_ID, wanted):
                self.redirect(f"/jobs/{wanted}")
                return
            raise tornado.web.HTTPError(400, "not a job id")
        query = self.query()
        figures = await self.blocking(self.figures)
        rows, next_cursor = await self.blocking(lambda: self.rows(query))
        next_href = None
        if next_cursor is not None:
            kept = {k: v for k, v in query.items() if v and k != "cursor"}
            next_href = "/jobs?" + urlencode({**kept, "cursor": next_cursor})
        self.render(
            "jobs.html",
            figures=figures,
            figure_labels=FIGURE_LABELS,
            rows=rows,
            next_href=next_href,
            query=query,
            statuses=[s.value for s in JobStatus],
            models=models(),
            since_choices=SINCE_CHOICES,
        )


class JobView(PageHandler):
    async def get(self, job_id: str) -> None:
        client = self.context.client
        try:
            record = await self.blocking(lambda: client.get(job_id))
        except JobNotFoundError:
            raise tornado.web.HTTPError(404, "no such job (never created, or expired)") from None
        snap = await self.blocking(lambda: client.store.snapshot(job_id))
        retried_as = await self.blocking(lambda: client.retried_as(job_id))
        chain: ChainStatus | None = None
        if record.chain_id is not None:
            try:
                chain = await self.blocking(lambda: client.chain_status(str(record.chain_id)))
            except JobNotFoundError:
                chain = None
        now = await self.blocking(client.store.clock)
        self.render(
            "job.html",
            record=record,
            row=row_of(record, now),
            timeline=parse_timeline(snap.field("timeline")),
            inputs=input_images(job_id, record.input),
            outputs=output_images(record.outputs),
            retried_as=retried_as,
            chain=chain,
            retryable=record.status in (JobStatus.FAILED, JobStatus.TIMED_OUT),
            cancellable=not record.is_terminal,
            created=datetime.datetime.fromtimestamp(record.created_at, datetime.UTC),
        )


class RetryJob(PageHandler):
    async def post(self, job_id: str) -> None:
        client = self.context.client
        try:
            new_id = await self.blocking(lambda: client.retry(job_id))
        except JobNotFoundError:
            raise tornado.web.HTTPError(404, "no such job") from None
        except NotRetryableError as exc:
            self.set_status(409)
            self.render("message.html", message=str(exc), job_id=job_id)
            return
        except WavequeueError:
            raise tornado.web.HTTPError(503, "could not retry now") from None
        self.redirect(f"/jobs/{new_id}", status=303)


class CancelJob(PageHandler):
    async def post(self, job_id: str) -> None:
        client = self.context.client
        try:
            await self.blocking(lambda: client.cancel(job_id))
        except JobNotFoundError:
            raise tornado.web.HTTPError(404, "no such job") from None
        except WavequeueError:
            raise tornado.web.HTTPError(503, "could not cancel now") from None
        self.redirect(f"/jobs/{job_id}", status=303)


class InputThumbnail(PageHandler):
    async def get(self, job_id: str, index: str) -> None:
        client = self.context.client
        try:
            record = await self.blocking(lambda: client.get(job_id))
        except JobNotFoundError:
            raise tornado.web.HTTPError(404) from None
        values = record.input.get("images") or [record.input.get("image")]
        position = int(index)
        value = values[position] if position < len(values) else None
        png = await self.blocking(lambda: thumbnail_of_data_uri(str(value or "")))
        if png is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(png)


class SummaryApi(PageHandler):
    async def get(self) -> None:
        figures = await self.blocking(self.figures)
        self.finish(figures.to_json())


class JobsApi(ListingMixin):
    async def get(self) -> None:
        query = self.query()
        rows, next_cursor = await self.blocking(lambda: self.rows(query))
        self.finish({"jobs": rows, "next_cursor": next_cursor})


class JobApi(PageHandler):
    async def get(self, job_id: str) -> None:
        client = self.context.client
        try:
            snap = await self.blocking(lambda: client.store.snapshot(job_id))
        except JobNotFoundError:
            raise tornado.web.HTTPError(404) from None
        now = await self.blocking(client.store.clock)
        self.finish(
            {
                **row_of(snap.state, now),
                "outputs": list(snap.state.outputs),
                "timeline": [
                    {"at": event.at, "what": event.what}
                    for event in parse_timeline(snap.field("timeline"))
                ],
            }
        )


def handlers(
    context: PageContext,
) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    args = {"context": context}
    return [
        (r"/jobs/?", JobsView, args),
        (r"/jobs/api/summary", SummaryApi, args),
        (r"/jobs/api/jobs", JobsApi, args),
        (rf"/jobs/api/job/({_JOB_ID})", JobApi, args),
        (rf"/jobs/({_JOB_ID})", JobView, args),
        (rf"/jobs/({_JOB_ID})/retry", RetryJob, args),
        (rf"/jobs/({_JOB_ID})/cancel", CancelJob, args),
        (rf"/jobs/({_JOB_ID})/input/(\d+)\.png", InputThumbnail, args),
        (r"/jobs/static/(.*)", StaticFiles, {"path": str(STATIC)}),
    ]


class StaticFiles(tornado.web.StaticFileHandler):
    """The page's script and style sheet, behind the same login."""

    def prepare(self) -> None:
        credentials = self.settings["jobs_credentials"]
        if not authorized(self.request.headers.get("Authorization"), credentials):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="wavequeue jobs"')
            self.finish("login required")
