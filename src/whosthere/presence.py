"""`Presence`: Phoenix.Presence's API over a whosthere node, blocking.

Subclass it to add callbacks, all optional: `fetch(topic, presences)` enriches what `list`,
`get_by_key` and `presence_diff` carry (it runs in the fetcher workers and in the callers of
`list`/`get_by_key`); `init()` and `handle_metas(topic, diff, presences, state)` run in the
node's presence client actor. Instances are safe to share between threads.

What each call sends and what its reply becomes is `presence_core.PresenceCore`, shared with
the asyncio client; this module only does the I/O, one thread's socket per actor at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

from whosthere.arguments import (
    Channel,
    ChannelLike,
    Meta,
    MetaChange,
    PidOrOwner,
    PresenceKey,
    owner_arg,
    whole_owner,
)
from whosthere.client import NodeInfo, lookup
from whosthere.errors import NodeUnavailable, WhosthereError
from whosthere.loading import settle
from whosthere.names import check_topic
from whosthere.own_presences import OwnPresences, report_retrack
from whosthere.owners import OwnerIdentity
from whosthere.presence_core import Entry, Pids, PresenceCore, Presences, TopicCounts, fetchers_of
from whosthere.pubsub import PubSub, Subscription
from whosthere.steps import Call, Gather, Pause, Replies, Settle, Step, Steps, run
from whosthere.topology import shard_name
from whosthere.transport.messages import GetStatus
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Dealer, DealerPerThread

if TYPE_CHECKING:
    from whosthere.aio import AsyncPresence

__all__ = ["Channel", "Owner", "Presence", "Presences"]

T = TypeVar("T")


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
        self._core = PresenceCore.of(info.settings, timeout)
        self.pool_size = self._core.pool_size
        self.meta_limit = self._core.meta_limit
        self._shards = [
            DealerPerThread(
                info.endpoints[shard_name(i)],
                timeout=timeout,
                what=f"shard {i}",
                guard=info.supervisor,
            )
            for i in range(self.pool_size)
        ]
        self._node = DealerPerThread(
            info.address, timeout=timeout, what="node", guard=info.supervisor
        )
        self._pubsub: PubSub | None = None  # created by the first subscribe
        self._pubsub_lock = threading.Lock()  # threads may subscribe at once: one PubSub
        self._closed = False
        self._own = OwnPresences()  # tracked again on a node back at the address
        if info.supervisor is not None and info.supervisor.stable:
            info.supervisor.listen(self)

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
        from whosthere.aio import AsyncPresence  # noqa: PLC0415 (only asyncio programs load it)

        return await AsyncPresence.connect(address, presence=cls, timeout=timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} node={self.info.name!r} address={self.info.address!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- callbacks -------------------------------------------------------------------------

    def fetch(self, topic: str, presences: Presences) -> Presences:
        """Override to add fields beside each entry's "metas" (keep "metas" as it is). It may
        be an `async def`; so may `init` and `handle_metas`."""
        return presences

    # -- the API ---------------------------------------------------------------------------

    @overload
    def track(self, pid: PidOrOwner, topic: str, key: PresenceKey, meta: Meta, /) -> str: ...
    @overload
    def track(self, channel: ChannelLike, key: PresenceKey, meta: Meta, /) -> str: ...
    def track(self, *args: Any) -> str:
        """`track(pid, topic, key, meta)` or `track(channel, key, meta)`: the new phx_ref.

        `pid` is an OS pid or an `Owner`. Links its OS process through the node: when that
        process exits, however it exits, its presences (every owner's) leave. Raises
        `AlreadyTracked` (per owner), `InvalidMeta`, `NodeUnavailable`.
        """
        call = self._core.track(args)
        ref: str = self._shards[call.shard].call(call.msg)
        self._own.observe(call.msg, ref)
        return ref

    def track_many(
        self,
        entries: Iterable[tuple[int | OwnerIdentity, str, str | int, dict[str, Any]]],
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
        return self._run(self._core.track_many(entries, return_exceptions))

    @overload
    def untrack(self, pid: PidOrOwner, topic: str, key: PresenceKey, /) -> None: ...
    @overload
    def untrack(self, channel: ChannelLike, key: PresenceKey, /) -> None: ...
    @overload
    def untrack(self, pid: PidOrOwner, /) -> None: ...
    def untrack(self, *args: Any) -> None:
        """`untrack(pid, topic, key)`, `untrack(channel, key)`, or `untrack(pid)` (everything
        of that pid or owner, in every shard: a bare pid is the process as one owner, not
        the `Owner`s in it). Untracking what is not tracked is a no-op."""
        if whole_owner(args):
            self._run(self._core.untrack_owner(owner_arg(args[0])))
        else:
            self._call(self._core.untrack(args))

    @overload
    def update(self, pid: PidOrOwner, topic: str, key: PresenceKey, meta: MetaChange, /) -> str: ...
    @overload
    def update(self, channel: ChannelLike, key: PresenceKey, meta: MetaChange, /) -> str: ...
    def update(self, *args: Any) -> str:
        """`update(pid, topic, key, meta_or_fn)` or `update(channel, key, meta_or_fn)`.

        A dict replaces the meta; a callable gets the current meta (phx_ref included) and
        returns the new one. It runs here, in the caller, and the write only lands if the
        meta has not changed since it was read (else it runs again on the newer meta).
        Returns the new phx_ref; the new meta carries phx_ref_prev. Raises `NotTracked`, and
        `RefChanged` if other writers keep winning the race for the whole timeout.
        """
        update = self._core.update(args, time.monotonic)
        ref: str = self._call(update) if isinstance(update, Call) else self._run(update)
        return ref

    def list(self, topic_or_channel: str | Channel) -> Presences:
        """`{key: {"metas": [meta, ...], ...}}` for the topic, through `fetch`."""
        return self._run(self._core.list(topic_or_channel, self.fetch))

    def get_by_key(self, topic_or_channel: str | Channel, key: str | int) -> Entry | None:
        """That key's entry `{"metas": [...], ...}` through `fetch`, or None."""
        return self._run(self._core.get_by_key(topic_or_channel, key, self.fetch))

    def subscribe(self, topic: str) -> Subscription:
        """The topic's messages, `presence_diff` events included; in place when it returns."""
        return self._pubsub_client().subscribe(check_topic(topic))

    def owner(self) -> Owner:
        """A new lightweight owner in this OS process (see `Owner`)."""
        return Owner(self)

    def topics(self, limit: int = 100) -> TopicCounts:
        """The node's topics with the most presences: [(topic, presences), ...], most first."""
        return self._run(self._core.topics(limit))

    def status(self) -> dict[str, Any]:
        """The node's process tree: each actor's name, pid, restarts (`whosthere status`)."""
        status: dict[str, Any] = self._node.call(GetStatus())
        return status

    def fetchers_pids(self) -> Pids:
        """OS pids of the node's fetcher workers."""
        return fetchers_of(self.status())

    def close(self) -> None:
        """Release the sockets. Idempotent."""
        if self.info.supervisor is not None:
            self.info.supervisor.unlisten(self)
        for conn in (*self._shards, self._node):
            conn.close()
        with self._pubsub_lock:  # none created after this
            self._closed = True
        if self._pubsub is not None:
            self._pubsub.close()

    # -- the driver of the core --------------------------------------------------------------

    def _call(self, call: Call) -> Any:
        try:
            reply = self._shards[call.shard].call(call.msg)
        except WhosthereError as exc:
            self._own.failed(call.msg, exc)
            raise
        self._own.observe(call.msg, reply)
        return reply

    def _run(self, steps: Steps[T]) -> T:
        return run(steps, self._perform)

    def _perform(self, step: Step) -> Any:
        match step:
            case Call():
                return self._call(step)
            case Gather(calls):
                return self._gather(calls)
            case Pause(seconds):
                time.sleep(seconds)
                return None
            case Settle(awaitable):
                return settle(awaitable)

    def _gather(self, calls: Sequence[Call], dealers: Sequence[Dealer] = ()) -> Replies:
        """Every call sent before any reply is read (pipelined, per shard); a reply's
        `WhosthereError` in its place. The timeout bounds each wait, not the whole. `dealers`:
        one per shard, instead of this thread's."""
        sent = []
        for call in calls:
            dealer = dealers[call.shard] if dealers else self._shards[call.shard].dealer()
            deadline = time.monotonic() + self.timeout
            sent.append((dealer, call.msg, dealer.request(call.msg, deadline, self.timeout)))
        replies: list[Any] = []
        for dealer, msg, ref in sent:
            deadline = time.monotonic() + self.timeout  # the timeout bounds a lack of progress
            try:
                reply = dealer.result(ref, msg, deadline, self.timeout)
            except WhosthereError as exc:  # this call failed; read the others
                self._own.failed(msg, exc)
                replies.append(exc)
            else:
                self._own.observe(msg, reply)
                replies.append(reply)
        return replies

    # -- a node serves the address again (called by `revival.Revival`, in its thread) ---------

    def node_gone(self) -> None:
        """Calls fail with `NodeUnavailable` meanwhile (the watch says so)."""

    def node_back(self) -> None:
        """Track this process's presences again on the new node (DESIGN section 12)."""
        if self._closed or not self._own.held:
            return
        calls = self._own.retrack(self.pool_size)
        dealers = [  # the revival thread's own, closed here (not left to its thread's end)
            Dealer(conn.endpoint, timeout=self.timeout, what=conn.what, guard=self.info.supervisor)
            for conn in self._shards
        ]
        try:
            report_retrack(self._gather(calls, dealers), self.info.address)
        finally:
            for dealer in dealers:
                dealer.close()

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
