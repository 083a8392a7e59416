"""Names resolved off the actor's loop: one thread per name, its results handed to the loop.

A resolution blocks for as long as the resolver takes (seconds, when a DNS server does not
answer), and the cluster actor's loop routes every heartbeat: it must never wait for one. Each
name gets a daemon thread that resolves it every `period`, puts the result on a queue and
writes a byte to a pipe; the loop watches the pipe's read end (`Actor.add_reader(watch.fd,
...)`) and takes the results with `drain()`. Threads of a stopped watch end after their current
resolution; the pipe is left to the process's exit (closing it under a thread still resolving
could make that thread write to a reused fd).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable

from whosthere.transport.dns_names import DnsName, ResolutionFailed, resolve

# a name's result: its addresses, or why it did not resolve; and when
Result = tuple[DnsName, list[str] | str, float]


class DnsWatch:
    def __init__(
        self,
        names: list[DnsName],
        period: float,
        resolver: Callable[[DnsName], list[str]] = resolve,
    ) -> None:
        self.names = names
        self.period = period
        self.resolver = resolver
        self._results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self.fd, self._wake = os.pipe()  # the loop reads `fd`; threads write `_wake`
        os.set_blocking(self.fd, False)
        os.set_blocking(self._wake, False)
        self._threads = [
            threading.Thread(target=self._watch, args=(n,), name=f"dns {n}", daemon=True)
            for n in names
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def drain(self) -> list[Result]:
        """The results that came since the last call, oldest first."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass
        results = []
        while True:
            try:
                results.append(self._results.get_nowait())
            except queue.Empty:
                return results

    def _watch(self, name: DnsName) -> None:
        while not self._stopped.is_set():
            result: list[str] | str
            try:
                result = self.resolver(name)
            except ResolutionFailed as exc:
                result = str(exc)
            except Exception as exc:  # a resolver's bug must not end the watch
                result = f"{type(exc).__name__}: {exc}"
            self._results.put((name, result, time.monotonic()))
            with contextlib.suppress(BlockingIOError):  # full: the loop has bytes to read
                os.write(self._wake, b"!")
            self._stopped.wait(self.period)
