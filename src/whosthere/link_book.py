"""`LinkBook`: what a links client has linked and what it was told, without I/O.

Shared by `links.Links` (blocking) and `aio.links.AsyncLinks`: the `Link` and `Unlink`
messages, the pids linked (each with the start time it was linked with: a pid later reused
by another process is never taken for it), and the exits the node pushed, each handed out
once. The clients only send the messages and wait for pushes.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

from whosthere.transport import codec
from whosthere.transport.messages import Link, ProcessesExited, StartTime, Unlink
from whosthere.watch import is_pid, start_time


class ProcessExit(NamedTuple):
    """A linked process exited."""

    pid: int
    start_time: int | float | None  # identity of the process that exited; None: gone at link


def link_items(pids: list[int], starts: list[StartTime] | None) -> list[list[Any]]:
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


class LinkBook:
    """The links of one client and the exits not yet handed out."""

    def __init__(self) -> None:
        self.linked: dict[int, StartTime] = {}  # pid -> start time at link
        self.exits: deque[ProcessExit] = deque()  # pushed, not yet handed out

    def link(self, pids: list[int], starts: list[StartTime] | None) -> Link:
        """The `Link` of `pids` (`TypeError` for one that is not a pid); once the node has
        it, `linked_by` records it."""
        return Link(link_items(pids, starts))

    def linked_by(self, msg: Link) -> None:
        """The node has the pids of `msg`: their exits will come."""
        self.linked.update((pid, start) for pid, start in msg.pids)

    def unlink(self, pid: int) -> Unlink | None:
        """The `Unlink` of `pid`, forgotten here (None if it is not linked)."""
        if pid not in self.linked:
            return None
        return Unlink([[pid, self.linked.pop(pid)]])

    def relink(self) -> Link | None:
        """The `Link` of every pid linked (for a node that replaced the one they were
        linked on: a pid gone meanwhile is reported at once), or None if none is."""
        if not self.linked:
            return None
        return Link([[pid, start] for pid, start in self.linked.items()])

    def unlink_all(self) -> Unlink | None:
        """The `Unlink` of every pid linked, all forgotten here (None if none is)."""
        if not self.linked:
            return None
        msg = Unlink([[pid, start] for pid, start in self.linked.items()])
        self.linked.clear()
        return msg

    def pushed(self, push: Any) -> bool:
        """A push from the node; whether it brought exits (`ProcessesExited`)."""
        if not isinstance(push, ProcessesExited):
            return False
        for pid, start in push.exits:
            self.linked.pop(pid, None)
            self.exits.append(ProcessExit(pid, start))
        return True

    def next_exit(self) -> ProcessExit | None:
        """The oldest exit not handed out yet, once."""
        return self.exits.popleft() if self.exits else None
