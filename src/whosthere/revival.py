"""`Revival`: a node at a fixed address went away; notice when one serves it again.

Clients outlive a node restart (DESIGN section 12). A node with a fixed address keeps its
actors' endpoints from one start to the next (`runtime_dir.create`), so the clients'
ZeroMQ sockets reconnect by themselves; what they cannot know by themselves is that a new
node is there: their `Watched` names the old supervisor. One thread per watch (per
process and address) waits on the supervisor's pidfd, asleep, for the node's end; it tells
the watch's listeners, then tries the address (`PROBE_PERIODS`) until a node answers
`Lookup`. Then it re-arms the watch on the new supervisor and tells the listeners again:
the presence clients track their own presences again, the feeds watch the new pidfd.

A node that came back unlike the old one (another pool size, other endpoints) cannot be
served by the clients made for the old one: the watch then stays down, and its calls say
why (connect anew).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import Any, Protocol

from whosthere.errors import WhosthereError
from whosthere.transport.client_address import ipc_path
from whosthere.transport.messages import Lookup
from whosthere.transport.sockets import GUARD_POLL, Dealer
from whosthere.watch import start_time

log = logging.getLogger("whosthere.client")

# seconds between two tries of the address while the node is gone, by how long it has been
# gone: a restart is back within seconds; a node gone for good costs a try a second
PROBE_PERIODS = ((5.0, 0.1), (60.0, 0.25), (float("inf"), 1.0))
LOOKUP_TIMEOUT = 2.0  # seconds a node that accepted the connection has to answer `Lookup`
SAME = ("pool_size", "meta_limit")  # settings a client's routing depends on


class Watched(Protocol):
    """What a revival reads and re-arms of a `client.SupervisorWatch` (which starts it)."""

    pid: int
    started: int | float
    address: str
    exited: bool
    endpoints: dict[str, str]
    settings: dict[str, Any]
    changed: str | None
    listeners: Any
    lock: threading.Lock
    revival: threading.Thread | None

    def fileno(self) -> int | None: ...
    def rearm(self, pid: int, started: int | float) -> None: ...


def ensure_revival(watch: Watched) -> None:
    """Start the watch's revival thread in this process, once."""
    with watch.lock:
        thread = watch.revival
        if isinstance(thread, Revival) and thread.pid == os.getpid() and thread.is_alive():
            return
        thread = watch.revival = Revival(watch)
    thread.start()


class Revival(threading.Thread):
    """The thread that waits for a node's end and for a node at its address again."""

    def __init__(self, watch: Watched) -> None:
        super().__init__(name="whosthere-revival", daemon=True)
        self.watch = watch
        self.pid = os.getpid()

    def run(self) -> None:
        watch = self.watch
        while True:
            self._wait_for_the_end()
            watch.exited = True
            self._tell("node_gone")
            while True:  # until a node is back and watched (it may die before it is)
                reply = self._wait_for_a_node()
                if reply is None:
                    return
                problem = _unlike(watch, reply)
                if problem is not None:
                    watch.changed = problem
                    log.error("whosthere: %s", problem)
                    self._tell("node_gone")
                    return
                try:
                    watch.rearm(reply["pid"], reply["start_time"])
                except OSError as exc:  # gone again already, or out of descriptors
                    log.warning("whosthere: cannot watch the node at %s: %s", watch.address, exc)
                    continue
                break
            log.info("whosthere: a node serves %s again (pid %s)", watch.address, watch.pid)
            self._tell("node_back")

    def _wait_for_the_end(self) -> None:
        watch = self.watch
        while True:
            fd = watch.fileno()
            if fd is not None:
                poller = select.poll()  # not select(): a pidfd may be numbered past 1024
                poller.register(fd, select.POLLIN)
                poller.poll()
            else:
                time.sleep(GUARD_POLL)
            if start_time(watch.pid) != watch.started:
                return

    def _wait_for_a_node(self) -> dict[str, Any] | None:
        """The `Lookup` reply of a new node at the address; None once no client listens."""
        path = ipc_path(self.watch.address)
        gone_at = time.monotonic()
        while True:
            time.sleep(probe_period(time.monotonic() - gone_at))
            if not self.watch.listeners:
                with self.watch.lock:
                    self.watch.revival = None
                return None
            if not _listening(path):
                continue
            try:
                dealer = Dealer(self.watch.address, timeout=LOOKUP_TIMEOUT, what="node")
            except Exception as exc:  # out of descriptors, say: try again later
                log.warning("whosthere: cannot reach %s: %s", self.watch.address, exc)
                continue
            try:
                reply = dealer.call(Lookup())
            except WhosthereError:
                continue
            finally:
                dealer.close()
            if isinstance(reply, dict) and (reply.get("pid"), reply.get("start_time")) != (
                self.watch.pid,
                self.watch.started,
            ):
                return reply

    def _tell(self, what: str) -> None:
        """Each listener's `what`; the feeds last: a subscription that hears of the new node
        and lists finds the presences this process tracked again."""
        with self.watch.lock:  # clients come and go meanwhile
            listeners = list(self.watch.listeners)
        listeners.sort(key=lambda x: getattr(x, "tell_last", False))
        for listener in listeners:
            try:
                getattr(listener, what)()
            except Exception:  # one client's failure must not stop the others' news
                log.exception("whosthere: %s of %r failed", what, listener)


def probe_period(gone_for: float) -> float:
    """Seconds until the next try of the address, the node gone for `gone_for` seconds."""
    return next(period for until, period in PROBE_PERIODS if gone_for < until)


def _listening(path: str) -> bool:
    """Whether something accepts connections at the ipc path (a stale file refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _unlike(watch: Watched, reply: dict[str, Any]) -> str | None:
    """Why clients made for the old node cannot use the new one (None: they can)."""
    settings = reply.get("settings") or {}
    changed = [k for k in SAME if settings.get(k) != watch.settings.get(k)]
    if dict(reply.get("endpoints") or {}) != watch.endpoints:
        changed.append("actors")
    if not changed:
        return None
    return (
        f"the node serving {watch.address} again differs from the one this client was made "
        f"for ({', '.join(changed)}); connect anew"
    )
