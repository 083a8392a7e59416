"""`Node`: start, reach and stop a whosthere node from the process that owns it."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import select
import signal
import socket as _socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from whosthere.actors.pubsub import DEFAULT_HWM
from whosthere.client import ADDRESS_ENV, NodeInfo, lookup
from whosthere.errors import NodeStartError, NodeUnavailable, WhosthereError, error_class
from whosthere.links import Links
from whosthere.presence import Presence, presence_class_ref
from whosthere.pubsub import PubSub
from whosthere.tracker.pool import shard_name
from whosthere.transport import runtime_dir
from whosthere.transport.codec import DEFAULT_META_LIMIT
from whosthere.transport.cookie import COOKIE_ENV
from whosthere.transport.endpoints import check_cluster
from whosthere.transport.messages import Depart, GetStats, GetStatus
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Dealer

log = logging.getLogger("whosthere.node")

STOP_TIMEOUT = 2.0  # seconds Node.stop() waits before killing the process group


def _spawn_entry(address: str, target: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    os.environ[ADDRESS_ENV] = address
    return target(*args, **kwargs)


def node_status(address: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The status of the node at `address`: its tree, each actor's counters, link counts."""
    dealer = Dealer(address, timeout=timeout, what="node")
    try:
        status = dealer.call(GetStatus())
    finally:
        dealer.close()
    endpoints = lookup(address, timeout).endpoints
    presences = 0
    for actor in status["actors"]:
        endpoint = endpoints.get(actor["name"])
        if endpoint is None:
            continue
        conn = Dealer(endpoint, timeout=min(timeout, 1.0), what=f"actor {actor['name']}")
        try:
            actor["stats"] = conn.call(GetStats())
        except NodeUnavailable:
            actor["stats"] = None  # restarting right now
        finally:
            conn.close()
        if actor["name"].startswith("shard.") and actor["stats"]:
            presences += actor["stats"]["presences"]
    status["presences"] = presences
    by_name = {a["name"]: a.get("stats") or {} for a in status["actors"]}
    if "cluster" in by_name:  # each peer replica as shard 0 sees it; the connections
        status["peers"] = by_name.get("shard.0", {}).get("replicas", {})
        status["cluster"] = by_name["cluster"]
    return status


TRACKER_DEFAULTS: dict[str, Any] = {  # Phoenix.Tracker's, in seconds
    "broadcast_period": 1.5,
    "max_silent_periods": 10,
    "down_period": 30.0,
    "permdown_period": 1200.0,
    "clock_sample_periods": 2,
    "max_delta_sizes": (100, 1000, 10000),
    "permdown_on_shutdown": False,
}


def check_tracker_options(options: dict[str, Any]) -> dict[str, Any]:
    """The tracker options with defaults; `ValueError`/`TypeError` names the rule broken."""
    unknown = sorted(set(options) - set(TRACKER_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown Node option(s): {', '.join(unknown)}")
    merged = {**TRACKER_DEFAULTS, **options}
    if "down_period" not in options:
        merged["down_period"] = merged["broadcast_period"] * merged["max_silent_periods"] * 2
    if merged["down_period"] < 2 * merged["broadcast_period"]:
        raise ValueError(
            f"down_period ({merged['down_period']} s) must be at least twice "
            f"broadcast_period ({merged['broadcast_period']} s)"
        )
    if merged["permdown_period"] <= merged["down_period"]:
        raise ValueError(
            f"permdown_period ({merged['permdown_period']} s) must be greater than "
            f"down_period ({merged['down_period']} s)"
        )
    return merged


class Node:
    """A whosthere node: a supervisor process and its actors, started from this process.

    Use it as a context manager, or call `start()` and `stop()`. Other processes on the host
    reach it through `address` (workers from `spawn` have it in `$WHOSTHERE_ADDRESS`).
    """

    def __init__(
        self,
        presence: type | None = None,
        pool_size: int = 1,
        name: str | None = None,
        listen: str | None = None,
        peers: tuple[str, ...] | list[str] = (),
        *,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        start_timeout: float = 30.0,
        call_timeout: float = DEFAULT_TIMEOUT,
        pubsub_hwm: int = DEFAULT_HWM,
        max_pidfds: int | None = None,
        fetchers: int = 2,
        fetch_timeout: float = 5.0,
        meta_limit: int = DEFAULT_META_LIMIT,
        log_level: str | None = None,
        cookie: str | None = None,
        advertise: str | None = None,
        **tracker_options: Any,
    ) -> None:
        """Configure a node; nothing starts before `start()`.

        Args:
            presence: the `Presence` subclass bound to `node.presence` (default: Presence).
                Its `fetch`, `init` and `handle_metas` run in the node's processes, which
                import it: define it at module level.
            pool_size: number of tracker shards (must match on every node of a cluster).
            name: node name (default: host name and a random suffix).
            listen: `tcp://host:port` where this node accepts peers (port 0: any free one);
                without it the node is alone. `peers`: listen addresses of other nodes
                (each needs only one; the cluster meshes itself).
            cookie: the cluster secret (default `$WHOSTHERE_COOKIE`); traffic between nodes
                is CURVE-authenticated with keys derived from it. Without one, `listen`
                must be a loopback address.
            advertise: the `tcp://host:port` peers are told to dial, when it is not `listen`
                (a wildcard such as `tcp://0.0.0.0:7000`, or an address behind NAT); port 0:
                the port bound.
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
            tracker_options: the replication periods (`broadcast_period`, `down_period`...),
                checked now and used once nodes form a cluster.
        """
        self.cookie = cookie if cookie is not None else os.environ.get(COOKIE_ENV)
        self.listen, self.peers = check_cluster(listen, peers, self.cookie, advertise)
        self.advertise = advertise
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if max_restarts < 0 or max_seconds <= 0:
            raise ValueError("max_restarts must be >= 0 and max_seconds > 0")
        if fetchers < 1 or fetch_timeout <= 0 or meta_limit < 1:
            raise ValueError("fetchers, fetch_timeout and meta_limit must be positive")
        self.tracker_options = check_tracker_options(tracker_options)
        self.presence_class: type[Presence] = presence or Presence
        self._presence_ref = presence_class_ref(self.presence_class)
        # the presence client actor runs when either callback is defined (init alone runs once)
        self._client_actor = any(
            hasattr(self.presence_class, name) for name in ("init", "handle_metas")
        )
        self.fetchers = fetchers
        self.fetch_timeout = fetch_timeout
        self.meta_limit = meta_limit
        self.pool_size = pool_size
        self.name = name or f"{_socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.pubsub_hwm = pubsub_hwm
        self.max_pidfds = max_pidfds
        self.log_level = (log_level or os.environ.get("WHOSTHERE_LOG_LEVEL") or "WARNING").upper()
        self.runtime_dir: Path | None = None
        self._address: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._events_fd = -1  # read end of the supervisor's pipe
        self._events = b""
        self._error: WhosthereError | None = None
        self._info: NodeInfo | None = None
        self._pubsub: PubSub | None = None
        self._presence: Presence | None = None
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._stopped = False

    def __repr__(self) -> str:
        state = "running" if self.alive else ("stopped" if self._proc else "new")
        return f"<Node {self.name!r} {state} address={self._address!r}>"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Node:
        """Start the supervisor and its actors; returns once every actor is ready.

        Raises `NodeStartError` if an actor dies or is not ready within `start_timeout`.
        """
        if self._proc is not None:
            raise RuntimeError("a Node starts once; create a new one")
        path, lock_fd = runtime_dir.create(self.name)
        self.runtime_dir = path
        self._address = runtime_dir.ipc_endpoint(path, "supervisor")
        events_r, events_w = os.pipe()
        config = {
            "name": self.name,
            "address": self._address,
            "runtime_dir": str(path),
            "parent_pid": os.getpid(),
            "pool_size": self.pool_size,
            "max_restarts": self.max_restarts,
            "max_seconds": self.max_seconds,
            "start_timeout": self.start_timeout,
            "pubsub_hwm": self.pubsub_hwm,
            "max_pidfds": self.max_pidfds,
            "presence": self._presence_ref,
            "custom_fetch": self.presence_class.fetch is not Presence.fetch,
            "handle_metas": self._client_actor,
            "fetchers": self.fetchers,
            "fetch_timeout": self.fetch_timeout,
            "meta_limit": self.meta_limit,
            "log_level": self.log_level,
            "listen": self.listen,
            "advertise": self.advertise,
            "peers": list(self.peers),
            "tracker": self.tracker_options,
            "ready_fd": events_w,
            "lock_fd": lock_fd,
        }
        try:
            env = dict(os.environ)
            env.pop(COOKIE_ENV, None)
            if self.cookie:  # by environment (readable by this user only), not by argv
                env[COOKIE_ENV] = self.cookie
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "whosthere.supervisor", json.dumps(config)],
                pass_fds=(events_w, lock_fd),
                start_new_session=True,  # terminal signals go to us; we stop the node
                env=env,
            )
        except BaseException:
            os.close(events_r)
            runtime_dir.remove(path)
            raise
        finally:
            os.close(events_w)
            os.close(lock_fd)  # the supervisor holds the directory's lock now
        self._events_fd = events_r
        event = self._next_event(self.start_timeout + 5)
        if event is None or not event.get("ready"):
            reason = (event or {}).get("message") or "the supervisor exited during start"
            self.stop()
            raise NodeStartError(f"node {self.name!r} did not start: {reason}")
        self._info = NodeInfo(self.name, self._address, {})
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every process of the node within `timeout` seconds. Idempotent."""
        if self._stopped or self._proc is None:
            self._stopped = True
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        try:
            if self.listen and self.tracker_options["permdown_on_shutdown"] and self.alive:
                self._depart(min(1.5, timeout / 2))
            if self._pubsub is not None:
                self._pubsub.close(flush_timeout=min(0.2, timeout / 10))
            if self._presence is not None:
                self._presence.close()
            self._stop_workers(grace=min(0.5, timeout / 4))
        finally:
            self._stop_tree(deadline)

    @property
    def cluster_address(self) -> str | None:
        """Where peers reach this node (`listen` with its port resolved), or None alone."""
        if not self.listen:
            return None
        return self.status()["cluster"]["listen"]

    def graceful_permdown(self) -> None:
        """Leave the cluster for good: peers drop this node's presences at once (instead of
        after down_period), then the node stops."""
        if self.listen and self.alive:
            self._depart(self.call_timeout)
        self.stop()

    def _depart(self, timeout: float) -> None:
        assert self._address is not None
        deadline = time.monotonic() + timeout
        info = lookup(self._address, timeout)
        shards = [info.endpoints[shard_name(i)] for i in range(self.pool_size)]
        dealers = [Dealer(endpoint, what="shard") for endpoint in shards]
        try:  # every shard says goodbye at once; each answers once its peers acknowledge
            refs = [d.request(Depart(), deadline, timeout) for d in dealers]
            for i, (dealer, ref) in enumerate(zip(dealers, refs, strict=True)):
                try:
                    missing = dealer.result(ref, Depart(), deadline, timeout)
                except WhosthereError as exc:  # stopping anyway: peers use down_period
                    log.warning("graceful permdown of shard %d failed: %s", i, exc)
                    continue
                if missing:
                    log.warning(
                        "graceful permdown of shard %d: no acknowledgement from %s (they "
                        "drop this node after down_period)", i, ", ".join(missing),
                    )  # fmt: skip
        finally:
            for dealer in dealers:
                dealer.close()

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
        self._drain_events()
        os.close(self._events_fd)
        self._events_fd = -1
        if self.runtime_dir is not None:
            runtime_dir.remove(self.runtime_dir)

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
        self._drain_events()
        return self._error

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
        if self._pubsub is None:
            self._pubsub = PubSub.connect(self.address, timeout=self.call_timeout)
        return self._pubsub

    @property
    def presence(self) -> Presence:
        """This node's presence, an instance of the `presence` class (created on first use)."""
        if self._presence is None:
            self._presence = self.presence_class.connect(self.address, timeout=self.call_timeout)
        return self._presence

    def links(self) -> Links:
        """A new `Links` to watch OS processes through this node (close it when done)."""
        return Links(self.address, timeout=self.call_timeout)

    def status(self) -> dict[str, Any]:
        """The node's name, address, supervisor pid, each actor (name, pid, restarts, stats)."""
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
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=_spawn_entry, args=(self.address, target, args, kwargs or {}), name=name
        )
        proc.start()
        self._workers = [w for w in self._workers if w.is_alive()] + [proc]
        return proc

    # -- internals -------------------------------------------------------------------------

    def _stop_workers(self, grace: float) -> None:
        live = [w for w in self._workers if w.is_alive()]
        for w in live:
            w.terminate()
        deadline = time.monotonic() + grace
        for w in live:
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                w.kill()
                w.join()
        self._workers.clear()

    def _next_event(self, timeout: float) -> dict[str, Any] | None:
        """The supervisor's next JSON line, None at EOF or timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._events:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._events_fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self._events_fd, 65536)
            if not chunk:
                return None
            self._events += chunk
        line, _, self._events = self._events.partition(b"\n")
        return self._record(json.loads(line))

    def _drain_events(self) -> None:
        if self._events_fd < 0:
            return
        while select.select([self._events_fd], [], [], 0)[0]:
            chunk = os.read(self._events_fd, 65536)
            if not chunk:
                break
            self._events += chunk
        while b"\n" in self._events:
            line, _, self._events = self._events.partition(b"\n")
            self._record(json.loads(line))

    def _record(self, event: dict[str, Any]) -> dict[str, Any]:
        if "error" in event and self._error is None:
            cls = error_class(event["error"]) or WhosthereError
            self._error = cls(event["message"])
        return event
