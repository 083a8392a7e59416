"""`PresenceCore`: the presence calls without I/O, one copy for `Presence` and `AsyncPresence`.

What each call checks and packs (`arguments`, `codec.pack_meta`), which shard it goes to
(`tracker.pool.shard_for`: crc32, never Python's salted hash), the messages it sends, and what
their replies become: `list`'s and `get_by_key`'s metas unpacked and passed through the user's
`fetch`, `track_many`'s replies put back in input order, the busiest topics of every shard. A
call of one message returns its `steps.Call`; the others are generators of steps, which each
client runs with its own I/O (`steps`). Nothing here touches a socket or sleeps, and the
update's deadline is measured on a clock the driver passes in.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from typing import Any

from whosthere.arguments import key_arg, owner_arg, owner_topic_args, topic_arg
from whosthere.errors import RefChanged, WhosthereError, from_wire
from whosthere.names import check_topic
from whosthere.owners import start_of
from whosthere.steps import Call, Gather, Pause, Replies, Steps, settled
from whosthere.topology import is_fetcher
from whosthere.tracker.pool import shard_for
from whosthere.transport import codec
from whosthere.transport.messages import (
    GetByKey,
    GetMeta,
    ListTopic,
    ListTopics,
    StartTime,
    Track,
    TrackMany,
    Untrack,
    UntrackMany,
    UntrackPid,
    Update,
)

Presences = dict[str, dict[str, Any]]  # {key: {"metas": [meta, ...], ...fetched}}
Entry = dict[str, Any]  # one key's {"metas": [meta, ...], ...fetched}
UserFetch = Callable[
    [str, Presences], Any
]  # the user's `fetch`: Presences, or an awaitable of them
TopicCounts = list[tuple[str, int]]  # [(topic, presences), ...]
Pids = list[int]

BATCH = 1000  # tracks per TrackMany frame: large enough to amortize, small enough to pipeline
BATCH_BYTES = 4 * 1024 * 1024  # and bytes: frames and the diffs they make stay small
UNTRACK_MANY = 10_000  # owners per `UntrackMany` frame

Batches = list[list[tuple[list[Any], list[int]]]]  # per shard: [(TrackMany entries, places)]


class PresenceCore:
    """The calls of one client to one node's shards: `pool_size` shards, metas up to
    `meta_limit` bytes, an update's retries bounded by `timeout` seconds."""

    __slots__ = ("meta_limit", "pool_size", "timeout")

    def __init__(self, pool_size: int, meta_limit: int, timeout: float) -> None:
        self.pool_size = pool_size
        self.meta_limit = meta_limit
        self.timeout = timeout

    @classmethod
    def of(cls, settings: dict[str, Any], timeout: float) -> PresenceCore:
        """The core for a node's settings, as `Lookup` tells them (`client.NodeInfo`)."""
        pool_size = int(settings.get("pool_size", 1))
        return cls(pool_size, int(settings.get("meta_limit", codec.DEFAULT_META_LIMIT)), timeout)

    def shard_of(self, topic: str) -> int:
        """The index of the shard that holds `topic`."""
        return shard_for(topic, self.pool_size) if self.pool_size > 1 else 0

    # -- calls of one message ----------------------------------------------------------------

    def track(self, args: tuple[Any, ...]) -> Call:
        """`track(pid, topic, key, meta)` or `track(channel, key, meta)`."""
        pid, topic, (key, meta) = owner_topic_args(args, 2, "track")
        packed = codec.pack_meta(meta, self.meta_limit)
        msg = Track(pid, start_of(pid), topic, key_arg(key), packed)
        shard = shard_for(topic, self.pool_size) if self.pool_size > 1 else 0  # shard_of, inline
        return Call(shard, msg, True)

    def untrack(self, args: tuple[Any, ...]) -> Call:
        """`untrack(pid, topic, key)` or `untrack(channel, key)` (see `untrack_owner`)."""
        pid, topic, (key,) = owner_topic_args(args, 1, "untrack")
        return Call(self.shard_of(topic), Untrack(pid, topic, key_arg(key)), True)

    def update(self, args: tuple[Any, ...], clock: Callable[[], float]) -> Call | Steps[str]:
        """`update(pid, topic, key, meta_or_fn)` or `update(channel, key, meta_or_fn)`: a dict
        is one `Call`; a function, the steps that read the meta, run it and write the result
        if nobody wrote meanwhile (`_update_with`)."""
        pid, topic, (key, meta_or_fn) = owner_topic_args(args, 2, "update")
        key = key_arg(key)
        shard = self.shard_of(topic)
        if not callable(meta_or_fn):
            packed = codec.pack_meta(meta_or_fn, self.meta_limit)
            return Call(shard, Update(pid, topic, key, packed, None), True)
        return self._update_with(meta_or_fn, shard, GetMeta(pid, topic, key), clock)

    # -- calls of many steps -----------------------------------------------------------------

    def _update_with(
        self,
        fn: Callable[[dict[str, Any]], Any],
        shard: int,
        read: GetMeta,
        clock: Callable[[], float],
    ) -> Steps[str]:
        """Read the meta, apply `fn` (here, in the caller), and write only if the meta is still
        the one read (`Update.expect_ref`): else again on the newer meta, with a random backoff
        so that racing writers spread out instead of colliding again (no one starves).
        `RefChanged` if other writers keep winning for the whole timeout."""
        pid, topic, key = read
        deadline = clock() + self.timeout
        for attempt in itertools.count():
            current = codec.unpack((yield Call(shard, read, True)))
            new = yield from settled(fn(dict(current)))
            packed = codec.pack_meta(new, self.meta_limit)
            write = Call(shard, Update(pid, topic, key, packed, current["phx_ref"]), True)
            try:
                ref: str = yield write
            except RefChanged:
                if clock() >= deadline:
                    break
                yield Pause(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
            else:
                return ref
        raise RefChanged(
            f"update of {key!r} on {topic!r} kept losing races to other writers for "
            f"{self.timeout:g} s"
        )

    def untrack_owner(self, owner: int) -> Steps[None]:
        """`untrack(pid)`: every presence of that pid or owner, in every shard at once."""
        raise_first((yield Gather([Call(i, UntrackPid(owner), True) for i in self._shards()])))

    def untrack_owners(self, owners: list[int]) -> Steps[None]:
        """Every presence of each of `owners` (many owners closed together), in every shard:
        `UntrackMany` frames of up to `UNTRACK_MANY` owners, all at once."""
        chunks = [owners[i : i + UNTRACK_MANY] for i in range(0, len(owners), UNTRACK_MANY)]
        calls = [Call(i, UntrackMany(chunk)) for chunk in chunks for i in self._shards()]
        raise_first((yield Gather(calls)))

    def track_many(
        self, entries: Iterable[tuple[Any, str, Any, Any]], return_exceptions: bool
    ) -> Steps[list[Any]]:
        """`track_many`: every entry checked before any is sent, batches per shard all sent at
        once, and each entry's phx_ref (or error) in its place. A batch that fails as a whole
        fails each of its entries; the first error in input order is raised once all are
        done, unless `return_exceptions`."""
        batches, count = track_batches(entries, self.pool_size, self.meta_limit)
        calls = [Call(i, TrackMany(batch)) for i, shard in enumerate(batches) for batch, _ in shard]
        replies = yield Gather(calls)
        results: list[Any] = [None] * count
        placed = (places for shard in batches for _, places in shard)
        for places, reply in zip(placed, replies, strict=True):
            values = [reply] * len(places) if isinstance(reply, WhosthereError) else reply
            for place, value in zip(places, values, strict=True):
                if isinstance(value, list):  # [error class name, message]
                    results[place] = from_wire(value[0], value[1])
                else:
                    results[place] = value
        if not return_exceptions:
            for result in results:  # the first error in input order
                if isinstance(result, WhosthereError):
                    raise result
        return results

    def list(self, topic_or_channel: object, fetch: UserFetch | None) -> Steps[Presences]:
        """`{key: {"metas": [...], ...}}` for the topic, through `fetch` (None: as listed)."""
        topic = topic_arg(topic_or_channel)
        grouped: Presences = codec.unpack((yield Call(self.shard_of(topic), ListTopic(topic))))
        if not grouped or fetch is None:
            return grouped
        fetched: Presences = yield from settled(fetch(topic, grouped))
        return fetched

    def get_by_key(
        self, topic_or_channel: object, key: object, fetch: UserFetch | None
    ) -> Steps[Entry | None]:
        """That key's entry through `fetch`, or None if it has no presence."""
        topic = topic_arg(topic_or_channel)
        key = key_arg(key)
        metas = yield Call(self.shard_of(topic), GetByKey(topic, key), True)
        if not metas:
            return None
        presences: Presences = {key: {"metas": [codec.unpack(m) for m in metas]}}
        if fetch is not None:
            presences = yield from settled(fetch(topic, presences))
        return presences.get(key)

    def topics(self, limit: int) -> Steps[TopicCounts]:
        """The node's `limit` topics with the most presences, most first (every shard asked)."""
        replies = yield Gather([Call(i, ListTopics(limit)) for i in self._shards()])
        raise_first(replies)
        found = [(str(topic), int(count)) for reply in replies for topic, count in reply]
        return sorted(found, key=lambda t: -t[1])[:limit]

    def _shards(self) -> range:
        return range(self.pool_size)


def raise_first(replies: Replies) -> None:
    """Raise the first error among a `Gather`'s replies, if any."""
    for reply in replies:
        if isinstance(reply, WhosthereError):
            raise reply


def fetchers_of(status: dict[str, Any]) -> Pids:
    """The OS pids of the fetcher workers, from the node's `GetStatus` reply."""
    return [actor["pid"] for actor in status["actors"] if is_fetcher(actor["name"])]


def track_batches(
    entries: Iterable[tuple[Any, str, Any, Any]], pool_size: int, meta_limit: int
) -> tuple[Batches, int]:
    """`track_many`'s entries checked (all before any is sent: `TypeError`, `ValueError`,
    `InvalidMeta`) and cut into `TrackMany` batches per shard, by count and by bytes; with
    each batch, the entries' places in the input. Returns them and the number of entries."""
    # one meta object shared by many entries is packed once; only for a list or tuple,
    # whose entries cannot change under us (a generator may reuse and mutate one dict)
    share = isinstance(entries, (list, tuple))
    packed_metas: dict[int, bytes] = {}  # id(meta) -> packed
    starts: dict[int, StartTime] = {}
    batches: Batches = [[] for _ in range(pool_size)]
    sizes = [BATCH_BYTES] * pool_size  # bytes in each shard's open batch
    count = 0
    for owner, topic, raw_key, meta in entries:
        pid = owner_arg(owner)
        codec.check_name(check_topic(topic))
        packed = packed_metas.get(id(meta)) if share else None
        if packed is None:
            packed = codec.pack_meta(meta, meta_limit)
            if share:
                packed_metas[id(meta)] = packed
        start = starts.get(pid, starts)  # the dict itself: not read yet (None is a value)
        if start is starts:
            start = starts[pid] = start_of(pid)
        shard = shard_for(topic, pool_size) if pool_size > 1 else 0
        key = key_arg(raw_key)
        size = len(packed) + len(topic) + len(key) + 32
        if sizes[shard] + size > BATCH_BYTES or len(batches[shard][-1][0]) >= BATCH:
            batches[shard].append(([], []))  # cut by count and by bytes
            sizes[shard] = 0
        batch, places = batches[shard][-1]
        batch.append([pid, start, topic, key, packed])
        places.append(count)
        sizes[shard] += size
        count += 1
    return batches, count
