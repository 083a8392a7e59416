"""What names an owner of presences on the wire, in both clients: `OwnerIdentity`.

An owner is an OS pid and a serial (`watch.identity`: `serial << 32 | pid`, a bare pid is
serial 0). `presence.Owner` and `aio.presence.AsyncOwner` add only how they close (a call, or
an awaitable); what they are on the wire, and the start time of their process that the node
links, is here.
"""

from __future__ import annotations

import itertools
import os

from whosthere.transport.messages import StartTime
from whosthere.watch import describe_owner, os_pid, owner_of, start_time
from whosthere.watch.identity import OWNER_SERIALS


class OwnerIdentity:
    """An owner's OS pid and its id (unique on the host while the process lives)."""

    __slots__ = ("closed", "id", "pid")

    def __init__(self) -> None:
        serial = next(_serials)
        if serial >= OWNER_SERIALS:
            raise OverflowError(f"a process makes at most {OWNER_SERIALS} owners")
        self.pid = _Process.pid  # the OS process: its exit takes the owner's presences away
        self.id = owner_of(self.pid, serial)  # what the wire carries
        self.closed = False  # its presences were untracked whole (`close`)

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"<{type(self).__name__}: {describe_owner(self.id)}{state}>"


_serials = itertools.count(1)  # owners made in this process (0 is the process itself)


class _Process:
    """This process's pid and start time, read once (a track should cost neither a syscall
    nor a read of /proc); a forked child reads its own (`os.register_at_fork`)."""

    pid = os.getpid()
    start: StartTime = None
    start_read = False  # `start` is known (None is a start time too: no /proc entry)

    @classmethod
    def forked(cls) -> None:
        cls.pid, cls.start, cls.start_read = os.getpid(), None, False


os.register_at_fork(after_in_child=_Process.forked)


def start_of(owner: int) -> StartTime:
    """The start time of the owner's OS process, as the node links it. This process's own
    (every `Owner` made here) is read once."""
    pid = os_pid(owner)
    if pid != _Process.pid:
        return start_time(pid)
    if not _Process.start_read:
        _Process.start, _Process.start_read = start_time(pid), True
    return _Process.start
