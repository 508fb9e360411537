"""Drive headless Debian Chromium over the DevTools protocol on a pipe: no WebDriver, no websocket library.

``--remote-debugging-pipe`` makes Chromium read JSON commands from fd 3 and write answers and events
to fd 4, each message ended by a NUL byte. That is all the tests need: open a page, run JavaScript in
it, type, wait for the DOM to show something, take screenshots at a desktop and a phone size, and
record every request the page made (to prove it fetched nothing from outside the server).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.ingest.peers.browser import CHROMIUM_FLAGS, chromium_path

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}


class BrowserError(RuntimeError):
    """A DevTools command failed, or the page did not reach the awaited state in time."""


class Browser:
    """One Chromium process and one page in it (``Browser(...)`` starts it, ``close()`` ends it)."""

    def __init__(self, profile: Path, log: Path) -> None:
        binary = chromium_path()
        assert binary is not None, "chromium is not installed"
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        # above 4 so that placing them at 3 and 4 in the child cannot overwrite one with the other
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child))
        os.close(to_child)
        os.close(from_child)

        def pipes_at_3_and_4() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        flags = [f for f in CHROMIUM_FLAGS if "media-stream" not in f]
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [binary, *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}", "--hide-scrollbars",
                 "--mute-audio", "about:blank"],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                pass_fds=(3, 4), preexec_fn=pipes_at_3_and_4,  # only dup2 in the child: safe before exec
            )
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")

    # protocol ------------------------------------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Send one command and return its result; events read meanwhile go to ``self.events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """A command to the page's session."""
        return self.send(method, params, session=self.session, timeout=timeout)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise BrowserError("no answer from Chromium in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed its pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def pump(self) -> None:
        """Read the events waiting on the pipe (they arrive between commands too)."""
        self.send("Browser.getVersion", timeout=10)

    # page ----------------------------------------------------------------------------------------

    def goto(self, url: str, timeout: float = 30.0) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", timeout=timeout)

    def js(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate ``expression`` in the page (awaiting a promise) and return its JSON value."""
        result = self.call("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True,
        }, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression[:80]!r}: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, every: float = 0.2) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.js(expression)
            except BrowserError as exc:  # a navigation in progress
                last = str(exc)
            else:
                if last:
                    return last
            time.sleep(every)
        raise BrowserError(f"timed out after {timeout:g} s waiting for {expression!r} (last: {last!r})")

    def type(self, selector: str, text: str) -> None:
        """Focus the field and type as a user would (input events included)."""
        self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                " el.focus(); el.select?.(); })()")
        self.call("Input.insertText", {"text": text})

    def click(self, selector: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).click()")

    def viewport(self, size: dict[str, Any]) -> None:
        self.call("Emulation.setDeviceMetricsOverride", size)
        self.call("Emulation.setTouchEmulationEnabled", {"enabled": bool(size.get("mobile"))})

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": metrics["width"], "height": metrics["height"], "scale": 1})
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))
        return path

    # what the page did -----------------------------------------------------------------------------

    def requested_urls(self) -> list[str]:
        self.pump()
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and browser log errors (CSP violations among them)."""
        self.pump()
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("exception", {}).get("description", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                found.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        return found

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
