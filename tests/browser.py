"""Headless Chromium driven over the DevTools protocol (websockets), for the web view tests.

Only what the tests need: open a page, evaluate JavaScript (awaiting promises), take a
screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tests.system_tools import CHROMIUM, require_program


class Chromium:
    def __init__(self, url: str, size: tuple[int, int] = (1280, 860)) -> None:
        binary = require_program(CHROMIUM, "chromium")
        self._closing = contextlib.ExitStack()
        self._profile = tempfile.TemporaryDirectory(prefix="anomaly-edge-chromium-")
        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={size[0]},{size[1]}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        ready = threading.Event()

        def read_stderr() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self._lines.append(line)
                if "DevTools listening on" in line:
                    ready.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        if not ready.wait(60):
            self.close()
            raise AssertionError("chromium did not start:\n" + "".join(self._lines[-20:]))
        match = re.search(r"ws://([^/]+)/", "".join(self._lines))
        assert match, self._lines
        self._page_ws = self._page_target(match.group(1))
        from websockets.sync.client import connect

        self._ws = self._closing.enter_context(connect(self._page_ws, max_size=64 * 2**20))
        self._ids = itertools.count(1)

    def _page_target(self, host: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://{host}/json/list", timeout=5) as response:
                targets = json.loads(response.read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise AssertionError("chromium opened no page")

    def call(self, method: str, **params) -> dict:
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, limit_s: float = 30.0, what: str = ""):
        deadline = time.monotonic() + limit_s
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what or expression} (last: {value!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._closing.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._profile.cleanup()
