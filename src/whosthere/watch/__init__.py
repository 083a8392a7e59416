"""Owner watching: learn when arbitrary OS processes exit, however they exit.

One small interface (`ProcessWatcher`) over two mechanisms, chosen per process: a pidfd in one
epoll on Linux (exact and immediate), and a sweeping thread (`sweep.Sweeper`) for platforms
without pidfd and for processes beyond the open-file limit. A watched process is named by
(pid, start_time) so that a reused pid is never mistaken for the process that died.
"""

from whosthere.watch.identity import (
    PID_MAX,
    ProcessKey,
    describe_owner,
    is_owner,
    is_pid,
    os_pid,
    owner_of,
    start_time,
)
from whosthere.watch.watcher import ProcessWatcher

__all__ = [
    "PID_MAX",
    "ProcessKey",
    "ProcessWatcher",
    "describe_owner",
    "is_owner",
    "is_pid",
    "os_pid",
    "owner_of",
    "start_time",
]
