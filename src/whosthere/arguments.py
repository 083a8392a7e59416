"""What the presence calls accept, checked the same for the sync and the asyncio client: pids
and owners, channels, topics and keys; and how `track_many` cuts its batches."""

from __future__ import annotations

import itertools
import os
from typing import Any, NamedTuple

from whosthere.pubsub import check_topic
from whosthere.transport import codec
from whosthere.watch import is_owner, owner_of
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
