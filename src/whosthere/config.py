"""A node's configuration: every option checked once, frozen, and carried to each process.

`Node(...)` builds one from the user's arguments; the supervisor and every actor get it as
JSON on their command line and read it back as this same object (attributes, not string
keys), so an option has one name, one default and one check.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from whosthere.loading import ClassRef
from whosthere.tracker.options import TrackerOptions
from whosthere.transport.client_address import check_node_address
from whosthere.transport.codec import DEFAULT_META_LIMIT
from whosthere.transport.endpoints import check_cluster

LOG_LEVEL_ENV = "WHOSTHERE_LOG_LEVEL"
PEERS_ENV = "WHOSTHERE_PEERS"  # comma-separated peers, for a node given `listen` and no peers
_INTS = ("fetchers", "max_restarts", "pubsub_hwm", "meta_limit")
_FLOATS = ("fetch_timeout", "max_seconds", "start_timeout")


@dataclass(frozen=True)
class ClusterConfig:
    """Where this node meets its peers (checked by `transport.endpoints.check_cluster`)."""

    listen: str  # tcp://host:port (port 0: any free one)
    advertise: str | None = None  # what peers dial, when it is not `listen`
    # other nodes' listen addresses (one is enough), or dns:NAME:PORT / srv:NAME
    peers: tuple[str, ...] = ()
    discovery_period: float = 5.0  # seconds between two resolutions of the DNS names

    def __post_init__(self) -> None:
        object.__setattr__(self, "discovery_period", _period(self.discovery_period))

    @classmethod
    def create(
        cls,
        listen: str | None,
        peers: tuple[str, ...] | list[str] | str,
        cookie: str | None,
        advertise: str | None,
        discovery_period: float = 5.0,
    ) -> ClusterConfig | None:
        """The cluster wiring, checked; None for a node alone (no `listen`). With `listen`
        and no peers, the peers are `$WHOSTHERE_PEERS`'s (comma-separated), if set."""
        if listen and not peers:
            peers = tuple(p.strip() for p in os.environ.get(PEERS_ENV, "").split(",") if p.strip())
        listen, checked = check_cluster(listen, peers, cookie, advertise)
        period = _period(discovery_period)  # checked even for a node alone
        return cls(listen, advertise, checked, period) if listen else None


def _period(period: object) -> float:
    """`discovery_period`, checked: a positive, finite number of seconds."""
    if not isinstance(period, int | float) or isinstance(period, bool):
        raise TypeError(f"discovery_period must be a number, got {period!r}")
    if not 0 < period < float("inf"):
        raise ValueError(f"discovery_period must be positive, got {period!r}")
    return float(period)


@dataclass(frozen=True)
class NodeConfig:
    """Everything the node's processes need to know about the node, checked on creation."""

    name: str
    # the user's Presence subclass, as `loading.class_ref` names it
    presence: ClassRef = field(
        default_factory=lambda: {"module": "whosthere.presence", "qualname": "Presence"}
    )
    custom_fetch: bool = False  # the class overrides `fetch`: diffs go through fetchers
    presence_client: bool = False  # it defines `init` or `handle_metas`: that actor runs
    pool_size: int = 1
    fetchers: int = 2
    fetch_timeout: float = 5.0
    meta_limit: int = DEFAULT_META_LIMIT
    max_restarts: int = 3
    max_seconds: float = 5.0
    start_timeout: float = 30.0
    pubsub_hwm: int = 100_000  # messages queued per subscriber before it starts losing them
    max_pidfds: int | None = None
    log_level: str = "WARNING"
    durable: bool = True  # shards journal their state and come back with it after a crash
    cluster: ClusterConfig | None = None
    address: str | None = None  # a fixed ipc:// client door (None: one in the runtime dir)
    tracker: TrackerOptions = field(default_factory=TrackerOptions)
    runtime_dir: str = ""  # the node's private directory, once `Node.start()` made it

    def __post_init__(self) -> None:
        if not isinstance(self.pool_size, int) or self.pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {self.pool_size!r}")
        for name in (*_INTS, *_FLOATS, *(("max_pidfds",) if self.max_pidfds is not None else ())):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value) if name in _FLOATS else int(value))
        if not isinstance(self.durable, bool):
            raise TypeError(f"durable must be a bool, got {self.durable!r}")
        if self.max_restarts < 0 or self.max_seconds <= 0:
            raise ValueError("max_restarts must be >= 0 and max_seconds > 0")
        if self.fetchers < 1 or self.fetch_timeout <= 0 or self.meta_limit < 1:
            raise ValueError("fetchers, fetch_timeout and meta_limit must be positive")
        if self.address is not None:
            check_node_address(self.address)

    @staticmethod
    def default_name() -> str:
        return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"

    @classmethod
    def default_log_level(cls, level: str | None) -> str:
        """`level`, else `$WHOSTHERE_LOG_LEVEL`, else the field's default."""
        return (level or os.environ.get(LOG_LEVEL_ENV) or cls.log_level).upper()

    def started(self, runtime_dir: str) -> NodeConfig:
        """This configuration, for a node started in `runtime_dir`."""
        return replace(self, runtime_dir=runtime_dir)

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["tracker"] = self.tracker.to_json()
        if self.cluster is not None:
            raw["cluster"]["peers"] = list(self.cluster.peers)
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> NodeConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["tracker"] = TrackerOptions.from_json(raw["tracker"])
        if raw.get("cluster") is not None:
            c = raw["cluster"]
            values["cluster"] = ClusterConfig(
                c["listen"], c["advertise"], tuple(c["peers"]), c["discovery_period"]
            )
        return cls(**values)
