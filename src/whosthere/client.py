"""Finding a running node from any process: its address and what its actors listen on.

`Lookup` also names the supervisor (pid and start time), which every client then watches
(`SupervisorWatch`): when it dies it takes the node down, and a call waiting for a reply
would otherwise wait out its whole timeout, a subscription forever. On Linux a pidfd is
polled beside each reply socket, so calls fail the moment it exits; elsewhere the process
table is checked every `sockets.GUARD_POLL` seconds. The start time guards against a reused
pid: a process that has the pid but not the start time is not the supervisor.

The wrong kind of address fails at once, not after the call's timeout: a tcp:// (cluster)
address or a file that is no socket before dialling (`check_client_address`), and a socket
that answers `Lookup` with anything but a node's reply (an actor's mailbox answers with an
error) once it answers (`door_answers`, `node_info`). Both lookups, sync and asyncio, go
through these. A path where nothing is yet is left to the timeout: a node may be starting.
"""

from __future__ import annotations

import os
import select
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from whosthere.errors import NodeUnavailable, WhosthereError
from whosthere.transport import forks
from whosthere.transport.client_address import IPC, client_address_problem, ipc_path
from whosthere.transport.messages import Lookup
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Dealer
from whosthere.watch import start_time

ADDRESS_ENV = "WHOSTHERE_ADDRESS"
_LOOKUP_KEYS = {"name", "address", "endpoints", "settings"}  # a node's `Lookup` reply has them


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

    One per node address in a process, shared by its clients (`watch_supervisor`). At a
    fixed address (`stable`) a node may serve again after this one: the watch is then
    re-armed on the new supervisor (`rearm`, by `revival.Revival`), keeping its file
    descriptor's number, so every poller that holds it watches the new one. Its listeners
    hear the node go and come back (`listen`)."""

    def __init__(
        self, pid: int, started: int | float, address: str = "", stable: bool = False
    ) -> None:
        self.pid = pid
        self.started = started  # the supervisor's start time, as `watch.start_time` reads it
        self.address = address
        self.stable = stable  # a fixed address: a node may come back there
        self.exited = False  # seen gone: stays so until re-armed
        self.generation = 0  # re-armings so far
        self.endpoints: dict[str, str] = {}  # what the node's `Lookup` named (re-arm checks)
        self.settings: dict[str, Any] = {}
        self.changed: str | None = None  # a node came back unlike this one: why, for errors
        self.listeners: weakref.WeakSet[Any] = weakref.WeakSet()  # node_gone / node_back
        self.lock = threading.Lock()
        self.revival: threading.Thread | None = None  # `revival.Revival`, once listened to
        self._forks = forks.generation
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
        if self._forks != forks.generation:  # a forked child: its own revival thread
            self._forks = forks.generation
            if self.revival is not None:
                self.listen(None)
        if not self.exited:
            if self._fd is not None:  # poll, not select(): the fd may be numbered past 1024
                poller = select.poll()
                poller.register(self._fd, select.POLLIN)
                self.exited = bool(poller.poll(0))
            else:
                self.exited = start_time(self.pid) != self.started
        if self.exited:
            raise NodeUnavailable(self.why())

    def why(self) -> str:
        """What a call made while the node is gone is told."""
        if self.changed is not None:
            return self.changed
        text = f"the node's supervisor (pid {self.pid}) has exited"
        if self.stable:
            text += f"; waiting for a node to serve {self.address} again"
        return text

    def rearm(self, pid: int, started: int | float) -> None:
        """Watch the supervisor of the node that serves the address now, on the same fd."""
        with self.lock:
            if self._fd is not None:
                new = os.pidfd_open(pid)
                os.dup2(new, self._fd, inheritable=False)
                os.close(new)
            self.pid, self.started = pid, started
            self.generation += 1
            self.exited = start_time(pid) != started

    def unlisten(self, listener: Any) -> None:
        """`listener` is closed: it hears nothing more."""
        with self.lock:
            self.listeners.discard(listener)

    def listen(self, listener: Any | None) -> None:
        """`listener.node_gone()` and `listener.node_back()` are called (from the revival
        thread) when the node goes and when one serves the address again."""
        if listener is not None:
            with self.lock:
                self.listeners.add(listener)
        if self.stable:
            from whosthere.revival import ensure_revival  # noqa: PLC0415 (it imports this)

            ensure_revival(self)


# address -> the watch this process's clients share, while any client holds it
_watches: weakref.WeakValueDictionary[str, SupervisorWatch] = weakref.WeakValueDictionary()
_watches_lock = threading.Lock()


def watch_supervisor(address: str, reply: dict[str, Any]) -> SupervisorWatch | None:
    """A watch on the supervisor named in a `Lookup` reply, if it runs on this host: the one
    this process's other clients of that node share, or a new one."""
    pid, started = reply.get("pid"), reply.get("start_time")
    if not address.startswith(IPC) or not isinstance(pid, int) or started is None:
        return None  # another host (or an older node): calls keep their timeouts
    settings = reply.get("settings") or {}
    with _watches_lock:
        watch = _watches.get(address)
        if watch is None or (watch.pid, watch.started) != (pid, started):
            watch = SupervisorWatch(pid, started, address, bool(settings.get("stable")))
            watch.endpoints = dict(reply.get("endpoints") or {})
            watch.settings = dict(settings)
            _watches[address] = watch
        return watch


def _forget_watches_after_fork() -> None:
    global _watches_lock
    _watches.clear()
    _watches_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_watches_after_fork)


def resolve_address(address: str | None) -> str:
    """`address`, or `$WHOSTHERE_ADDRESS`, checked (`check_client_address`); raises
    `NodeUnavailable` if neither is set, or if it cannot be a node's client door."""
    address = address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise NodeUnavailable(f"no node address given and ${ADDRESS_ENV} is not set")
    check_client_address(address)
    return address


def check_client_address(address: str) -> None:
    """`NodeUnavailable` at once if `address` cannot be a node's client door: a tcp://
    (cluster) address, another scheme, or a path that is not a socket."""
    mode = None
    if address.startswith(IPC):
        try:
            mode = os.stat(ipc_path(address)).st_mode
        except OSError:  # nothing there yet (a node may be starting): the call waits
            mode = None
    problem = client_address_problem(address, mode)
    if problem is not None:
        raise NodeUnavailable(problem)


@contextmanager
def door_answers(address: str) -> Iterator[None]:
    """Around the `Lookup` call: an error answered (an actor's mailbox answers `Lookup`
    with one) says `address` is not a node's client door, and fails as `NodeUnavailable`."""
    try:
        yield
    except NodeUnavailable:
        raise
    except WhosthereError as exc:
        raise _not_a_door(address, f"{type(exc).__name__}: {exc}") from exc


def _not_a_door(address: str, answer: str) -> NodeUnavailable:
    return NodeUnavailable(
        f"{address} is not a node's client door (it answered Lookup with {answer}); clients "
        f"connect to the node's address (node.address, ${ADDRESS_ENV})"
    )


def lookup(address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> NodeInfo:
    """Ask the node at `address` for its endpoints. Raises `NodeUnavailable`."""
    address = resolve_address(address)
    dealer = Dealer(address, timeout=timeout, what="node")
    try:
        with door_answers(address):
            reply = dealer.call(Lookup())
    finally:
        dealer.close()
    return node_info(address, reply)


def node_info(address: str, reply: dict[str, Any]) -> NodeInfo:
    """What the `Lookup` reply of the node at `address` says, its supervisor watched;
    `NodeUnavailable` if it is no node's reply."""
    if not isinstance(reply, dict) or not reply.keys() >= _LOOKUP_KEYS:
        raise _not_a_door(address, repr(reply)[:80])
    return NodeInfo(
        reply["name"],
        reply["address"],
        dict(reply["endpoints"]),
        reply["settings"],
        watch_supervisor(address, reply),
    )
