"""The supervisor: the node's root process. It starts the actors, restarts them, and links.

Process tree. `Node.start()` runs `python -m whosthere.supervisor CONFIG` in a new session; the
supervisor starts each actor as `python -m whosthere.actors.boot SPEC`. Both are fresh
interpreters (fork immediately followed by exec, as multiprocessing's spawn does, but without
re-importing the user's `__main__` in every actor). Actors die with the supervisor
(PR_SET_PDEATHSIG); the supervisor stops the node when the process that started it exits.

Restarts are one-for-one, with OTP's intensity rule: more than `max_restarts` restarts within
`max_seconds` and the node stops, reporting `RestartIntensityExceeded` to the Node.

Links. Any process may `Link` OS processes (pid + start time); the supervisor watches them with
a `ProcessWatcher` and pushes `ProcessesExited` to each linker when one exits, once, however
it exits. A linker that has gone away loses its links at the next push.

The Node learns of readiness and of a failure through a pipe (`ready_fd`): one JSON line.

A fixed address (`Node(address=...)`). The Node claims it (`transport.client_door.claim`:
the lock beside it, and the socket bound, 0600) and hands both fds over; the supervisor's
mailbox takes the listening socket as a second endpoint (actors keep dialling the one in the
runtime directory), holds the lock for its life, and gives the door back as it stops.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq

from whosthere.actors.base import Actor, ActorSpec
from whosthere.actors.boot import setup_logging, signal_wakeup_fd
from whosthere.config import NodeConfig
from whosthere.errors import (
    NodeStartError,
    RestartIntensityExceeded,
    WhosthereError,
    from_wire,
)
from whosthere.node_events import tell_error, tell_ready
from whosthere.topology import SUPERVISOR, Topology
from whosthere.transport import runtime_dir
from whosthere.transport.client_door import ClientDoor
from whosthere.transport.messages import (
    ActorFailed,
    ActorReady,
    GetStatus,
    Link,
    Lookup,
    ProcessesExited,
    Shutdown,
    Unlink,
)
from whosthere.watch import ProcessKey, ProcessWatcher, start_time
from whosthere.watch.link_table import LinkTable, process_key

STOP_GRACE_S = 1.0  # after SIGTERM, actors get this long before SIGKILL


@dataclass
class Child:
    """One actor slot in the tree (it survives the actor's restarts)."""

    spec: ActorSpec
    proc: subprocess.Popen[bytes] | None = None
    key: ProcessKey | None = None  # the running incarnation's identity
    ready: bool = False  # reported ActorReady since its last start
    restarts: int = 0
    exits: list[int | None] = field(default_factory=list)  # exit codes, newest last


def node_children(topology: Topology, supervisor_pid: int) -> list[ActorSpec]:
    """The actors of a node, as its topology lists them."""
    config = topology.config
    return [
        ActorSpec(
            name=role.name,
            actor=role.actor,
            endpoint=topology.endpoint(role.name),
            runtime_dir=config.runtime_dir,
            supervisor=topology.supervisor,
            parent_pid=supervisor_pid,
            node_name=config.name,
            log_level=config.log_level,
            index=role.index,
            config=config,
        )
        for role in topology.roles()
    ]


class Supervisor(Actor):
    handles = (ActorReady, ActorFailed, Lookup, GetStatus, Link, Unlink, Shutdown)

    def __init__(
        self, spec: ActorSpec, ready_fd: int, lock_fd: int, door: ClientDoor | None = None
    ) -> None:
        super().__init__(spec)
        self.door = door  # the fixed address's socket and lock, held for life (None: none)
        self.config = spec.node
        self.topology = Topology(self.config)
        self.address = self.topology.address
        self.ready_fd = ready_fd  # pipe to the Node: one JSON line
        self.lock_fd = lock_fd  # holds the runtime directory's lock
        self.children = {c.name: Child(c) for c in node_children(self.topology, os.getpid())}
        self.by_key: dict[ProcessKey, Child] = {}
        self.restart_times: collections.deque[float] = collections.deque()
        self.watcher = ProcessWatcher(max_pidfds=self.config.max_pidfds)
        self.parent_key: ProcessKey = (spec.parent_pid, start_time(spec.parent_pid))
        self.links = LinkTable()
        self.booted = False
        self.stopping = False
        self.failure: WhosthereError | None = None
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------

    def bind(self) -> None:
        """The mailbox in the runtime directory, and the fixed address's socket if any
        (given to ZeroMQ as is, `ZMQ_USE_FD`: it binds nothing and never unlinks it)."""
        super().bind()
        if self.door is not None:
            self.mailbox.setsockopt(zmq.USE_FD, self.door.listen_fd)
            try:
                self.mailbox.bind(self.door.address)
            finally:
                self.mailbox.setsockopt(zmq.USE_FD, -1)
            self.door.listen_fd = -1  # ZeroMQ's now: it closes it with the mailbox

    def on_start(self) -> None:
        self.add_reader(self.watcher.fileno(), self._on_exits)
        self.watcher.watch(self.parent_key)
        for child in self.children.values():
            self._spawn(child)
        self.call_later(self.config.boot_timeout, self._boot_deadline)

    def on_terminate(self) -> None:
        self.shutdown("SIGTERM")

    def on_stop(self) -> None:
        for child in self.children.values():  # normally all reaped by now
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        self.watcher.close()
        if self.failure is not None:
            tell_error(self.ready_fd, self.failure)
        with contextlib.suppress(OSError):
            os.close(self.ready_fd)
        runtime_dir.remove(Path(self.spec.runtime_dir))
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)
        if self.door is not None:
            self.door.release()

    def shutdown(self, reason: str) -> None:
        """Stop every actor (SIGTERM, then SIGKILL after STOP_GRACE_S), then stop."""
        if self.stopping:
            return
        self.stopping = True
        self.log.info("supervisor: stopping node %s (%s)", self.spec.node_name, reason)
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        self.call_later(STOP_GRACE_S, self._kill_stragglers)
        self._stop_when_children_gone()

    def fail(self, error: WhosthereError) -> None:
        self.log.error("supervisor: %s", error)
        if self.failure is None:
            self.failure = error
        self.shutdown(type(error).__name__)

    # -- messages --------------------------------------------------------------------------

    def on_actor_ready(self, msg: ActorReady) -> None:
        child = self.children.get(msg.name)
        if child is None or child.proc is None or child.proc.pid != msg.pid:
            self.log.warning("supervisor: ready from unknown actor %s[%d]", msg.name, msg.pid)
            return
        child.ready = True
        if not self.booted and all(c.ready for c in self.children.values()):
            self.booted = True
            tell_ready(self.ready_fd)

    def on_actor_failed(self, msg: ActorFailed) -> None:
        """An actor cannot serve, for a reason the user must hear: the node stops with it."""
        child = self.children.get(msg.name)
        if child is None or child.proc is None or child.proc.pid != msg.pid:
            self.log.warning("supervisor: failure from unknown actor %s[%d]", msg.name, msg.pid)
            return
        self.fail(from_wire(msg.kind, msg.message))

    def on_lookup(self, msg: Lookup) -> dict[str, Any]:
        settings = {
            "pool_size": self.config.pool_size,
            "meta_limit": self.config.meta_limit,
            # a fixed address: a node may serve it again after this one (clients wait for it)
            "stable": self.config.address is not None,
        }
        return {
            "name": self.config.name,
            "address": self.address,
            "endpoints": self.topology.endpoints(),
            "settings": settings,
            "pid": os.getpid(),  # clients watch it (client.SupervisorWatch)
            "start_time": start_time(os.getpid()),
        }

    def on_get_status(self, msg: GetStatus) -> dict[str, Any]:
        actors = [
            {
                "name": name,
                "pid": c.proc.pid if c.proc is not None else None,
                "restarts": c.restarts,
                "ready": c.ready,
            }
            for name, c in self.children.items()
        ]
        return {
            "name": self.spec.node_name,
            "address": self.address,
            "supervisor": {"pid": os.getpid(), "uptime": round(time.time() - self.started_at, 3)},
            "actors": actors,
            "config": self.config.to_json(),  # every option in force, defaults included
            "links": {
                "processes": len(self.links),
                "linkers": len(self.links.linked),
                **self.watcher.stats(),
            },
        }

    def on_shutdown(self, msg: Shutdown) -> None:
        self.shutdown(msg.reason or "requested")

    def on_link(self, msg: Link) -> int:
        linker = self.sender
        gone = []
        for pid, start in [process_key(item) for item in msg.pids]:
            if start is None:  # the linker found it gone already
                gone.append([pid, None])
                continue
            self.watcher.watch((pid, start))
            self.links.link((pid, start), linker)
        if gone:
            self._notify({linker: gone})
        return len(msg.pids)

    def on_unlink(self, msg: Unlink) -> int:
        linker = self.sender
        for pid, start in [process_key(item) for item in msg.pids]:
            if start is not None and self.links.unlink((pid, start), linker):
                self._unwatch((pid, start))
        return len(msg.pids)

    # -- exits -----------------------------------------------------------------------------

    def _on_exits(self) -> None:
        """Handle a batch of exits, each on its own: the watcher reports an exit once, so
        one that raises is logged and the others are still handled and told to their
        linkers (an exit lost here would leave its presences tracked for ever)."""
        keys = self.watcher.collect()
        notices = self.links.exited_many(keys)  # pure: decided before anything can fail
        for key in keys:
            try:
                self._exited(key)
            except Exception:
                self.log.exception("supervisor: handling the exit of process %d failed", key[0])
        if notices:
            self._notify({linker: [list(k) for k in told] for linker, told in notices.items()})

    def _exited(self, key: ProcessKey) -> None:
        """What an exit means to the tree itself: an actor to restart, or the parent gone."""
        child = self.by_key.pop(key, None)
        if child is not None:
            self._child_exited(child)
        if key == self.parent_key:
            self.shutdown(f"parent process {key[0]} exited")

    def _notify(self, notices: dict[bytes, list[list[Any]]]) -> None:
        """Push each linker its exits; one that fails is logged and the others still hear."""
        for linker, exits in notices.items():
            try:
                self._notify_one(linker, exits)
            except Exception:
                self.log.exception("supervisor: telling a linker of %d exit(s) failed", len(exits))

    def _notify_one(self, linker: bytes, exits: list[list[Any]]) -> None:
        if not self.push(linker, ProcessesExited(exits, time.time())):
            self.log.info(
                "supervisor: linker gone, dropping its %d link(s)",
                len(self.links.linked.get(linker, ())),
            )
            for key in self.links.drop_linker(linker):
                self._unwatch(key)

    def _unwatch(self, key: ProcessKey) -> None:
        """Nobody links `key` any more: stop watching it, unless it is ours to watch."""
        if key not in self.by_key and key != self.parent_key:
            self.watcher.unwatch(key)

    def _child_exited(self, child: Child) -> None:
        assert child.proc is not None
        code = child.proc.wait()
        child.exits.append(code)
        child.key = None
        child.ready = False
        name = child.spec.name
        if self.stopping:
            self._stop_when_children_gone()
            return
        if not self.booted:
            self.fail(NodeStartError(f"actor {name!r} exited with code {code} during boot"))
            return
        now = time.monotonic()
        self.restart_times.append(now)
        while self.restart_times and self.restart_times[0] < now - self.config.max_seconds:
            self.restart_times.popleft()
        limit = self.config.max_restarts
        if len(self.restart_times) > limit:
            self.fail(
                RestartIntensityExceeded(
                    f"actor {name!r} exited with code {code}: {len(self.restart_times)} restarts "
                    f"within {self.config.max_seconds:g} s exceed max_restarts={limit}; "
                    f"node {self.spec.node_name!r} stopped"
                )
            )
            return
        self.log.warning(
            "supervisor: actor %r (pid %d) exited with code %s; restarting",
            name,
            child.proc.pid,
            code,
        )
        child.restarts += 1
        try:
            self._spawn(child)
        except OSError as exc:  # e.g. out of processes or memory
            self.fail(NodeStartError(f"actor {name!r} could not be restarted: {exc}"))

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        spec = replace(child.spec, incarnation=child.restarts)
        argv = [sys.executable, "-m", "whosthere.actors.boot", json.dumps(spec.to_json_dict())]
        child.proc = subprocess.Popen(argv, close_fds=True)
        child.key = (child.proc.pid, start_time(child.proc.pid))
        self.by_key[child.key] = child
        self.watcher.watch(child.key)

    def _boot_deadline(self) -> None:
        if not self.booted and not self.stopping:
            late = [n for n, c in self.children.items() if not c.ready]
            self.fail(NodeStartError(f"actor(s) {', '.join(late)} did not report ready in time"))

    def _kill_stragglers(self) -> None:
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                self.log.warning(
                    "supervisor: actor %r did not stop in %.1f s; killing it",
                    child.spec.name,
                    STOP_GRACE_S,
                )
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()

    def _stop_when_children_gone(self) -> None:
        if all(c.key is None for c in self.children.values()):
            self.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m whosthere.supervisor ARGS_JSON`: {"config", "parent_pid", "ready_fd",
    "lock_fd", "door"}, as `Node.start()` passes them ("door": a `ClientDoor`, or None)."""
    args = json.loads((sys.argv[1:] if argv is None else argv)[0])
    config = NodeConfig.from_json(args["config"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the Node's process
    setup_logging("supervisor", config.log_level)
    spec = ActorSpec(
        name=SUPERVISOR,
        actor="whosthere.supervisor:Supervisor",
        endpoint=Topology(config).supervisor,
        runtime_dir=config.runtime_dir,
        supervisor="",
        parent_pid=args["parent_pid"],
        node_name=config.name,
        log_level=config.log_level,
        config=config,
    )
    door = ClientDoor.from_json(args["door"]) if args.get("door") else None
    Supervisor(spec, args["ready_fd"], args["lock_fd"], door).run(signal_wakeup_fd())


if __name__ == "__main__":
    main()
