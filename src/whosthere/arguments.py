"""What the presence calls accept, checked the same for the sync and the asyncio client: pids
and owners, channels, topics and keys; and how `track_many` cuts its batches."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any, NamedTuple

from whosthere.pubsub import check_topic
from whosthere.tracker.pool import shard_for
from whosthere.transport import codec
from whosthere.watch import is_owner, os_pid, owner_of, start_time
from whosthere.watch.identity import OWNER_SERIALS

Presences = dict[str, dict[str, Any]]  # {key: {"metas": [meta, ...], ...fetched}}
BATCH = 1000  # tracks per TrackMany frame: large enough to amortize, small enough to pipeline
BATCH_BYTES = 4 * 1024 * 1024  # and bytes: frames and the diffs they make stay small


class Channel(NamedTuple):
    """A (pid or owner, topic) pair, as Phoenix's socket: `track(channel, key, meta)`."""

    pid: int | OwnerIdentity
    topic: str


class OwnerIdentity:
    """What names an owner on the wire: its OS pid and its id (`watch.identity`)."""

    __slots__ = ("closed", "id", "pid")

    def __init__(self) -> None:
        serial = next(_serials)
        if serial >= OWNER_SERIALS:
            raise OverflowError(f"a process makes at most {OWNER_SERIALS} owners")
        self.pid = os.getpid()
        self.id = owner_of(self.pid, serial)
        self.closed = False

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<{type(self).__name__} {self.id >> 32} of pid {self.pid}{state}>"


_serials = itertools.count(1)  # owners made in this process (0 is the process itself)


_own_start: tuple[int, Any] = (0, None)  # (this process's pid, its start time), once read


def start_of(owner: int) -> Any:
    """The start time of the owner's OS process, as the node links it. This process's own
    (every `Owner` made here) is read once: a track should not cost a read of /proc."""
    global _own_start
    pid = os_pid(owner)
    if pid != os.getpid():
        return start_time(pid)
    if _own_start[0] != pid:  # first use, or a forked child
        _own_start = (pid, start_time(pid))
    return _own_start[1]


def owner_arg(pid: object) -> int:
    """An owner as the wire names it: an OS pid, or an `Owner`'s id."""
    if isinstance(pid, OwnerIdentity):
        return pid.id
    if not is_owner(pid):
        raise TypeError(f"pid must be an OS pid (a positive int) or an Owner, got {pid!r}")
    return pid  # type: ignore[return-value]


def key_arg(key: object) -> str:
    """A key as a str (an int cast); `ValueError` past `codec.MAX_NAME_BYTES`."""
    if isinstance(key, str):
        return codec.check_name(key, "key")
    if isinstance(key, int) and not isinstance(key, bool):
        return codec.check_name(str(key), "key")
    raise TypeError(f"key must be a str or an int, got {type(key).__name__}")


def topic_arg(topic_or_channel: object) -> str:
    if isinstance(topic_or_channel, str):
        return topic_or_channel
    topic = getattr(topic_or_channel, "topic", None)
    if isinstance(topic, str):
        return topic
    raise TypeError(f"expected a topic (str) or a channel, got {type(topic_or_channel).__name__}")


def owner_topic_args(
    args: tuple[Any, ...], rest: int, call: str
) -> tuple[int, str, tuple[Any, ...]]:
    """Split (pid, topic, *rest) or (channel, *rest)."""
    if len(args) == rest + 2:
        return owner_arg(args[0]), check_topic(args[1]), args[2:]
    if len(args) == rest + 1 and hasattr(args[0], "pid") and hasattr(args[0], "topic"):
        return owner_arg(args[0].pid), check_topic(args[0].topic), args[1:]
    raise TypeError(f"{call} takes (pid, topic, ...) or (channel, ...); got {len(args)} arguments")


Batches = list[list[tuple[list[Any], list[int]]]]  # per shard: [(TrackMany entries, places)]


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
    starts: dict[int, Any] = {}
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
        start = starts.get(pid, starts)
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
