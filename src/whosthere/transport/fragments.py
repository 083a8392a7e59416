"""Replication messages larger than a frame, cut into `Fragment`s and put back together.

A whole-state transfer of a shard holding a million presences is hundreds of megabytes,
while every hop refuses frames over `codec.MAX_FRAME_BYTES` unread. The sender cuts such a
message into pieces; the receiver keeps one message in progress per sender. The pieces of
one message are sent one after the other on one route, so they arrive in order unless a
piece is dropped or the route changes midway; either way the message is lost, as any
replication message may be, and a later transfer repairs it. Partial messages are bounded
in total size and age, so a sender that stops midway leaves nothing behind for long.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from whosthere.errors import MalformedFrame, MessageTooLarge
from whosthere.transport import codec
from whosthere.transport.messages import Fragment

FRAGMENT_BYTES = 8 * 1024 * 1024  # far below the frame limit once wrapped for the route
MAX_MESSAGE_BYTES = 1024 * 1024 * 1024  # a reassembled message, and all partial ones together
MAX_AGE_S = 60.0  # a partial message whose last piece came longer ago is dropped

_idents = itertools.count(random.getrandbits(32))


def encode(message: tuple[Any, ...], limit: int = FRAGMENT_BYTES) -> list[bytes]:
    """The frames that carry `message`: itself, or its fragments if it is over `limit`.
    `MessageTooLarge` if it is over what a receiver puts back together."""
    body = codec.encode(message)
    if len(body) <= limit:
        return [body]
    if len(body) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"{type(message).__name__} of {len(body)} bytes is over the {MAX_MESSAGE_BYTES} "
            "a peer accepts"
        )
    ident = next(_idents)
    count = -(-len(body) // limit)
    view = memoryview(body)
    return [
        codec.encode(Fragment(ident, i, count, bytes(view[i * limit : (i + 1) * limit])))
        for i in range(count)
    ]


class Reassembler:
    """Puts fragments back together, one message in progress per sender."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES, max_pieces: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_pieces = max_pieces or max_bytes // FRAGMENT_BYTES + 1
        self.pending: dict[str, _Partial] = {}
        self.lost = 0  # messages abandoned because a piece never came

    def add(self, sender: str, piece: Fragment, now: float) -> tuple[Any, ...] | None:
        """The whole message once its last piece arrives, else None. `MalformedFrame` if
        the pieces cannot make a message (it is dropped; later ones still work)."""
        partial = self.pending.pop(sender, None)
        if piece.part == 0:
            if partial is not None:
                self.lost += 1  # a new message: the last one lost a piece
            if not 1 < piece.parts <= self.max_pieces:
                raise MalformedFrame(f"fragment count {piece.parts} out of range")
            partial = _Partial(piece.ident, piece.parts, now)
        elif partial is None or (piece.ident, piece.parts, piece.part) != (
            partial.ident,
            partial.count,
            len(partial.parts),
        ):
            self.lost += partial is not None
            return None  # a piece of a message whose start (or a middle piece) was lost
        partial.size += len(piece.data)
        if partial.size > self.max_bytes:
            raise MalformedFrame(f"fragmented message over {self.max_bytes} bytes")
        held = partial.size + sum(p.size for p in self.pending.values())
        for other in sorted(self.pending, key=lambda s: self.pending[s].last):
            if held <= self.max_bytes:
                break
            held -= self.pending.pop(other).size  # make room: others' oldest messages go
            self.lost += 1
        partial.parts.append(piece.data)
        partial.last = now
        if len(partial.parts) < partial.count:
            self.pending[sender] = partial
            return None
        message: tuple[Any, ...] = codec.decode(b"".join(partial.parts), max_bytes=self.max_bytes)
        if isinstance(message, Fragment):
            raise MalformedFrame("a fragment inside a fragmented message")
        return message

    def expire(self, now: float, max_age: float = MAX_AGE_S) -> None:
        """Drop partial messages whose last piece came more than `max_age` seconds ago."""
        for sender, partial in list(self.pending.items()):
            if now - partial.last > max_age:
                del self.pending[sender]
                self.lost += 1


class _Partial:
    __slots__ = ("count", "ident", "last", "parts", "size")

    def __init__(self, ident: int, count: int, started: float) -> None:
        self.ident = ident
        self.count = count
        self.last = started
        self.parts: list[bytes] = []
        self.size = 0
