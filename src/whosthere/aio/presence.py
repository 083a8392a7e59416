"""`AsyncPresence`: the presence API as coroutines, for one asyncio event loop.

The same calls, arguments and errors as `whosthere.Presence`: what each call sends and what
its reply becomes is `presence_core.PresenceCore`, shared with it; this module only does the
I/O. Every call has a deadline (`NodeUnavailable` past it), and none blocks the loop.
Concurrent calls share one socket per shard and are pipelined: the shard reads a burst of
them in one wake-up. A cancelled call leaves nothing behind that a later call could take for
its own reply (`aio.dealer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Self, TypeVar, overload

from whosthere.aio import feed_loop, readers
from whosthere.aio.client import lookup
from whosthere.aio.dealer import AsyncDealer
from whosthere.aio.owners import AsyncOwner, Closings
from whosthere.aio.pubsub import AsyncPubSub, AsyncSubscription
from whosthere.arguments import (
    AsyncMetaChange,
    Channel,
    ChannelLike,
    Meta,
    PidOrOwner,
    PresenceKey,
    owner_arg,
    whole_owner,
)
from whosthere.client import NodeInfo
from whosthere.errors import NodeUnavailable, WhosthereError
from whosthere.own_presences import OwnPresences, report_retrack
from whosthere.owners import OwnerIdentity
from whosthere.presence_core import (
    Entry,
    Pids,
    PresenceCore,
    Presences,
    TopicCounts,
    UserFetch,
    fetchers_of,
)
from whosthere.steps import Call, Gather, Pause, Replies, Settle, Step, Steps, run_async
from whosthere.topology import shard_name
from whosthere.transport import forks
from whosthere.transport.messages import GetStatus
from whosthere.transport.sockets import DEFAULT_TIMEOUT

__all__ = ["AsyncOwner", "AsyncPresence", "connect", "connect_pubsub", "lookup"]

T = TypeVar("T")

log = logging.getLogger("whosthere.client")


async def connect(
    address: str | None = None,
    *,
    presence: type | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncPresence:
    """An `AsyncPresence` bound to the node at `address` (default `$WHOSTHERE_ADDRESS`),
    with the `fetch` of `presence` (a `whosthere.Presence` subclass; a `def` or an
    `async def`), if given."""
    return await AsyncPresence.connect(address, presence=presence, timeout=timeout)


async def connect_pubsub(
    address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> AsyncPubSub:
    """An `AsyncPubSub` of the node at `address` (default `$WHOSTHERE_ADDRESS`)."""
    return await AsyncPubSub.connect(address, timeout=timeout)


class AsyncPresence:
    """Presence tracking on a node, for one event loop: `await presence.track(...)`.

    Single-presence calls made in one turn of the loop go to their shard in one frame.

    Use it from the loop it was first used in (one per loop; threads each make their own).
    `close()` releases its sockets."""

    def __init__(
        self, info: NodeInfo, *, presence: type | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.info = info
        self.timeout = timeout
        self._core = PresenceCore.of(info.settings, timeout)
        self.pool_size = self._core.pool_size
        self.meta_limit = self._core.meta_limit
        # the user's class, for its `fetch` (its sync client is never made here)
        self._fetch: UserFetch | None = None if presence is None else object.__new__(presence).fetch
        self._shards = [
            self._dealer(info.endpoints[shard_name(i)], f"shard {i}") for i in range(self.pool_size)
        ]
        self._node = self._dealer(info.address, "node")
        self._pubsub: AsyncPubSub | None = None  # made by the first subscribe
        self._closings = Closings(self._untrack_owners)  # owners closed in this turn
        self._own = OwnPresences()  # tracked again on a node back at the address
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it serves, once used
        self._retracking: asyncio.Task[None] | None = None
        self._forks = forks.generation
        if info.supervisor is not None and info.supervisor.stable:
            info.supervisor.listen(self)

    @classmethod
    async def connect(
        cls,
        address: str | None = None,
        *,
        presence: type | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Self:
        """The presence of the node at `address` (default `$WHOSTHERE_ADDRESS`), with the
        `fetch` of `presence` (a `whosthere.Presence` subclass), if given."""
        return cls(await lookup(address, timeout), presence=presence, timeout=timeout)

    def _dealer(self, endpoint: str, what: str) -> AsyncDealer:
        return AsyncDealer(endpoint, timeout=self.timeout, what=what, guard=self.info.supervisor)

    def __repr__(self) -> str:
        return f"<AsyncPresence node={self.info.name!r} address={self.info.address!r}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def owner(self) -> AsyncOwner:
        """A new lightweight owner in this OS process (see `whosthere.Owner`)."""
        return AsyncOwner(self)

    @overload
    async def track(self, pid: PidOrOwner, topic: str, key: PresenceKey, meta: Meta, /) -> str: ...
    @overload
    async def track(self, channel: ChannelLike, key: PresenceKey, meta: Meta, /) -> str: ...
    async def track(self, *args: Any) -> str:
        """`track(pid_or_owner, topic, key, meta)` or `track(channel, key, meta)`."""
        call = self._core.track(args)
        ref: str = await self._call(call)
        self._own.observe(call.msg, ref)
        return ref

    async def track_many(
        self,
        entries: Iterable[tuple[int | OwnerIdentity, str, str | int, dict[str, Any]]],
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """`Presence.track_many`: batches per shard, all in flight at once."""
        return await self._run(self._core.track_many(entries, return_exceptions))

    @overload
    async def untrack(self, pid: PidOrOwner, topic: str, key: PresenceKey, /) -> None: ...
    @overload
    async def untrack(self, channel: ChannelLike, key: PresenceKey, /) -> None: ...
    @overload
    async def untrack(self, pid: PidOrOwner, /) -> None: ...
    async def untrack(self, *args: Any) -> None:
        """`untrack(pid_or_owner, topic, key)`, `untrack(channel, key)`, `untrack(owner)`.

        Owners untracked whole in one turn of the loop (a thousand connections closing at
        once) go together: one `UntrackMany` per shard for all of them."""
        if whole_owner(args):
            owner = args[0] if isinstance(args[0], AsyncOwner) else None
            await self._closings.close(owner_arg(args[0]), owner)
        else:
            await self._observed(self._core.untrack(args))

    @overload
    async def update(
        self, pid: PidOrOwner, topic: str, key: PresenceKey, meta: AsyncMetaChange, /
    ) -> str: ...
    @overload
    async def update(
        self, channel: ChannelLike, key: PresenceKey, meta: AsyncMetaChange, /
    ) -> str: ...
    async def update(self, *args: Any) -> str:
        """`update(pid_or_owner, topic, key, meta_or_fn)` or `update(channel, key, ...)`: as
        `Presence.update`; a callable may be an `async def`."""
        update = self._core.update(args, time.monotonic)
        if isinstance(update, Call):
            ref: str = await self._call(update)
            self._own.observe(update.msg, ref)
            return ref
        return await self._run(update)

    async def list(self, topic_or_channel: str | Channel) -> Presences:
        """`{key: {"metas": [...], ...}}` for the topic, through `fetch`."""
        return await self._run(self._core.list(topic_or_channel, self._fetch))

    async def get_by_key(self, topic_or_channel: str | Channel, key: str | int) -> Entry | None:
        """That key's entry through `fetch`, or None."""
        return await self._run(self._core.get_by_key(topic_or_channel, key, self._fetch))

    def subscribe(self, topic: str) -> AsyncSubscription:
        """The topic's messages, `presence_diff` events included: `async with` it, then
        `async for msg in sub` (in place once the `async with` is entered)."""
        if self._pubsub is None:
            self._pubsub = AsyncPubSub(self.info, timeout=self.timeout)
        return self._pubsub.subscribe(topic)

    async def topics(self, limit: int = 100) -> TopicCounts:
        """`Presence.topics`: the topics with the most presences, most first."""
        return await self._run(self._core.topics(limit))

    async def status(self) -> dict[str, Any]:
        """The node's process tree: each actor's name, pid, restarts (`whosthere status`)."""
        status: dict[str, Any] = await self._node.call(GetStatus())
        return status

    async def fetchers_pids(self) -> Pids:
        """OS pids of the node's fetcher workers."""
        return fetchers_of(await self.status())

    async def close(self) -> None:
        """Release the sockets; calls in flight fail with `NodeUnavailable`. Idempotent."""
        if self.info.supervisor is not None:
            self.info.supervisor.unlisten(self)
        for dealer in (*self._shards, self._node):
            await dealer.aclose()
        if self._pubsub is not None:
            await self._pubsub.close()

    # -- the driver of the core --------------------------------------------------------------

    def _shard(self, topic: str) -> AsyncDealer:
        if self._node.closed:
            raise self._closed()
        return self._shards[self._core.shard_of(topic)]

    def _closed(self) -> NodeUnavailable:
        return NodeUnavailable(f"presence of node {self.info.name!r} is closed")

    def _untrack_owners(self, owners: Pids) -> Awaitable[None]:
        return self._run(self._core.untrack_owners(owners))

    def _call(self, call: Call) -> Awaitable[Any]:
        if self._forks != forks.generation:
            self._after_fork()
        if self._node.closed:
            raise self._closed()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._shards[call.shard].call(call.msg, batch=call.batchable)

    def _after_fork(self) -> None:
        """A client made before a fork, used in the child: sockets of its own (the parent's
        are left untouched), on the child's loop."""
        self._forks = forks.generation
        for dealer in (*self._shards, self._node):  # pyzmq closes nothing in a forked child:
            with contextlib.suppress(Exception):  # this only marks them closed
                dealer.close()
        self._shards = [
            self._dealer(self.info.endpoints[shard_name(i)], f"shard {i}")
            for i in range(self.pool_size)
        ]
        self._node = self._dealer(self.info.address, "node")
        self._pubsub = None
        self._closings = Closings(self._untrack_owners)
        self._loop = None

    async def _observed(self, call: Call) -> Any:
        """A step's call, its effect on what this process holds noted."""
        try:
            reply = await self._call(call)
        except WhosthereError as exc:
            self._own.failed(call.msg, exc)
            raise
        self._own.observe(call.msg, reply)
        return reply

    def _run(self, steps: Steps[T]) -> Awaitable[T]:
        return run_async(steps, self._perform)

    def _perform(self, step: Step) -> Awaitable[Any]:
        match step:
            case Call():
                return self._observed(step)
            case Gather(calls):
                return self._gather(calls)
            case Pause(seconds):
                return asyncio.sleep(seconds)
            case Settle(awaitable):
                return awaitable

    async def _gather(self, calls: Sequence[Call]) -> Replies:
        """Every call in flight at once; a reply's `WhosthereError` in its place."""
        replies = await asyncio.gather(*(self._observed(c) for c in calls), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, WhosthereError):
                raise reply
        return replies

    # -- a node serves the address again (called by `revival.Revival`, in its thread) ---------

    def node_gone(self) -> None:
        """Calls fail with `NodeUnavailable` meanwhile (the watch says so)."""

    def node_back(self) -> None:
        """Track this process's presences again on the new node, on this client's loop."""
        loop = self._loop
        if loop is None or self._node.closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(self._start_retrack)

    def _start_retrack(self) -> None:
        guard = self.info.supervisor
        fd = None if guard is None else guard.fileno()
        if fd is not None and self._loop is not None:
            readers.renew(self._loop, fd)  # the new pidfd, for every watcher on this loop
        if self._node.closed or not self._own.held:
            return
        loop = asyncio.get_running_loop()
        self._retracking = loop.create_task(self._retrack())
        feed_loop.retracks.setdefault(loop, weakref.WeakSet()).add(self._retracking)

    async def _retrack(self) -> None:
        try:
            report_retrack(await self._gather(self._own.retrack(self.pool_size)), self.info.address)
        except Exception:  # a task nobody awaits: never silently
            log.exception("whosthere: tracking again on %s failed", self.info.address)
