"""What the presence calls accept, checked the same for the sync and the asyncio client: pids
and owners, channels, topics and keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from whosthere.names import check_topic
from whosthere.owners import OwnerIdentity
from whosthere.transport import codec
from whosthere.watch import is_owner

# What users pass, for their type checkers (the `@overload`s of track, untrack and update)
PidOrOwner = int | OwnerIdentity  # an OS pid, or an owner made by `presence.owner()`
PresenceKey = str | int  # an int is sent as its str
Meta = dict[str, Any]
MetaChange = Meta | Callable[[Meta], Meta]  # a new meta, or a function of the current one
AsyncMetaChange = Meta | Callable[[Meta], Meta | Awaitable[Meta]]  # the function may be async


class ChannelLike(Protocol):
    """What `track(channel, key, meta)` takes: a `Channel`, or any object of the user's with
    `pid` and `topic` (as Phoenix's socket)."""

    @property
    def pid(self) -> PidOrOwner: ...

    @property
    def topic(self) -> str: ...


class Channel(NamedTuple):
    """A (pid or owner, topic) pair, as Phoenix's socket: `track(channel, key, meta)`."""

    pid: int | OwnerIdentity
    topic: str


def owner_arg(pid: object) -> int:
    """An owner as the wire names it: an OS pid, or an `Owner`'s id."""
    if isinstance(pid, OwnerIdentity):
        return pid.id
    if not is_owner(pid):
        raise TypeError(f"pid must be an OS pid (a positive int) or an Owner, got {pid!r}")
    return pid


def key_arg(key: object) -> str:
    """A key as a str (an int cast); `ValueError` past `codec.MAX_NAME_BYTES`."""
    if isinstance(key, str):
        return codec.check_name(key, "key")
    if isinstance(key, int) and not isinstance(key, bool):
        return codec.check_name(str(key), "key")
    raise TypeError(f"key must be a str or an int, got {type(key).__name__}")


def topic_arg(topic_or_channel: object) -> str:
    """The topic of a topic (a str) or of a channel (its `topic`)."""
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


def whole_owner(args: tuple[Any, ...]) -> bool:
    """Whether `untrack(*args)` names an owner alone (all of its presences go)."""
    return len(args) == 1 and not hasattr(args[0], "topic")
