"""Headless Chromium driven over the DevTools protocol, for tests that press buttons.

``tests/ops/chromium.py`` runs Chromium once per page (``--dump-dom``); a test that
clicks needs a live page. This starts Chromium with ``--remote-debugging-port=0``, reads
the DevTools address it prints, and speaks the protocol over a websocket (tornado's
client: already in the tree). Every wait is for an event or a condition, with a
deadline; nothing sleeps to guess.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.ops.chromium import FLAGS

_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class CdpError(RuntimeError):
    pass


class Browser:
    """One Chromium and one page of it. Use as a context manager."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile
        self.process: subprocess.Popen[bytes] | None = None
        self.loop = asyncio.new_event_loop()
        self.socket: WebSocketClientConnection | None = None
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    # lifecycle -----------------------------------------------------------------

    def __enter__(self) -> Browser:
        argv = [
            self.binary, *FLAGS, f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0", "--remote-allow-origins=*",
            "--window-size=1400,1000", "--hide-scrollbars", "about:blank",
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        browser_url = self._devtools_address()
        port = re.search(r":(\d+)/", browser_url).group(1)  # type: ignore[union-attr]
        page = self._page_target(int(port))
        self.socket = self._run(self._connect(page))
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Network.enable")
        return self

    def __exit__(self, *_: object) -> None:
        if self.socket is not None:
            self.socket.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.loop.close()

    def _devtools_address(self, timeout: float = 60) -> str:
        assert self.process is not None and self.process.stderr is not None
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline().decode(errors="replace")
            if not line and self.process.poll() is not None:
                break
            seen.append(line)
            found = _LISTENING.search(line)
            if found:
                return found.group(1)
        raise CdpError("Chromium printed no DevTools address:\n" + "".join(seen[-30:]))

    @staticmethod
    def _page_target(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.loads(answer.read())
        for target in targets:
            if target.get("type") == "page":
                return str(target["webSocketDebuggerUrl"])
        raise CdpError(f"no page target: {targets}")

    # the protocol ----------------------------------------------------------------

    @staticmethod
    async def _connect(url: str) -> WebSocketClientConnection:
        # Called inside the loop: tornado binds the connection to the running one.
        return await websocket_connect(url, max_message_size=64 * 1024 * 1024)

    def _run(self, awaitable: Any, timeout: float = 60) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, timeout))

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.socket is not None
        call_id = next(self.ids)
        await self.socket.write_message(json.dumps({"id": call_id, "method": method,
                                                    "params": params}))  # fmt: skip
        while True:
            raw = await self.socket.read_message()
            if raw is None:
                raise CdpError("the DevTools connection closed")
            message = json.loads(raw)
            if message.get("id") == call_id:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    async def _next_event(self, name: str) -> dict[str, Any]:
        assert self.socket is not None
        while True:
            for index, event in enumerate(self.events):
                if event["method"] == name:
                    return self.events.pop(index)
            raw = await self.socket.read_message()
            if raw is None:
                raise CdpError("the DevTools connection closed")
            message = json.loads(raw)
            if "method" in message:
                self.events.append(message)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._run(self._call(method, params))
        return result

    def wait_for_event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        event: dict[str, Any] = self._run(self._next_event(name), timeout)
        return event

    # what tests do -----------------------------------------------------------------

    def send_header(self, name: str, value: str) -> None:
        """A header on every request the page makes (a basic-auth login, say)."""
        self.call("Network.setExtraHTTPHeaders", headers={name: value})

    def open(self, url: str) -> None:
        """Navigate and wait until the page has loaded."""
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        self.call("Page.navigate", url=url)
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise CdpError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 30) -> Any:
        """Evaluate until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        last_error: CdpError | None = None
        while True:
            try:
                value = self.evaluate(expression)
            except CdpError as exc:
                # The page may be between two documents (it reloads itself as a job moves
                # on): an expression that throws is not true yet.
                value, last_error = None, exc
            else:
                last_error = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise CdpError(
                    f"still false after {timeout}s: {expression}"
                    + (f" (last error: {last_error})" if last_error else "")
                )
            self._run(asyncio.sleep(0.2))

    def click(self, selector: str) -> None:
        """Press and release the mouse over the element, as a person would, and wait for
        the page it leads to."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)  # fmt: skip
        self.wait_for_event("Page.loadEventFired")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
