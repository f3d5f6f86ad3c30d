"""``wavequeue webhooks`` as a real child process, and signed callbacks a test can send.

The receiver is started like any service (the console script, settings from the
environment) on a free port; it fetches the webhook secret from the emulator with the
API key, exactly as it would from WaveSpeed. ``Callbacks`` signs bodies the way
WaveSpeed documents (v3 HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``) with the secret
the test reads from the emulator, or with a wrong one, to play the forger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.support.worker_process import WAVEQUEUE
from worker.webhooks.urls import callback_url

LISTENING = re.compile(r"listening on (http://\S+)")


def webhook_env(url_key: str | None = None) -> dict[str, str]:
    """The setting workers and receiver share (the URL MAC key)."""
    return {"WAVEQUEUE_WEBHOOK_URL_KEY": url_key or secrets.token_hex(16)}


@dataclass
class WebhooksProcess:
    """One ``wavequeue webhooks`` child on a free port; its output goes to ``log_path``."""

    env: dict[str, str]
    log_path: Path
    base_url: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WebhooksProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [WAVEQUEUE, "webhooks", "--port", "0"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"wavequeue webhooks exited at start:\n{self.log()}")
            found = LISTENING.search(self.log())
            if found:
                self.base_url = found.group(1)
                return self
            time.sleep(0.05)
        raise TimeoutError(f"wavequeue webhooks not listening in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@dataclass
class Callbacks:
    """Sends callbacks to a receiver as WaveSpeed would (or as a forger would)."""

    base_url: str
    url_key: str
    secret: str
    session: requests.Session = field(default_factory=requests.Session)

    def url(self, job_id: str) -> str:
        return callback_url(self.base_url, self.url_key.encode(), job_id)

    def signed(
        self,
        data: dict[str, Any],
        *,
        webhook_id: str | None = None,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """Headers and body of a delivery of ``data``, signed with ``secret`` (default: the
        account's) at ``timestamp`` (default: now)."""
        body = json.dumps(data, separators=(",", ":")).encode()
        webhook_id = webhook_id or uuid.uuid4().hex
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        key = (secret or self.secret).removeprefix("whsec_").encode()
        digest = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v3," + digest.hexdigest(),
        }
        return headers, body

    def post(self, url: str, headers: dict[str, str], body: bytes) -> requests.Response:
        return self.session.post(url, headers=headers, data=body, timeout=10)


def completed_prediction(
    prediction_id: str, url: str = "https://cdn.example/out.png"
) -> dict[str, Any]:
    """The bare prediction object WaveSpeed posts when a prediction completes."""
    return {
        "id": prediction_id,
        "model": "wavespeed-ai/flux-kontext-max/text-to-image",
        "outputs": [url],
        "urls": {"get": f"https://api.example/api/v3/predictions/{prediction_id}/result"},
        "has_nsfw_contents": [False],
        "status": "completed",
        "created_at": "2026-01-01T00:00:00.000Z",
        "error": "",
        "timings": {"inference": 1200},
    }


def emulator_secret(base_url: str, api_key: str) -> str:
    answer = requests.get(
        f"{base_url}/api/v3/webhook/secret",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    answer.raise_for_status()
    secret: str = answer.json()["data"]["secret"]
    return secret
