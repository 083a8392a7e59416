"""Which OS processes hold presences on a shard: one link per process, many owners in it.

An owner (`watch.identity`) is an OS pid, or one of the lightweight owners inside that
process. Presences belong to owners; the supervisor watches OS processes. So a process is
linked on its first owner's first presence here and unlinked when its last owner holds
nothing, and its exit takes every one of its owners' presences.

A link is (pid, start time): a track naming a linked pid with another start time means the
linked process is gone and its pid was reused. Its owners' presences must leave before the
new process's presence joins (`stale`).

Pure: it decides which links and unlinks to make and whose presences leave; the shard sends
them and changes the state.
"""

from __future__ import annotations

from collections.abc import Iterable

from whosthere.errors import MalformedFrame
from whosthere.watch import PID_MAX, ProcessKey, is_owner, os_pid

Start = int | float | None  # a process's start time as its linker read it (None: unknown)


def check_owner(owner: int) -> None:
    """`MalformedFrame` unless `owner` can name an owner (`watch.identity`)."""
    if not is_owner(owner):
        raise MalformedFrame(
            f"an owner is an OS pid in 1..{PID_MAX}, with a serial or not; got {owner}"
        )


class OwnerLinks:
    def __init__(self, linked: dict[int, Start], owners: Iterable[int] = ()) -> None:
        """`linked`: OS pid -> the start time it was linked with (a restarted shard's, from
        its journal); `owners`: the owners that hold presences in the state."""
        self.linked = dict(linked)
        self._in_process: dict[int, set[int]] = {}  # OS pid -> its owners holding presences
        for owner in owners:
            self._in_process.setdefault(os_pid(owner), set()).add(owner)

    def stale(self, owner: int, start: Start) -> ProcessKey | None:
        """The process a track by `owner` (read with `start`) shows gone: its pid is linked
        with another start time. Its presences must leave first (`exited`); None if none."""
        process = os_pid(owner)
        if process not in self.linked:
            return None
        linked = self.linked[process]
        return None if linked == start else (process, linked)

    def joined(self, owner: int, start: Start) -> ProcessKey | None:
        """`owner` holds a presence now; the link to make if its process is new here."""
        process = os_pid(owner)
        owners = self._in_process.get(process)
        if owners is None:
            owners = self._in_process[process] = set()
        owners.add(owner)
        if process in self.linked:
            return None
        self.linked[process] = start
        return process, start

    def exited(self, pid: int, start: Start) -> set[int] | None:
        """ProcessKey `pid` (started at `start`) exited: its owners, whose presences leave.
        None if it is not linked here with that start (unlinked since, or an older
        process that had this pid)."""
        if pid not in self.linked or self.linked[pid] != start:
            return None
        del self.linked[pid]
        return self._in_process.pop(pid, set())

    def released(self, owner: int, *, holds_more: bool) -> ProcessKey | None:
        """`owner` left something; if it holds nothing more it is forgotten, and once no
        owner of its process holds anything, the link to undo."""
        if holds_more:
            return None
        process = os_pid(owner)
        owners = self._in_process.get(process)
        if owners is not None:
            owners.discard(owner)
            if owners:
                return None
            del self._in_process[process]
        if process not in self.linked:
            return None
        return process, self.linked.pop(process)

    def processes(self) -> list[ProcessKey]:
        """Every link, to make again (a restarted shard's owners)."""
        return list(self.linked.items())
