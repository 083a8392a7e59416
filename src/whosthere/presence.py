"""`Presence`: Phoenix.Presence's API over a whosthere node.

Subclass it to add callbacks, all optional: `fetch(topic, presences)` enriches what `list`,
`get_by_key` and `presence_diff` carry (it runs in the fetcher workers and in the callers of
`list`/`get_by_key`); `init()` and `handle_metas(topic, diff, presences, state)` run in the
node's presence client actor. Instances are safe to share between threads.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Self

from whosthere.arguments import (
    Channel,
    OwnerIdentity,
    Presences,
    key_arg,
    owner_arg,
    owner_topic_args,
    start_of,
    topic_arg,
    track_batches,
)
from whosthere.client import NodeInfo, lookup
from whosthere.errors import NodeUnavailable, RefChanged, WhosthereError, from_wire
from whosthere.loading import settle
from whosthere.pubsub import PubSub, Subscription, check_topic
from whosthere.topology import is_fetcher, shard_name
from whosthere.tracker.pool import shard_for
from whosthere.transport import codec
from whosthere.transport.messages import (
    GetByKey,
    GetMeta,
    GetStatus,
    ListTopic,
    ListTopics,
    Track,
    TrackMany,
    Untrack,
    UntrackPid,
    Update,
)
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Connection

if TYPE_CHECKING:
    from whosthere.aio import AsyncPresence

__all__ = ["Channel", "Owner", "Presence", "Presences"]


class Owner(OwnerIdentity):
    """A lightweight owner of presences inside this OS process (`presence.owner()`): what a
    Phoenix channel process is, for one connection of a web worker holding thousands.

    Accepted wherever a pid is. Its presences are its own: two owners of one process may
    track the same key on a topic (two metas), and `close()` (or leaving a `with` block)
    untracks all of them at once. When the process dies, every owner in it leaves. `pid` is
    the OS pid; `id` names the owner on the host while the process lives."""

    __slots__ = ("_presence",)

    def __init__(self, presence: Presence) -> None:
        super().__init__()
        self._presence = presence

    def close(self) -> None:
        """Untrack every presence of this owner (one message per shard). Idempotent."""
        if not self.closed:
            self._presence.untrack(self)
            self.closed = True

    def __enter__(self) -> Owner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Presence:
    """Presence tracking on a node: track, untrack, update, list, get_by_key, subscribe.

    Get one with `node.presence`, or `YourPresence.connect(address)` from any process of the
    host. Every call is a request with a deadline: `NodeUnavailable` past `timeout`.
    """

    def __init__(self, info: NodeInfo, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.info = info
        self.timeout = timeout
        self.pool_size = int(info.settings.get("pool_size", 1))
        self.meta_limit = int(info.settings.get("meta_limit", codec.DEFAULT_META_LIMIT))
        self._shards = [
            Connection(
                info.endpoints[shard_name(i)],
                timeout=timeout,
                what=f"shard {i}",
                guard=info.supervisor,
            )
            for i in range(self.pool_size)
        ]
        self._pubsub: PubSub | None = None  # created by the first subscribe
        self._pubsub_lock = threading.Lock()  # threads may subscribe at once: one PubSub
        self._closed = False
        self._supervisor = Connection(
            info.address, timeout=timeout, what="node", guard=info.supervisor
        )

    @classmethod
    def connect(cls, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> Self:
        """A presence bound to the node at `address` (default `$WHOSTHERE_ADDRESS`)."""
        return cls(lookup(address, timeout), timeout=timeout)

    @classmethod
    async def connect_async(
        cls, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> AsyncPresence:
        """The asyncio client of the node at `address`, with this class's `fetch`
        (`whosthere.aio`)."""
        from whosthere.aio import connect  # noqa: PLC0415 (only asyncio programs load it)

        return await connect(address, presence=cls, timeout=timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} node={self.info.name!r} address={self.info.address!r}>"

    # -- callbacks -------------------------------------------------------------------------

    def fetch(self, topic: str, presences: Presences) -> Presences:
        """Override to add fields beside each entry's "metas" (keep "metas" as it is). It may
        be an `async def`; so may `init` and `handle_metas`."""
        return presences

    # -- the API ---------------------------------------------------------------------------

    def track(self, *args: Any) -> str:
        """`track(pid, topic, key, meta)` or `track(channel, key, meta)`: the new phx_ref.

        `pid` is an OS pid or an `Owner`. Links its OS process through the node: when that
        process exits, however it exits, its presences (every owner's) leave. Raises
        `AlreadyTracked` (per owner), `InvalidMeta`, `NodeUnavailable`.
        """
        pid, topic, (key, meta) = owner_topic_args(args, 2, "track")
        packed = codec.pack_meta(meta, self.meta_limit)
        msg = Track(pid, start_of(pid), topic, key_arg(key), packed)
        return self._shard(topic).call(msg)

    def track_many(
        self,
        entries: Iterable[tuple[int, str, str | int, dict[str, Any]]],
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Track many `(pid, topic, key, meta)` at once: their phx_refs, in order.

        The same as a `track` each, in fewer round trips: entries go in batches per shard,
        all shards at once, and each shard publishes one diff per topic per batch. Every
        entry is checked before any is sent (`TypeError`, `ValueError`, `InvalidMeta`). An
        entry the node refuses (`AlreadyTracked`) does not stop the others: the first such
        error is raised once all are done, or with `return_exceptions` it takes that entry's place.
        """
        batches, count = track_batches(entries, self.pool_size, self.meta_limit)
        sent = []
        for conn, shard_batches in zip(self._shards, batches, strict=True):
            dealer = conn.dealer()
            deadline = time.monotonic() + self.timeout
            for batch, places in shard_batches:
                msg = TrackMany(batch)
                sent.append((dealer, msg, places, dealer.request(msg, deadline, self.timeout)))
        results: list[Any] = [None] * count
        for dealer, msg, places, ref in sent:
            deadline = time.monotonic() + self.timeout  # the timeout bounds a lack of progress
            try:
                replies = dealer.result(ref, msg, deadline, self.timeout)
            except WhosthereError as exc:  # this batch failed as a whole; read the others
                replies = [exc] * len(places)
            for place, reply in zip(places, replies, strict=True):
                if isinstance(reply, list):  # [error class name, message]
                    results[place] = from_wire(reply[0], reply[1])
                else:
                    results[place] = reply
        if not return_exceptions:
            for result in results:  # the first error in input order
                if isinstance(result, WhosthereError):
                    raise result
        return results

    def untrack(self, *args: Any) -> None:
        """`untrack(pid, topic, key)`, `untrack(channel, key)`, or `untrack(pid)` (everything
        of that pid or owner, in every shard: a bare pid is the process as one owner, not
        the `Owner`s in it). Untracking what is not tracked is a no-op."""
        if len(args) == 1 and not hasattr(args[0], "topic"):
            pid = owner_arg(args[0])
            for shard in self._shards:
                shard.call(UntrackPid(pid))
            return
        pid, topic, (key,) = owner_topic_args(args, 1, "untrack")
        self._shard(topic).call(Untrack(pid, topic, key_arg(key)))

    def update(self, *args: Any) -> str:
        """`update(pid, topic, key, meta_or_fn)` or `update(channel, key, meta_or_fn)`.

        A dict replaces the meta; a callable gets the current meta (phx_ref included) and
        returns the new one. It runs here, in the caller, and the write only lands if the
        meta has not changed since it was read (else it runs again on the newer meta).
        Returns the new phx_ref; the new meta carries phx_ref_prev. Raises `NotTracked`, and
        `RefChanged` if other writers keep winning the race for the whole timeout.
        """
        pid, topic, (key, meta_or_fn) = owner_topic_args(args, 2, "update")
        key = key_arg(key)
        shard = self._shard(topic)
        if not callable(meta_or_fn):
            packed = codec.pack_meta(meta_or_fn, self.meta_limit)
            return shard.call(Update(pid, topic, key, packed, None))
        fn: Callable[[dict[str, Any]], Any] = meta_or_fn
        deadline = time.monotonic() + self.timeout
        for attempt in itertools.count():
            current = codec.unpack(shard.call(GetMeta(pid, topic, key)))
            packed = codec.pack_meta(settle(fn(dict(current))), self.meta_limit)
            try:
                return shard.call(Update(pid, topic, key, packed, current["phx_ref"]))
            except RefChanged:
                if time.monotonic() >= deadline:
                    break
                # another writer got there first: back off a random while, so that racing
                # writers spread out instead of colliding again (no one starves)
                time.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
        raise RefChanged(
            f"update of {key!r} on {topic!r} kept losing races to other writers for "
            f"{self.timeout:g} s"
        )

    def list(self, topic_or_channel: str | Channel) -> Presences:
        """`{key: {"metas": [meta, ...], ...}}` for the topic, through `fetch`."""
        topic = topic_arg(topic_or_channel)
        grouped: Presences = codec.unpack(self._shard(topic).call(ListTopic(topic)))
        return settle(self.fetch(topic, grouped)) if grouped else grouped

    def get_by_key(self, topic_or_channel: str | Channel, key: str | int) -> dict[str, Any] | None:
        """That key's entry `{"metas": [...], ...}` through `fetch`, or None."""
        topic = topic_arg(topic_or_channel)
        key = key_arg(key)
        metas = self._shard(topic).call(GetByKey(topic, key))
        if not metas:
            return None
        fetched = settle(self.fetch(topic, {key: {"metas": [codec.unpack(m) for m in metas]}}))
        return fetched.get(key)

    def subscribe(self, topic: str) -> Subscription:
        """The topic's messages, `presence_diff` events included; in place when it returns."""
        return self._pubsub_client().subscribe(check_topic(topic))

    def _pubsub_client(self) -> PubSub:
        pubsub = self._pubsub
        if pubsub is None:
            with self._pubsub_lock:
                if self._closed:
                    raise NodeUnavailable(f"presence of node {self.info.name!r} is closed")
                if self._pubsub is None:
                    self._pubsub = PubSub(self.info, timeout=self.timeout)
                pubsub = self._pubsub
        return pubsub

    def owner(self) -> Owner:
        """A new lightweight owner in this OS process (see `Owner`)."""
        return Owner(self)

    def topics(self, limit: int = 100) -> list[tuple[str, int]]:
        """The node's topics with the most presences: [(topic, presences), ...], most first."""
        found = [tuple(t) for shard in self._shards for t in shard.call(ListTopics(limit))]
        return sorted(found, key=lambda t: -t[1])[:limit]  # type: ignore[return-value]

    def fetchers_pids(self) -> list[int]:
        """OS pids of the node's fetcher workers."""
        status = self._supervisor.call(GetStatus())
        return [a["pid"] for a in status["actors"] if is_fetcher(a["name"])]

    def close(self) -> None:
        """Release the sockets. Idempotent."""
        for conn in (*self._shards, self._supervisor):
            conn.close()
        with self._pubsub_lock:  # none created after this
            self._closed = True
        if self._pubsub is not None:
            self._pubsub.close()

    def _shard(self, topic: str) -> Connection:
        return self._shards[shard_for(topic, self.pool_size) if self.pool_size > 1 else 0]
