"""Erlang-style links to OS processes, served by the node's supervisor."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import zmq

from whosthere.client import resolve_address
from whosthere.errors import NodeUnavailable
from whosthere.transport import codec
from whosthere.transport.messages import Link, ProcessesExited, Unlink
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Dealer
from whosthere.watch import is_pid, start_time


class ProcessExit(NamedTuple):
    """A linked process exited."""

    pid: int
    start_time: int | float | None  # identity of the process that exited; None: gone at link


def link_items(pids: list[int], starts: list[int | float | None] | None) -> list[list[Any]]:
    """[[pid, start time], ...] for `Link`, start times read now where not given."""
    starts = starts or [None] * len(pids)
    items = []
    for pid, start in zip(pids, starts, strict=True):
        if not is_pid(pid):  # as `Presence.track`: pid 1 (init) is a process like others
            raise TypeError(f"pid must be a positive int (an OS pid), got {pid!r}")
        st = start_time(pid) if start is None else start
        codec.check_start_time(st, "start")  # NaN never equals itself: never reported
        items.append([pid, st])
    return items


class Links:
    """Watch OS processes through the node and receive their exits, once each.

    Use it from one thread. `link(pid)` reads the process's start time here and now, so a pid
    that is later reused by another process is never mistaken for the linked one; a pid that
    is already gone is reported at once.
    """

    def __init__(self, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = resolve_address(address)
        self._dealer = Dealer(self.address, timeout=timeout, what="node")
        self._linked: dict[int, int | float | None] = {}  # pid -> start time at link
        self._exits: deque[ProcessExit] = deque()

    def link(self, pid: int, start: int | float | None = None) -> None:
        """Watch `pid`. Blocks until the node has it (at most the timeout: `NodeUnavailable`).

        `start` is the process's start time if the caller knows it (`watch.start_time`).
        """
        self.link_many([pid], [start])

    def link_many(self, pids: list[int], starts: list[int | float | None] | None = None) -> None:
        """Watch several processes in one request."""
        items = link_items(pids, starts)
        self._dealer.call(Link(items))
        self._linked.update(items)  # only once the node has them

    def unlink(self, pid: int) -> None:
        """Stop watching `pid` (no-op if not linked); its exit is then not reported."""
        if pid in self._linked:
            self._dealer.call(Unlink([[pid, self._linked.pop(pid)]]))

    def get(self, timeout: float | None = None) -> ProcessExit | None:
        """The next exit; waits up to `timeout` seconds (None: forever), then returns None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._exits:
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            for push in self._dealer.recv_pushes(wait):
                if isinstance(push, ProcessesExited):
                    for pid, st in push.exits:
                        self._linked.pop(pid, None)
                        self._exits.append(ProcessExit(pid, st))
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self._exits.popleft() if self._exits else None

    def __iter__(self) -> Iterator[ProcessExit]:
        while True:
            exit_ = self.get()
            if exit_ is not None:
                yield exit_

    @property
    def socket(self) -> zmq.Socket:
        """The socket exits arrive on, to poll beside others (then call `get(timeout=0)`)."""
        return self._dealer.socket

    @property
    def linked(self) -> set[int]:
        """The pids linked and not yet reported."""
        return set(self._linked)

    def close(self) -> None:
        """Drop every link and the connection. Idempotent."""
        if self._dealer.socket.closed:
            return
        if self._linked:
            with contextlib.suppress(NodeUnavailable):
                self._dealer.call(Unlink([[p, st] for p, st in self._linked.items()]), 0.5)
            self._linked.clear()
        self._dealer.close()

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
