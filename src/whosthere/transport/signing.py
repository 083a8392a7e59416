"""Frames on the Redis engine, sealed and opened: who sent them, signed with the cookie.

Redis is a shared server: anyone who can publish there can publish into a node's channel.
With a cookie, every frame carries an HMAC-SHA256 of its sender and body under a key derived
from the cookie (never the cookie itself); a frame unsigned or wrongly signed is refused
(`MalformedFrame`), and the actor drops and logs it. Without a cookie, Redis's own AUTH and
network are the only fence, as with phoenix_pubsub_redis.

A signature proves a frame came from a holder of the cookie, not that it is fresh: one who
can publish on the server could replay an old frame. Replication shrugs at replays (a
heartbeat carries its send time and clocks; merges are idempotent).
"""

from __future__ import annotations

import hashlib
import hmac

from whosthere.errors import MalformedFrame
from whosthere.transport import codec
from whosthere.transport.messages import EngineFrame


def signing_key(cookie: str | None) -> bytes | None:
    """The key every holder of `cookie` derives alike (None without a cookie)."""
    if not cookie:
        return None
    return hashlib.sha256(b"whosthere-engine-signing:" + cookie.encode()).digest()


def _mac(key: bytes, sender: str, body: bytes) -> bytes:
    sender_bytes = sender.encode()
    signed = len(sender_bytes).to_bytes(4, "big") + sender_bytes + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def seal(key: bytes | None, sender: str, body: bytes) -> bytes:
    """The bytes to publish for `body` (an encoded message) from `sender`."""
    mac = _mac(key, sender, body) if key is not None else b""
    return codec.encode(EngineFrame(sender, body, mac))


def open_frame(key: bytes | None, raw: bytes) -> EngineFrame:
    """The frame `raw` carries, its signature checked when there is a key. `MalformedFrame`
    if it is not a frame, or (with a key) unsigned or wrongly signed."""
    frame = codec.decode(raw)
    if not isinstance(frame, EngineFrame):
        raise MalformedFrame(f"expected an EngineFrame, got {type(frame).__name__}")
    if key is not None:
        if not frame.mac:
            raise MalformedFrame(f"unsigned frame claiming to be from {frame.sender!r}")
        if not hmac.compare_digest(frame.mac, _mac(key, frame.sender, frame.body)):
            raise MalformedFrame(f"wrongly signed frame claiming to be from {frame.sender!r}")
    return frame
