"""`ShardLinks`: a shard's links to the processes that own its presences.

The supervisor monitors every process that owns a presence and tells the shards that linked
it (DESIGN section 1): a shard links a process (`Link`) on its first presence and unlinks it
(`Unlink`) after its last. That stays the rule, and covers every process. But the
supervisor's notice crosses one more ZeroMQ hop (two I/O threads and the shard's loop:
100-300 us on a small VM) after the supervisor's own wake-up, on the way to every leave. So
the shard also holds a pidfd on each process it links, up to `OWN_PIDFDS`, in one epoll its
loop polls: an owner's SIGKILL wakes the shard itself. Whichever notice comes first makes
the leave; the other finds the link gone (`OwnerLinks.exited` returns None) and does
nothing. Past the budget (or without pidfds) a process is not watched here: the supervisor's
notice alone serves it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from whosthere.transport.messages import Link, Unlink
from whosthere.transport.sockets import Dealer
from whosthere.watch import ProcessKey, ProcessWatcher
from whosthere.watch.watcher import FD_RESERVE, raise_fd_limit

OWN_PIDFDS = 4096  # processes a shard watches itself, at most
LINK_BATCH = 10_000  # processes per Link message (a restarted shard links them all again)


class ShardLinks:
    """Links through the supervisor, and the shard's own pidfds on them: when `fileno()` is
    readable, `read()` tells `exited(keys, seen_at)` which processes exited."""

    def __init__(
        self,
        supervisor: Dealer,
        exited: Callable[[list[ProcessKey], float], None],
        budget: int | None = None,
    ) -> None:
        """`budget`: pidfds at most (default `OWN_PIDFDS`, within the open-file limit)."""
        self.supervisor = supervisor
        self.exited = exited
        budget = OWN_PIDFDS if budget is None else budget
        budget = min(budget, max(0, raise_fd_limit() - FD_RESERVE))
        self.watcher = ProcessWatcher(max_pidfds=budget, sweep=False)

    def fileno(self) -> int:
        return self.watcher.fileno()

    def link(self, keys: list[ProcessKey]) -> None:
        for i in range(0, len(keys), LINK_BATCH):
            self.supervisor.cast(Link([list(key) for key in keys[i : i + LINK_BATCH]]))
        for key in keys:
            self.watcher.watch(key)

    def unlink(self, key: ProcessKey) -> None:
        self.supervisor.cast(Unlink([list(key)]))
        self.watcher.unwatch(key)

    def handled(self, keys: list[ProcessKey]) -> None:
        """These exits made their leaves (whoever told them first): no pidfd waits on them."""
        for key in keys:
            self.watcher.unwatch(key)

    def read(self) -> None:
        exits = self.watcher.collect()
        if exits:
            self.exited(exits, time.time())

    def close(self) -> None:
        self.watcher.close()
