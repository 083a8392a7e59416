"""Headless Chromium (Debian's `chromium`), driven over the DevTools protocol: open a page,
evaluate JavaScript in it. No driver but the `websockets` client the tests have already."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from websockets.sync.client import connect

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
]


def chromium_missing() -> str | None:
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


class Page:
    """One tab: `evaluate(expression)` returns the expression's JSON value."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> Any:
        id_ = next(self.ids)
        self.ws.send(json.dumps({"id": id_, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=10))
            if msg.get("id") == id_:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 10.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what or expression}")
            time.sleep(0.05)


@contextlib.contextmanager
def browser(url: str) -> Iterator[Page]:
    """Chromium with one tab open at `url`."""
    profile = tempfile.mkdtemp(prefix="wt-chromium-")
    proc = subprocess.Popen(
        ["chromium", *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        port = _devtools_port(proc)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?{url}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as reply:
            target = json.load(reply)
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            yield Page(ws)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            found = re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", seen)
            if found:
                return int(found.group(1))
    raise RuntimeError(f"chromium did not start: {seen.decode(errors='replace')[-500:]}")
