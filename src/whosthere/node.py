"""`Node`: start, reach and stop a whosthere node from the process that owns it."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from whosthere.admin import depart, node_status
from whosthere.config import ClusterConfig, NodeConfig
from whosthere.errors import NodeStartError, NodeUnavailable, WhosthereError
from whosthere.links import Links
from whosthere.loading import class_ref
from whosthere.node_events import EventReader
from whosthere.presence import Presence
from whosthere.pubsub import PubSub
from whosthere.topology import Topology
from whosthere.tracker.departure import GOODBYE_FOR_S
from whosthere.tracker.options import TrackerOptions
from whosthere.transport import client_door, runtime_dir
from whosthere.transport.cookie import COOKIE_ENV
from whosthere.transport.engine_url import ENGINE_ENV
from whosthere.transport.sockets import DEFAULT_TIMEOUT
from whosthere.workers import Workers

__all__ = ["Node", "node_status"]

log = logging.getLogger("whosthere.node")

STOP_TIMEOUT = 2.0  # seconds Node.stop() waits before killing the process group...
# ...after the goodbye (`permdown_on_shutdown`): the shards answer once every peer has
# acknowledged it or their window has passed, and the answer gets this margin to come
DEPART_TIMEOUT = GOODBYE_FOR_S + 0.5


def _presence_config(cls: type) -> dict[str, Any]:
    """What the node's processes need to know of the user's Presence subclass."""
    if not (isinstance(cls, type) and issubclass(cls, Presence)):
        raise TypeError(f"presence must be a whosthere.Presence subclass, got {cls!r}")
    return {
        "presence": class_ref(cls),
        "custom_fetch": cls.fetch is not Presence.fetch,
        # the presence client actor runs when either callback is defined (init alone runs once)
        "presence_client": any(hasattr(cls, name) for name in ("init", "handle_metas")),
    }


class Node:
    """A whosthere node: a supervisor process and its actors, started from this process.

    Use it as a context manager, or call `start()` and `stop()`. Other processes on the host
    reach it through `address` (workers from `spawn` have it in `$WHOSTHERE_ADDRESS`).
    """

    def __init__(
        self,
        presence: type | None = None,
        pool_size: int = NodeConfig.pool_size,
        name: str | None = None,
        listen: str | None = None,
        peers: tuple[str, ...] | list[str] = (),
        *,
        max_restarts: int = NodeConfig.max_restarts,
        max_seconds: float = NodeConfig.max_seconds,
        start_timeout: float = NodeConfig.start_timeout,
        call_timeout: float = DEFAULT_TIMEOUT,
        pubsub_hwm: int = NodeConfig.pubsub_hwm,
        max_pidfds: int | None = NodeConfig.max_pidfds,
        fetchers: int = NodeConfig.fetchers,
        fetch_timeout: float = NodeConfig.fetch_timeout,
        meta_limit: int = NodeConfig.meta_limit,
        log_level: str | None = None,
        durable: bool = NodeConfig.durable,
        cookie: str | None = None,
        advertise: str | None = None,
        discovery_period: float = ClusterConfig.discovery_period,
        address: str | None = None,
        engine: str | None = None,
        **tracker_options: Any,
    ) -> None:
        """Configure a node; nothing starts before `start()`.

        Args:
            presence: the `Presence` subclass bound to `node.presence` (default: Presence).
                Its `fetch`, `init` and `handle_metas` run in the node's processes, which
                import it: define it at module level.
            pool_size: number of tracker shards (must match on every node of a cluster).
            name: node name (default: host name and a random suffix).
            address: a fixed `ipc:///abs/path.sock` where clients reach the node (its
                socket made 0600 at `start()`, with a `.lock` file beside it), so clients
                started before or after it, and a node restarted, meet there. Its directory
                must exist. Default: a socket in the node's fresh runtime directory, new at
                each start. (A tcp:// address is `listen`'s, for peers: refused here.)
            listen: `tcp://host:port` where this node accepts peers (port 0: any free one);
                without it the node is alone.
            peers: where other nodes are found (a node needs only one; the cluster meshes
                itself): their listen addresses `tcp://HOST:PORT`; `dns:NAME:PORT`, every A
                and AAAA record of NAME dialled at PORT (a Kubernetes headless service);
                `srv:NAME`, each SRV record's host at its port. Names are resolved every
                `discovery_period` through the system's resolver (`/etc/hosts`,
                `/etc/resolv.conf`); a name that does not resolve is logged and tried
                again; the node's own address is skipped; an address that leaves DNS is no
                longer dialled once silent for the permdown period. With `listen` and no
                peers: `$WHOSTHERE_PEERS`, comma-separated, if set.
            cookie: the cluster secret (default `$WHOSTHERE_COOKIE`); traffic between nodes
                is CURVE-authenticated with keys derived from it. Without one, `listen`
                must be a loopback address.
            advertise: the `tcp://host:port` peers are told to dial, when it is not `listen`
                (a wildcard such as `tcp://0.0.0.0:7000`, or an address behind NAT); port 0:
                the port bound.
            discovery_period: seconds between two resolutions of the `dns:` and `srv:`
                names among `peers`.
            engine: a Redis server carrying everything between nodes instead of the mesh:
                `redis://[:password@]host:port/db` (`rediss://` for TLS, `unix:///path.sock`;
                `pip install 'whosthere[redis]'`). Nodes reach only Redis and find each
                other there; names on one Redis must be unique. Exclusive with `listen`.
                Default: `$WHOSTHERE_ENGINE_URL` when no `listen` is given (a password is
                better there than on a command line, which every user of the host reads).
            max_restarts, max_seconds: restart intensity, as OTP's: more than `max_restarts`
                actor restarts within `max_seconds` stops the node.
            start_timeout: seconds `start()` waits for every actor to be ready.
            call_timeout: seconds any request to the node may take before `NodeUnavailable`.
            pubsub_hwm: messages queued per subscriber before it starts losing messages.
            max_pidfds: cap on pidfds used to watch linked processes (default: what the open
                file limit allows); processes beyond it are watched by sweeping.
            fetchers: fetcher worker processes that run `fetch` on diffs.
            fetch_timeout: seconds a diff waits for its `fetch` before it is published as is.
            meta_limit: largest packed meta accepted, in bytes (`InvalidMeta` beyond).
            log_level: the actors' log level (default `$WHOSTHERE_LOG_LEVEL` or WARNING).
            durable: each shard journals what it acknowledges (in the node's runtime
                directory) and a crashed shard comes back with it, as the same replica.
                With `durable=False` a restarted shard starts empty, as a new replica
                (faster by a few per cent; see bench/README.md).
            tracker_options: the replication periods (`broadcast_period`, `down_period`...),
                checked now and used once nodes form a cluster; each is described on
                `whosthere.tracker.options.TrackerOptions`.
        """
        self.cookie = cookie if cookie is not None else os.environ.get(COOKIE_ENV)
        if engine is None and listen is None:
            engine = os.environ.get(ENGINE_ENV) or None
        cluster = ClusterConfig.create(
            listen, peers, self.cookie, advertise, discovery_period, engine=engine
        )
        self._engine_url = engine  # with its password: to the supervisor by environment
        self.presence_class: type[Presence] = presence or Presence
        config = NodeConfig(  # the node's own options are checked first, then the tracker's
            name=name or NodeConfig.default_name(),
            pool_size=pool_size,
            fetchers=fetchers,
            fetch_timeout=fetch_timeout,
            meta_limit=meta_limit,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            start_timeout=start_timeout,
            pubsub_hwm=pubsub_hwm,
            max_pidfds=max_pidfds,
            log_level=NodeConfig.default_log_level(log_level),
            durable=durable,
            cluster=cluster,
            address=address,
        )
        self.config = replace(
            config,
            tracker=TrackerOptions.from_options(tracker_options),
            **_presence_config(self.presence_class),
        )
        self.call_timeout = call_timeout
        self.runtime_dir: Path | None = None
        self._address: str | None = None
        self._door: client_door.ClientDoor | None = None  # the fixed address, while claimed
        self._proc: subprocess.Popen[bytes] | None = None
        self._events: EventReader | None = None  # the supervisor's pipe
        self._pubsub: PubSub | None = None
        self._presence: Presence | None = None
        self._clients_lock = threading.Lock()  # one of each client, however many threads ask
        self._clients_closed = False  # stop() closed them: none is created after
        self._workers = Workers()
        self._stop_done: set[str] = set()  # steps of stop() done (a later stop() skips them)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pool_size(self) -> int:
        return self.config.pool_size

    @property
    def listen(self) -> str | None:
        """The `listen` address given (None: the node is alone)."""
        return self.config.cluster.listen or None if self.config.cluster else None

    @property
    def engine(self) -> str | None:
        """The Redis engine's URL, its password hidden (None: the mesh, or alone)."""
        return self.config.cluster.engine if self.config.cluster else None

    @property
    def peers(self) -> tuple[str, ...]:
        return self.config.cluster.peers if self.config.cluster else ()

    @property
    def advertise(self) -> str | None:
        return self.config.cluster.advertise if self.config.cluster else None

    @property
    def tracker_options(self) -> dict[str, Any]:
        """The replication options in force, defaults included (`config.tracker`)."""
        return self.config.tracker.to_json()

    def __repr__(self) -> str:
        state = "running" if self.alive else ("stopped" if self._proc else "new")
        return f"<Node {self.name!r} {state} address={self._address!r}>"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Node:
        """Start the supervisor and its actors; returns once every actor is ready.

        Raises `NodeStartError` if an actor dies or is not ready within `start_timeout`, or
        if the fixed `address` cannot be served (its directory is missing, a node already
        serves there, or the path is some other file); `NodeNameTaken` (a `NodeStartError`)
        if another live node holds this name on the Redis engine for down_period.
        """
        if self._proc is not None:
            raise RuntimeError("a Node starts once; create a new one")
        door = client_door.claim(self.config.address) if self.config.address else None
        try:
            path, lock_fd = runtime_dir.create(self.name, self.config.address)
        except BaseException:
            if door is not None:
                door.release()
            raise
        self.runtime_dir = path
        self._door = door
        door_fds = (door.listen_fd, door.lock_fd) if door is not None else ()
        events_r, events_w = os.pipe()
        try:
            config = self.config.started(str(path))
            self._address = Topology(config).address
            args = {
                "config": config.to_json(),
                "parent_pid": os.getpid(),
                "ready_fd": events_w,
                "lock_fd": lock_fd,
                "door": door.to_json() if door is not None else None,
            }
            env = dict(os.environ)
            env.pop(COOKIE_ENV, None)
            env.pop(ENGINE_ENV, None)
            if self.cookie:  # by environment (readable by this user only), not by argv
                env[COOKIE_ENV] = self.cookie
            if self._engine_url:  # its password too
                env[ENGINE_ENV] = self._engine_url
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "whosthere.supervisor", json.dumps(args)],
                pass_fds=(events_w, lock_fd, *door_fds),
                start_new_session=True,  # terminal signals go to us; we stop the node
                env=env,
            )
        except BaseException:
            os.close(events_r)
            runtime_dir.remove(path)
            if door is not None:
                door.release()
            raise
        finally:
            os.close(events_w)
            os.close(lock_fd)  # the supervisor holds the directory's lock now
            if door is not None:
                door.handed_over()  # and the fixed address's lock and socket
        self._events = EventReader(events_r)
        event = self._events.next(self.config.boot_timeout + 5)
        if event is None or not event.get("ready"):
            reason = (event or {}).get("message") or "the supervisor exited during start"
            with contextlib.suppress(Exception):  # logged by stop(); why start failed is the news
                self.stop()
            error = self._events.error  # a named reason (e.g. NodeNameTaken) keeps its class
            kind = type(error) if isinstance(error, NodeStartError) else NodeStartError
            raise kind(f"node {self.name!r} did not start: {reason}")
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every process of the node within `timeout` seconds, after the goodbye
        (with `permdown_on_shutdown`: `DEPART_TIMEOUT` at most, 1.5 s).

        Each step runs even if one before it fails: the graceful permdown (with
        `permdown_on_shutdown`), closing this process's clients, stopping the workers from
        `spawn`, stopping the process tree. The first failure is raised once all have run
        (every one is logged). Calling `stop()` again retries only the steps that failed;
        once all are done it does nothing.
        """
        if self._proc is None:
            return
        deadline = time.monotonic() + timeout
        steps: list[tuple[str, Callable[[], None]]] = [
            ("graceful permdown", self._depart_on_stop),
            ("closing the pubsub client", lambda: self._close_pubsub(timeout)),
            ("closing the presence client", self._close_presence),
            ("stopping the workers", lambda: self._workers.stop(grace=min(0.5, timeout / 4))),
            ("stopping the process tree", lambda: self._stop_tree(deadline)),
        ]
        errors: list[BaseException] = []
        for name, step in steps:
            if name in self._stop_done:
                continue
            try:
                step()
            except BaseException as exc:  # even Ctrl-C: the other steps still run, briefly
                log.warning("node %s: %s failed: %r", self.name, name, exc)
                errors.append(exc)
            else:
                self._stop_done.add(name)
            if name == "graceful permdown":  # the goodbye has a window of its own
                deadline = time.monotonic() + timeout
        if errors:
            raise errors[0]

    def _depart_on_stop(self) -> None:
        if self.clustered and self.config.tracker.permdown_on_shutdown and self.alive:
            depart(self.address, DEPART_TIMEOUT)

    def _close_pubsub(self, timeout: float) -> None:
        with self._clients_lock:
            self._clients_closed = True
        if self._pubsub is not None:
            self._pubsub.close(flush_timeout=min(0.2, timeout / 10))

    def _close_presence(self) -> None:
        with self._clients_lock:
            self._clients_closed = True
        if self._presence is not None:
            self._presence.close()

    @property
    def clustered(self) -> bool:
        """Whether this node has peers to replicate with (over the mesh or a Redis engine),
        and so to leave: the one test of it (a graceful permdown is for a clustered node
        only)."""
        return self.config.cluster is not None

    @property
    def cluster_address(self) -> str | None:
        """Where peers reach this node (`listen` with its port resolved; a Redis engine's
        URL, its password hidden), or None alone."""
        if not self.clustered:
            return None
        listen: str = self.status()["cluster"]["listen"]
        return listen

    def graceful_permdown(self) -> None:
        """Leave the cluster for good: peers drop this node's presences at once (instead of
        after down_period), then the node stops."""
        try:
            if self.clustered and self.alive:
                depart(self.address, self.call_timeout)
        finally:
            self.stop()

    def _stop_tree(self, deadline: float) -> None:
        """SIGTERM the supervisor, SIGKILL the process group at the deadline, clean up."""
        assert self._proc is not None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(max(0.1, deadline - time.monotonic() - 0.2))
            except subprocess.TimeoutExpired:
                log.warning("node %s: supervisor did not stop in time; killing the tree", self.name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)  # anything left of the tree
        self._proc.wait()
        if self._events is not None:
            self._events.drain()
            self._events.close()
        if self.runtime_dir is not None:
            runtime_dir.remove(self.runtime_dir)
        if self._door is not None:  # the supervisor gave it back, unless it was killed
            self._door.release_if_free()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        """Whether the supervisor is running."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def error(self) -> WhosthereError | None:
        """Why the node stopped by itself (e.g. `RestartIntensityExceeded`), if it did."""
        if self._events is None:
            return None
        self._events.drain()
        return self._events.error

    def wait(self, timeout: float | None = None) -> None:
        """Block until the node stops (at most `timeout` s); raise the error it stopped with.

        Raises `TimeoutError` if it is still running at the deadline.
        """
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"node {self.name!r} still running after {timeout} s") from None
        error = self.error
        if error is not None:
            raise error

    # -- access ----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """What other processes pass to `connect` (and find in `$WHOSTHERE_ADDRESS`)."""
        if self._address is None:
            raise NodeUnavailable(f"node {self.name!r} is not started")
        return self._address

    @property
    def pid(self) -> int:
        """The supervisor's OS pid."""
        if self._proc is None:
            raise NodeUnavailable(f"node {self.name!r} is not started")
        return self._proc.pid

    @property
    def pubsub(self) -> PubSub:
        """This node's PubSub (created on first use)."""
        pubsub = self._pubsub
        if pubsub is None:
            with self._clients_lock:
                self._check_clients_open()
                if self._pubsub is None:
                    self._pubsub = PubSub.connect(self.address, timeout=self.call_timeout)
                pubsub = self._pubsub
        return pubsub

    @property
    def presence(self) -> Presence:
        """This node's presence, an instance of the `presence` class (created on first use)."""
        presence = self._presence
        if presence is None:
            with self._clients_lock:
                self._check_clients_open()
                if self._presence is None:
                    self._presence = self.presence_class.connect(
                        self.address, timeout=self.call_timeout
                    )
                presence = self._presence
        return presence

    def _check_clients_open(self) -> None:
        if self._clients_closed:
            raise NodeUnavailable(f"node {self.name!r} is stopped")

    def links(self) -> Links:
        """A new `Links` to watch OS processes through this node (close it when done)."""
        return Links(self.address, timeout=self.call_timeout)

    def status(self) -> dict[str, Any]:
        """The node's name, address, supervisor pid, each actor (name, pid, restarts, stats),
        and its `config` (every option in force)."""
        return node_status(self.address, self.call_timeout)

    def spawn(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> multiprocessing.process.BaseProcess:
        """Start `target(*args, **kwargs)` in a new worker process that can reach this node.

        The worker is a multiprocessing spawn-context process (so `target` must be importable)
        with `$WHOSTHERE_ADDRESS` set. It is started and returned; `stop()` terminates it if
        it still runs.
        """
        return self._workers.spawn(self.address, target, args, kwargs or {}, name)
