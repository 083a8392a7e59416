"""`AsyncPresence`: the presence API as coroutines, for one asyncio event loop.

The same calls, arguments and errors as `whosthere.Presence`; every call has a deadline
(`NodeUnavailable` past it), and none blocks the loop. Concurrent calls share one socket per
shard and are pipelined: the shard reads a burst of them in one wake-up. A cancelled call
leaves nothing behind that a later call could take for its own reply (`aio.dealer`).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from whosthere.aio.dealer import AsyncDealer
from whosthere.aio.pubsub import AsyncPubSub, AsyncSubscription
from whosthere.arguments import (
    OwnerIdentity,
    Presences,
    key_arg,
    owner_arg,
    owner_topic_args,
    start_of,
    topic_arg,
    track_batches,
)
from whosthere.client import NodeInfo, resolve_address, watch_supervisor
from whosthere.errors import NodeUnavailable, RefChanged, WhosthereError, from_wire
from whosthere.topology import is_fetcher, shard_name
from whosthere.tracker.pool import shard_for
from whosthere.transport import codec
from whosthere.transport.messages import (
    GetByKey,
    GetMeta,
    GetStatus,
    ListTopic,
    ListTopics,
    Lookup,
    Track,
    TrackMany,
    Untrack,
    UntrackMany,
    Update,
)
from whosthere.transport.sockets import DEFAULT_TIMEOUT

UNTRACK_MANY = 10_000  # owners per `UntrackMany` frame


async def lookup(address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> NodeInfo:
    """`client.lookup`, without blocking the loop."""
    address = resolve_address(address)
    dealer = AsyncDealer(address, timeout=timeout, what="node")
    try:
        info = await dealer.call(Lookup())
    finally:
        await dealer.aclose()
    return NodeInfo(
        info["name"],
        info["address"],
        dict(info["endpoints"]),
        info["settings"],
        watch_supervisor(address, info),
    )


async def connect(
    address: str | None = None,
    *,
    presence: type | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncPresence:
    """An `AsyncPresence` bound to the node at `address` (default `$WHOSTHERE_ADDRESS`),
    with the `fetch` of `presence` (a `whosthere.Presence` subclass; a `def` or an
    `async def`), if given."""
    return AsyncPresence(await lookup(address, timeout), presence=presence, timeout=timeout)


async def connect_pubsub(
    address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> AsyncPubSub:
    """An `AsyncPubSub` of the node at `address` (default `$WHOSTHERE_ADDRESS`)."""
    return AsyncPubSub(await lookup(address, timeout), timeout=timeout)


class AsyncOwner(OwnerIdentity):
    """`whosthere.Owner` for asyncio: `await owner.close()`, `async with`."""

    __slots__ = ("_presence",)

    def __init__(self, presence: AsyncPresence) -> None:
        super().__init__()
        self._presence = presence

    def close(self) -> asyncio.Future[None]:
        """Untrack every presence of this owner (one message per shard): `await owner.close()`.
        Idempotent. It returns a future, not a coroutine, so that a hundred thousand closes
        gathered at once cost no task each (`asyncio.ensure_future` takes either)."""
        if self.closed:
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        return self._presence._untrack_whole(self)

    async def __aenter__(self) -> AsyncOwner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
        self.pool_size = int(info.settings.get("pool_size", 1))
        self.meta_limit = int(info.settings.get("meta_limit", codec.DEFAULT_META_LIMIT))
        # the user's class, for its `fetch` (its sync client is never made here)
        self._callbacks = object.__new__(presence) if presence is not None else None
        self._shards = [
            self._dealer(info.endpoints[shard_name(i)], f"shard {i}") for i in range(self.pool_size)
        ]
        self._node = self._dealer(info.address, "node")
        self._pubsub: AsyncPubSub | None = None  # made by the first subscribe
        # owners untracked whole in this turn of the loop: (pid, owner or None, future)
        self._closing: list[tuple[int, AsyncOwner | None, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _dealer(self, endpoint: str, what: str) -> AsyncDealer:
        return AsyncDealer(endpoint, timeout=self.timeout, what=what, guard=self.info.supervisor)

    def __repr__(self) -> str:
        return f"<AsyncPresence node={self.info.name!r} address={self.info.address!r}>"

    async def __aenter__(self) -> AsyncPresence:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def owner(self) -> AsyncOwner:
        """A new lightweight owner in this OS process (see `whosthere.Owner`)."""
        return AsyncOwner(self)

    async def track(self, *args: Any) -> str:
        """`track(pid_or_owner, topic, key, meta)` or `track(channel, key, meta)`."""
        pid, topic, (key, meta) = owner_topic_args(args, 2, "track")
        packed = codec.pack_meta(meta, self.meta_limit)
        msg = Track(pid, start_of(pid), topic, key_arg(key), packed)
        return await self._shard(topic).call(msg, batch=True)

    async def track_many(
        self,
        entries: Iterable[tuple[Any, str, str | int, dict[str, Any]]],
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """`Presence.track_many`: batches per shard, all in flight at once."""
        batches, count = track_batches(entries, self.pool_size, self.meta_limit)
        calls = [
            (dealer, batch, places)
            for dealer, shard_batches in zip(self._shards, batches, strict=True)
            for batch, places in shard_batches
        ]
        replies = await asyncio.gather(
            *(dealer.call(TrackMany(batch)) for dealer, batch, _ in calls), return_exceptions=True
        )
        results: list[Any] = [None] * count
        for (_, _, places), reply in zip(calls, replies, strict=True):
            if isinstance(reply, BaseException) and not isinstance(reply, WhosthereError):
                raise reply
            for i, place in enumerate(places):
                value = reply if isinstance(reply, BaseException) else reply[i]
                results[place] = from_wire(value[0], value[1]) if isinstance(value, list) else value
        if not return_exceptions:
            for result in results:
                if isinstance(result, WhosthereError):
                    raise result
        return results

    async def untrack(self, *args: Any) -> None:
        """`untrack(pid_or_owner, topic, key)`, `untrack(channel, key)`, `untrack(owner)`.

        Owners untracked whole in one turn of the loop (a thousand connections closing at
        once) go together: one `UntrackMany` per shard for all of them."""
        if len(args) == 1 and not hasattr(args[0], "topic"):
            await self._untrack_whole(args[0])
            return
        pid, topic, (key,) = owner_topic_args(args, 1, "untrack")
        await self._shard(topic).call(Untrack(pid, topic, key_arg(key)), batch=True)

    async def update(self, *args: Any) -> str:
        """`update(pid_or_owner, topic, key, meta_or_fn)` or `update(channel, key, ...)`: as
        `Presence.update`; a callable may be an `async def`."""
        pid, topic, (key, meta_or_fn) = owner_topic_args(args, 2, "update")
        key = key_arg(key)
        shard = self._shard(topic)
        if not callable(meta_or_fn):
            packed = codec.pack_meta(meta_or_fn, self.meta_limit)
            return await shard.call(Update(pid, topic, key, packed, None), batch=True)
        fn: Callable[[dict[str, Any]], Any] = meta_or_fn
        deadline = time.monotonic() + self.timeout
        for attempt in itertools.count():
            current = codec.unpack(await shard.call(GetMeta(pid, topic, key), batch=True))
            new = fn(dict(current))
            if inspect.isawaitable(new):
                new = await new
            packed = codec.pack_meta(new, self.meta_limit)
            try:
                update = Update(pid, topic, key, packed, current["phx_ref"])
                return await shard.call(update, batch=True)
            except RefChanged:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
        raise RefChanged(
            f"update of {key!r} on {topic!r} kept losing races to other writers for "
            f"{self.timeout:g} s"
        )

    async def list(self, topic_or_channel: Any) -> Presences:
        """`{key: {"metas": [...], ...}}` for the topic, through `fetch`."""
        topic = topic_arg(topic_or_channel)
        grouped: Presences = codec.unpack(await self._shard(topic).call(ListTopic(topic)))
        return await self._fetch(topic, grouped) if grouped else grouped

    async def get_by_key(self, topic_or_channel: Any, key: str | int) -> dict[str, Any] | None:
        """That key's entry through `fetch`, or None."""
        topic = topic_arg(topic_or_channel)
        key = key_arg(key)
        metas = await self._shard(topic).call(GetByKey(topic, key), batch=True)
        if not metas:
            return None
        fetched = await self._fetch(topic, {key: {"metas": [codec.unpack(m) for m in metas]}})
        return fetched.get(key)

    def _untrack_whole(self, pid_or_owner: Any) -> asyncio.Future[None]:
        pid = owner_arg(pid_or_owner)
        owner = pid_or_owner if isinstance(pid_or_owner, AsyncOwner) else None
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._closing.append((pid, owner, future))
        if len(self._closing) == 1:  # after the other tasks of this turn
            loop.call_soon(self._close_together)
        return future

    def _close_together(self) -> None:
        batch, self._closing = self._closing, []
        task = asyncio.get_running_loop().create_task(self._untrack_many(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _untrack_many(
        self, batch: list[tuple[int, AsyncOwner | None, asyncio.Future[None]]]
    ) -> None:
        owners = [pid for pid, _, _ in batch]
        chunks = [owners[i : i + UNTRACK_MANY] for i in range(0, len(owners), UNTRACK_MANY)]
        try:
            await asyncio.gather(
                *(shard.call(UntrackMany(chunk)) for chunk in chunks for shard in self._shards)
            )
        except Exception as exc:  # every close of the batch fails alike
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, owner, future in batch:
            if owner is not None:
                owner.closed = True
            if not future.done():
                future.set_result(None)

    def subscribe(self, topic: str) -> AsyncSubscription:
        """The topic's messages, `presence_diff` events included: `async with` it, then
        `async for msg in sub` (in place once the `async with` is entered)."""
        if self._pubsub is None:
            self._pubsub = AsyncPubSub(self.info, timeout=self.timeout)
        return self._pubsub.subscribe(topic)

    async def topics(self, limit: int = 100) -> list[tuple[str, int]]:
        """`Presence.topics`: the topics with the most presences, most first."""
        replies = await asyncio.gather(*(shard.call(ListTopics(limit)) for shard in self._shards))
        found = [tuple(t) for reply in replies for t in reply]
        return sorted(found, key=lambda t: -t[1])[:limit]  # type: ignore[return-value]

    async def status(self) -> dict[str, Any]:
        """The node's process tree: each actor's name, pid, restarts (`whosthere status`)."""
        return await self._node.call(GetStatus())

    async def fetchers_pids(self) -> list[int]:
        status = await self._node.call(GetStatus())
        return [a["pid"] for a in status["actors"] if is_fetcher(a["name"])]

    async def close(self) -> None:
        """Release the sockets; calls in flight fail with `NodeUnavailable`. Idempotent."""
        for dealer in (*self._shards, self._node):
            await dealer.aclose()
        if self._pubsub is not None:
            await self._pubsub.close()

    async def _fetch(self, topic: str, presences: Presences) -> Presences:
        if self._callbacks is None:
            return presences
        fetched = self._callbacks.fetch(topic, presences)
        if inspect.isawaitable(fetched):
            fetched = await fetched
        return fetched

    def _shard(self, topic: str) -> AsyncDealer:
        if self._node.closed:
            raise NodeUnavailable(f"presence of node {self.info.name!r} is closed")
        return self._shards[shard_for(topic, self.pool_size) if self.pool_size > 1 else 0]
