"""Finding a running node from any process: its address and what its actors listen on.

`Lookup` also names the supervisor (pid and start time), which every client then watches
(`SupervisorWatch`): when it dies it takes the node down, and a call waiting for a reply
would otherwise wait out its whole timeout, a subscription forever. On Linux a pidfd is
polled beside each reply socket, so calls fail the moment it exits; elsewhere the process
table is checked every `sockets.GUARD_POLL` seconds. The start time guards against a reused
pid: a process that has the pid but not the start time is not the supervisor.
"""

from __future__ import annotations

import os
import select
import weakref
from dataclasses import dataclass, field
from typing import Any

from whosthere.errors import NodeUnavailable
from whosthere.transport.messages import Lookup
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Dealer
from whosthere.watch import start_time

ADDRESS_ENV = "WHOSTHERE_ADDRESS"


@dataclass(frozen=True)
class NodeInfo:
    """What `Lookup` tells a client about a node."""

    name: str
    address: str  # the supervisor's endpoint, which names the node
    endpoints: dict[str, str]  # actor name -> mailbox endpoint (and "pubsub_pub")
    settings: dict[str, Any] = field(default_factory=dict)  # pool_size, meta_limit, ...
    supervisor: SupervisorWatch | None = field(default=None, compare=False)  # None: unwatched


class SupervisorWatch:
    """Whether a node's supervisor still runs, named by (pid, start time); see module doc.

    Shared by the connections of one client; the pidfd closes when the watch is collected.
    """

    def __init__(self, pid: int, started: int | float) -> None:
        self.pid = pid
        self.started = started  # the supervisor's start time, as `watch.start_time` reads it
        self.exited = False  # seen gone: stays so
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux, or too old: the process table instead
            self._fd = None
        if self._fd is not None:
            weakref.finalize(self, os.close, self._fd)
        if start_time(pid) != started:  # gone already (the pidfd may name another process)
            self.exited = True

    def fileno(self) -> int | None:
        """The pidfd, readable once the supervisor has exited (None without pidfd)."""
        return self._fd

    def check(self) -> None:
        """Raise `NodeUnavailable` if the supervisor has exited."""
        if not self.exited:
            if self._fd is not None:
                self.exited = bool(select.select((self._fd,), (), (), 0)[0])  # thread-safe
            else:
                self.exited = start_time(self.pid) != self.started
        if self.exited:
            raise NodeUnavailable(f"the node's supervisor (pid {self.pid}) has exited")


def watch_supervisor(address: str, reply: dict[str, Any]) -> SupervisorWatch | None:
    """A watch on the supervisor named in a `Lookup` reply, if it runs on this host."""
    pid, started = reply.get("pid"), reply.get("start_time")
    if not address.startswith("ipc://") or not isinstance(pid, int) or started is None:
        return None  # another host (or an older node): calls keep their timeouts
    return SupervisorWatch(pid, started)


def resolve_address(address: str | None) -> str:
    """`address`, or `$WHOSTHERE_ADDRESS`; `NodeUnavailable` if neither is set."""
    address = address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise NodeUnavailable(f"no node address given and ${ADDRESS_ENV} is not set")
    return address


def lookup(address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> NodeInfo:
    """Ask the node at `address` for its endpoints. Raises `NodeUnavailable`."""
    address = resolve_address(address)
    dealer = Dealer(address, timeout=timeout, what="node")
    try:
        reply = dealer.call(Lookup())
    finally:
        dealer.close()
    return node_info(address, reply)


def node_info(address: str, reply: dict[str, Any]) -> NodeInfo:
    """What the `Lookup` reply of the node at `address` says, its supervisor watched."""
    return NodeInfo(
        reply["name"],
        reply["address"],
        dict(reply["endpoints"]),
        reply["settings"],
        watch_supervisor(address, reply),
    )
