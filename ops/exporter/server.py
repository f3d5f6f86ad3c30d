"""The exporter's HTTP server (tornado): ``/metrics`` for Prometheus and, unless turned
off, the jobs page (``ops.jobs_page``) on the same port.

``/metrics`` reads Redis at every scrape, in the executor, so a slow Redis never holds
the page's IOLoop; it asks no login (Prometheus scrapes it inside the deployment, as
before). The jobs page follows Flower's rules (``ops.jobs_page.auth``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from tornado.ioloop import IOLoop

from ops.jobs_page.views import PageContext, handlers
from producer import JobClient
from worker.redis_connection import redis_client
from worker.settings import Settings

#: The page's Redis calls give up after this long while Redis is away (its figures come
#: from a client that tries once, as a scrape does).
PAGE_RETRY_WINDOW = 2.0


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def get(self) -> None:
        body = await IOLoop.current().run_in_executor(None, generate_latest, self.registry)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)


class RootHandler(tornado.web.RequestHandler):
    def initialize(self, jobs_page: bool) -> None:
        self.jobs_page = jobs_page

    def get(self) -> None:
        if self.jobs_page:
            self.redirect("/jobs")
        else:
            self.finish("wavequeue exporter: /metrics")


def make_app(
    settings: Settings,
    registry: CollectorRegistry,
    *,
    jobs_page: bool = True,
    credentials: Sequence[str] = (),
) -> tornado.web.Application:
    routes: list[Any] = [
        (r"/metrics", MetricsHandler, {"registry": registry}),
        (r"/", RootHandler, {"jobs_page": jobs_page}),
    ]
    if jobs_page:
        window = min(settings.redis_retry_window, PAGE_RETRY_WINDOW)
        page_settings = settings.model_copy(update={"redis_retry_window": window})
        context = PageContext(
            client=JobClient(page_settings),
            figures_client=redis_client(settings, retry_window=0),
            credentials=list(credentials),
        )
        routes += handlers(context)
    return tornado.web.Application(
        routes,
        xsrf_cookies=True,
        cookie_secret=secrets.token_hex(32),
        jobs_credentials=list(credentials),
        autoescape="xhtml_escape",
    )
