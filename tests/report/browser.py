"""A real headless Chromium driven over the Chrome DevTools Protocol (CDP), for the report tests.

CDP over a websocket, with no driver binary and no Node: the browser is started with
``--remote-debugging-port=0`` in a fresh profile, says its port in ``DevToolsActivePort``, and
one connection gives what the tests need: console messages, uncaught exceptions, the browser's
own error log (a failed image load lands there), every request the page makes, the images'
natural sizes, and screenshots.

    python tests/report/browser.py PAGE.html OUT.png [WIDTH] [MAX_HEIGHT]    a screenshot (docs/)
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--remote-allow-origins=*", "--hide-scrollbars",
]


@dataclass
class PageLoad:
    """What happened while a page loaded."""

    errors: list[str] = field(default_factory=list)  # console errors, exceptions, error log entries
    requests: list[str] = field(default_factory=list)  # URLs the page asked for (after the page itself)
    images: list[dict[str, Any]] = field(default_factory=list)  # {alt, complete, naturalWidth, naturalHeight}
    title: str = ""
    text: str = ""  # the page's visible text


class Browser:
    """One headless Chromium with a fresh profile; a context manager."""

    def __init__(self, executable: str = CHROMIUM) -> None:
        from websockets.sync.client import connect

        self.profile = Path(tempfile.mkdtemp(prefix="cleftgan-chromium-"))
        self.stack = contextlib.ExitStack()  # the websocket connection
        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start (exit code {self.proc.returncode})")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30))
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            with contextlib.suppress(Exception):  # it may be gone already; it is killed below anyway
                self.call("Browser.close")
            self.stack.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        msg_id = next(self.ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return ev
            seen = len(self.events)
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def open(self, url: str, width: int = 1280, height: int = 900) -> tuple[str, PageLoad]:
        """Load ``url`` in a new tab; (session, what happened). Waits for the load event and a moment after."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        start = len(self.events)
        self.call("Page.navigate", {"url": url}, session)
        self.wait_event("Page.loadEventFired", session)
        time.sleep(0.5)  # late console messages and image errors
        checks = self.call("Runtime.evaluate", {"expression": """JSON.stringify({
            title: document.title, text: document.body.innerText,
            images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
                naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))})""", "returnByValue": True},
            session)["result"]["value"]
        load = PageLoad(**json.loads(checks))
        for ev in self.events[start:]:
            if ev.get("sessionId") != session:
                continue
            p, m = ev.get("params", {}), ev.get("method")
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                load.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                load.errors.append("exception: " + str(p["exceptionDetails"].get("text")))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                load.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent" and p["request"]["url"] != url:
                load.requests.append(p["request"]["url"])
            elif m == "Network.loadingFailed":
                load.errors.append(f"network: {p.get('errorText')}")
        return session, load

    def screenshot(self, session: str, path: Path, width: int = 1280, max_height: int = 2400) -> tuple[int, int]:
        """A PNG of the page from the top, at most ``max_height`` CSS pixels tall; its size."""
        size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        height = min(int(size["height"]), max_height)
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": width, "height": height,
                                                             "scale": 1}}, session)
        path.write_bytes(base64.b64decode(shot["data"]))
        return width, height


if __name__ == "__main__":
    page, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    width = int(sys.argv[3]) if len(sys.argv) > 3 else 1280
    max_height = int(sys.argv[4]) if len(sys.argv) > 4 else 2400
    with Browser() as b:
        sess, load = b.open(page.as_uri(), width)
        print(f"errors: {load.errors}; requests: {len(load.requests)}; images: {len(load.images)}")
        print("screenshot", b.screenshot(sess, out, width, max_height), "->", out)
