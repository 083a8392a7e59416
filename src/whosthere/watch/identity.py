"""Process identity: a pid plus the process's start time, which a reused pid does not share;
and owners, many per OS process, each an int that names its OS pid."""

from __future__ import annotations

import sys
from typing import TypeGuard

import psutil

# (pid, start time as `start_time` read it: None if the process was gone then)
ProcessKey = tuple[int, int | float | None]
PID_MAX = 1 << 22  # the largest pid_max Linux allows

# An owner is `serial << OWNER_SHIFT | pid`: serial 0 is the whole OS process (a bare pid is
# the owner it always was), serials 1.. are the lightweight owners made in that process.
OWNER_SHIFT = 32
OWNER_SERIALS = 1 << 29  # serials per process (owners stay below 2**61, as peers accept)
_PID_BITS = (1 << OWNER_SHIFT) - 1


def owner_of(pid: int, serial: int) -> int:
    """The owner `serial` of OS process `pid` (`serial` 0: the process itself)."""
    return serial << OWNER_SHIFT | pid


def os_pid(owner: int) -> int:
    """The OS process an owner lives in: what is linked, and whose exit takes it away."""
    return owner & _PID_BITS


def describe_owner(owner: int) -> str:
    """An owner as its user knows it, for messages and reprs: "pid 1234" for an OS process,
    "owner 3 of pid 1234" for one that `presence.owner()` made; never the packed number."""
    serial = owner >> OWNER_SHIFT
    return f"owner {serial} of pid {owner & _PID_BITS}" if serial else f"pid {owner}"


def is_owner(value: object) -> TypeGuard[int]:
    """Whether `value` can name an owner: an OS pid, or one with a serial."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value > 0
        and value >> OWNER_SHIFT < OWNER_SERIALS
        and 0 < value & _PID_BITS <= PID_MAX
    )


def is_pid(value: object) -> bool:
    """Whether `value` can be an OS pid (an int, not a bool, in 1..PID_MAX)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= PID_MAX


_LINUX = sys.platform.startswith("linux")


def start_time(pid: int) -> int | float | None:
    """The start time of the living process `pid`, or None if it is gone or a zombie.

    On Linux the kernel's start time in clock ticks since boot (exact); elsewhere psutil's
    create_time.
    """
    if _LINUX:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError:
            return None
        fields = data[data.rfind(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):  # state: exited, not yet reaped
            return None
        return int(fields[19])  # field 22 of stat: starttime
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def is_same_living(key: ProcessKey) -> bool:
    """Whether the process named by `key` is still alive (not exited, pid not reused)."""
    return start_time(key[0]) == key[1]
