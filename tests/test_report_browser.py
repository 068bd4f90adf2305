"""The HTML pages in a real headless Chromium: they load without errors and show every figure.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so
the test needs no extra Python package and no network port. It is skipped, saying why, only
where no Chromium binary exists; ``make browser`` (Debian: ``apt-get install -y chromium``)
installs one.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from batchscale.report import write_comparison

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH: install Debian's chromium (apt-get install -y chromium, "
    "or 'make browser') to check the HTML report in a real browser",
)

# What the page shows, read in the browser after every image has decoded.
PAGE_STATE = """
(async () => {
  await Promise.all(Array.from(document.images).map(img => img.decode().catch(() => null)));
  return {
    readyState: document.readyState,
    title: document.title,
    headings: Array.from(document.querySelectorAll("h1, h2")).map(h => h.textContent),
    pageOverflows: document.documentElement.scrollWidth > window.innerWidth,
    images: Array.from(document.images).map(img => {
      const box = img.getBoundingClientRect();
      const style = getComputedStyle(img);
      return {
        alt: img.alt, complete: img.complete,
        naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
        width: box.width, height: box.height,
        display: style.display, visibility: style.visibility, opacity: style.opacity,
      };
    }),
  };
})()
"""


class DevTools:
    """A headless Chromium and its DevTools connection: commands out, replies and events in."""

    def __init__(self, binary: str, profile: Path) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def attach_pipes() -> None:
            # Chromium reads commands on descriptor 3 and writes replies on descriptor 4. The
            # pipe ends may already sit at 3 or 4, so move them out of the way first.
            high_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(replies_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=attach_pipes,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0.0))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise ConnectionError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        result: dict[str, Any] = json.loads(message)
        return result

    def command(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply, keeping the events that arrive meanwhile."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                answer: dict[str, Any] = reply.get("result", {})
                return answer
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        """Wait until ``event`` has arrived (it may have arrived already)."""
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        """Ask the browser to quit; kill it if it will not."""
        with contextlib.suppress(OSError, TimeoutError, ConnectionError, RuntimeError):
            self.command("Browser.close", timeout=10.0)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)


def errors_in(events: list[dict[str, Any]]) -> list[str]:
    """Script exceptions, console errors, error log entries and failed loads."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
            found.append(json.dumps(params.get("args"))[:500])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            found.append(params["entry"].get("text", ""))
        elif method == "Network.loadingFailed":
            found.append(f"failed to load: {params.get('errorText')}")
    return found


def load_in_browser(page: Path, profile: Path) -> tuple[dict[str, Any], list[str], bytes]:
    """Open ``page`` at 1280x900 and return its state, its errors and a full-page screenshot."""
    assert CHROMIUM is not None
    browser = DevTools(CHROMIUM, profile)
    try:
        target = browser.command("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.command("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.command(f"{domain}.enable", session=session)
        browser.command(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.command("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        state = browser.command(
            "Runtime.evaluate",
            {"expression": PAGE_STATE, "awaitPromise": True, "returnByValue": True},
            session=session,
        )["result"]["value"]
        shot = browser.command(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True},
            session=session,
        )["data"]
        return state, errors_in(browser.events), base64.b64decode(shot)
    finally:
        browser.close()


def assert_shows_every_figure(state: dict[str, Any], figures: int) -> None:
    assert state["readyState"] == "complete"
    assert len(state["images"]) == figures
    for image in state["images"]:
        assert image["complete"], image["alt"]
        assert image["naturalWidth"] > 300 and image["naturalHeight"] > 200, image
        assert image["width"] > 300 and image["height"] > 150, image
        assert image["display"] != "none" and image["visibility"] == "visible", image
        assert float(image["opacity"]) == 1.0, image
    # Wide tables scroll inside their own box; the page itself never scrolls sideways.
    assert not state["pageOverflows"]


def test_report_loads_in_chromium_and_shows_every_figure(
    synthetic_report: Path, tmp_path: Path
) -> None:
    state, errors, screenshot = load_in_browser(synthetic_report, tmp_path / "profile")
    assert errors == []
    assert state["title"].startswith("synthetic / momentum")
    assert "Design checks (" in " ".join(state["headings"])
    assert_shows_every_figure(state, figures=6)
    assert screenshot.startswith(b"\x89PNG")
    (tmp_path / "report-screenshot.png").write_bytes(screenshot)


def test_comparison_loads_in_chromium(
    synthetic_store: Path, trained_store: Path, tmp_path: Path
) -> None:
    page = write_comparison(
        [synthetic_store, trained_store], tmp_path / "out", bootstrap_samples=20
    )
    state, errors, _ = load_in_browser(page, tmp_path / "profile")
    assert errors == []
    assert_shows_every_figure(state, figures=1)


def test_the_browser_check_sees_a_broken_page(tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body>"
        '<img alt="missing" src="no-such-figure.png">'
        "<script>undefinedFunction();</script></body></html>",
        encoding="utf-8",
    )
    state, errors, _ = load_in_browser(broken, tmp_path / "profile")
    assert any("undefinedFunction" in e for e in errors)
    assert any("failed to load" in e for e in errors)
    with pytest.raises(AssertionError):
        assert_shows_every_figure(state, figures=1)
