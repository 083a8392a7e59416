"""The real phoenix npm client under Node (js/driver.mjs), and a uvicorn server for it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent.parent.parent / "js"
Event = dict[str, Any]


@functools.cache
def node_missing() -> str | None:
    """Why the phoenix.js tests cannot run here, or None. Installs the locked npm packages
    (`npm ci` in js/) the first time, as a fresh clone has none."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Node.js (node and npm) is not installed"
    if not (JS_DIR / "node_modules" / "phoenix").is_dir():
        try:
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=JS_DIR,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "`npm ci` in js/ took over 300 s"
        if done.returncode != 0:
            return f"`npm ci` in js/ failed: {done.stderr.strip()[-300:]}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group(cmd: list[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """`cmd` in a session of its own (a server and its workers); at the end, SIGTERM to the
    whole group, then SIGKILL if it has not stopped within 15 s."""
    proc = subprocess.Popen(cmd, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Until something accepts on the loopback `port` (fails if `proc` exits first)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not listen on {port} (exit {proc.poll()})")
        time.sleep(0.02)


@contextlib.contextmanager
def channels_server(
    address: str,
    *,
    app: str = "tests.support.channels_app:app",
    workers: int = 1,
    port: int | None = None,
    server: str = "uvicorn",
    ws: str = "wsproto",
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """uvicorn (or hypercorn) serving `app` on a loopback port (free, unless given) for the
    node at `address`: yields (the client's endpoint URL, the server process). `ws`: uvicorn's
    WebSocket implementation (wsproto, as `whosthere serve --http` runs it, or websockets)."""
    port = port or free_port()
    env = {**os.environ, "WHOSTHERE_ADDRESS": address}
    if server == "hypercorn":
        cmd = [
            sys.executable,
            "-m",
            "hypercorn",
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--workers",
            str(workers),
            "--ws",
            ws,
        ]
    with process_group(cmd, env=env) as proc:
        wait_for_port(port, proc)
        yield f"ws://127.0.0.1:{port}/socket", proc


@contextlib.contextmanager
def serve_http(channels: str | None = None) -> Iterator[tuple[str, str]]:
    """`whosthere serve --http` on a free port (with `--channels`, if given): yields (the
    live page's URL, the node's address) once it listens."""
    port = free_port()
    cmd = [sys.executable, "-m", "whosthere", "serve", "--http", f"127.0.0.1:{port}"]
    if channels is not None:
        cmd += ["--channels", channels]
    with process_group(cmd, stdout=subprocess.PIPE, text=True) as proc:
        address = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            if "WHOSTHERE_ADDRESS=" in line:
                address = line.strip().split("=", 1)[1]
            if "the live page" in line:
                break
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/", address


class JsClient:
    """One Node process running phoenix.js: `send(cmd=..., ...)`, `wait(match)`."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(JS_DIR / "driver.mjs")],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.events: list[Event] = []
        self._incoming: queue.Queue[Event | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait(lambda e: e["ev"] == "ready", what="the driver to start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._incoming.put(json.loads(line))
        self._incoming.put(None)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def _drain(self, timeout: float) -> bool:
        try:
            event = self._incoming.get(timeout=timeout)
        except queue.Empty:
            return False
        if event is None:
            raise AssertionError(f"the Node driver exited ({self.proc.poll()})")
        if event["ev"] == "driver_error":
            raise AssertionError(f"the Node driver failed: {event['error']}")
        self.events.append(event)
        return True

    def mark(self) -> int:
        """A point in the events, for `wait(after=...)` (events read so far are before it)."""
        while self._drain(0):
            pass
        return len(self.events)

    def wait(
        self, match: Callable[[Event], Any], timeout: float = 10.0, what: str = "", after: int = 0
    ) -> Event:
        """The first event (from `after` on, so far or to come) that `match`es; fails the
        test at the deadline."""
        seen = after
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[seen:]:
                if match(event):
                    return event
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                tail = "\n".join(json.dumps(e) for e in self.events[-15:])
                raise AssertionError(f"no event for {what or match} in {timeout} s; last:\n{tail}")
            self._drain(min(left, 0.1))

    def settle(self, quiet: float = 0.3) -> None:
        """Read until nothing has come for `quiet` seconds."""
        while self._drain(quiet):
            pass

    def latest(self, match: Callable[[Event], Any]) -> Event | None:
        found = [e for e in self.events if match(e)]
        return found[-1] if found else None

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.send(cmd="exit")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> JsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def synced(chan: str, check: Callable[[dict[str, Any]], Any]) -> Callable[[Event], Any]:
    """Matches a `Presence.onSync` of `chan` whose state passes `check`."""
    return lambda e: e["ev"] == "sync" and e["chan"] == chan and check(e["state"])
