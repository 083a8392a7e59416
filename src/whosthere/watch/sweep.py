"""Watching processes without a file descriptor each: a background thread that sweeps them.

Used where pidfd is missing and for processes beyond the pidfd budget (the open-file limit).
Each sweep probes every pid with signal 0 (cheap: catches exit-and-reaped), and re-reads the
start time of a rotating slice, so a zombie or a reused pid is caught within
`full_check_period`. The pause between sweeps grows with their cost, so the thread never takes
more than about a tenth of a core, however many processes it holds: slower, never blind.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from whosthere.watch.identity import ProcessKey, is_same_living


class Sweeper:
    """A set of watched processes, swept by a thread that reports exits through `wake`."""

    def __init__(
        self,
        wake: Callable[[], None],
        *,
        interval: float = 0.02,  # seconds between sweeps at small sizes
        full_check_period: float = 0.5,  # every key's start time re-read at least this often
    ) -> None:
        self._wake = wake  # called (from the thread) when exits are ready
        self._interval = interval
        self._full_period = full_check_period
        self._keys: dict[ProcessKey, None] = {}  # insertion-ordered set
        self._exits: list[ProcessKey] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._cursor = 0  # where the next full-check slice starts

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: ProcessKey) -> None:
        with self._lock:
            self._keys[key] = None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="whosthere-sweep", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def discard(self, key: ProcessKey) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def pop_any(self) -> ProcessKey | None:
        """Take one key out (to move it to a cheaper mechanism), or None if empty."""
        with self._lock:
            if not self._keys:
                return None
            key = next(iter(self._keys))
            del self._keys[key]
            return key

    def take_exits(self) -> list[ProcessKey]:
        with self._lock:
            exits, self._exits = self._exits, []
            return exits

    def close(self) -> None:
        with self._lock:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._keys and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                keys = list(self._keys)
            started = time.monotonic()
            dead = self._sweep(keys)
            if dead:
                with self._lock:
                    for key in dead:
                        if key in self._keys:
                            del self._keys[key]
                            self._exits.append(key)
                    report = bool(self._exits)
                if report:
                    self._wake()
            cost = time.monotonic() - started
            with self._lock:
                if not self._stopped:
                    self._cond.wait(max(self._interval, 10 * cost))

    def _sweep(self, keys: list[ProcessKey]) -> list[ProcessKey]:
        dead = []
        for key in keys:
            try:
                os.kill(key[0], 0)
            except ProcessLookupError:
                dead.append(key)
            except PermissionError:
                pass  # exists, owned by another user
        n = len(keys)
        if n:
            sweeps_per_period = max(1.0, self._full_period / self._interval)
            count = min(n, max(1, int(n / sweeps_per_period) + 1))
            start = self._cursor % n
            for i in range(start, start + count):
                key = keys[i % n]
                if not is_same_living(key):
                    dead.append(key)
            self._cursor = start + count
        return dead
