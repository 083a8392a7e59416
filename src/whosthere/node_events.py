"""The supervisor's pipe to the process that started the node: one JSON line per event.

Two events: `{"ready": true, "pid": ...}` once every actor serves, and `{"error": class
name, "message": ...}` when the node stops by itself. A pipe, not a socket: it works before
any socket is bound, and its end of file tells the Node the supervisor is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from typing import Any

from whosthere.errors import WhosthereError, from_wire


def tell_ready(fd: int) -> None:
    """Supervisor side: every actor serves."""
    _tell(fd, {"ready": True, "pid": os.getpid()})


def tell_error(fd: int, error: WhosthereError) -> None:
    """Supervisor side: the node stopped by itself, with this error."""
    _tell(fd, {"error": type(error).__name__, "message": str(error)})


def _tell(fd: int, event: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the reader may be gone: nothing to do then
        os.write(fd, (json.dumps(event) + "\n").encode())


class EventReader:
    """Node side: the events read so far, and the error the node stopped with."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.error: WhosthereError | None = None

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, None at end of file or timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return self._record(json.loads(line))

    def drain(self) -> None:
        """Read whatever events are waiting, without blocking."""
        if self.fd < 0:
            return
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.buffer += chunk
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self._record(json.loads(line))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _record(self, event: dict[str, Any]) -> dict[str, Any]:
        if "error" in event and self.error is None:
            self.error = from_wire(event["error"], event["message"])
        return event
