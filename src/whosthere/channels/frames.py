"""Phoenix's V2 serializer: the frames of the Channels protocol, in and out (no sockets here).

A text frame is a JSON array `[join_ref, ref, topic, event, payload]`; refs are the client's
strings, echoed as they came, and null where a frame answers nothing (a broadcast). A binary
frame carries a raw payload (a JS `ArrayBuffer`) behind a small header of byte-sized lengths:
what the client sends is a push (kind 0), what the server sends is a push (0), a reply (1)
or a broadcast (2).
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

PUSH, REPLY, BROADCAST = 0, 1, 2  # binary frame kinds
MAX_FIELD = 255  # a binary header gives each string one byte of length

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.JSONDecoder().decode


class BadFrame(ValueError):
    """A frame that is not the V2 protocol's: the connection that sent it is closed."""


class Frame(NamedTuple):
    """One frame, either way."""

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any  # JSON value, or bytes from/for a binary frame


def decode(data: str | bytes) -> Frame:
    """The message of a frame from a client (text: JSON array; bytes: a binary push)."""
    if isinstance(data, bytes):
        return _decode_binary(data)
    try:
        parts = _loads(data)
    except ValueError as exc:
        raise BadFrame(f"not JSON: {exc}") from None
    if not isinstance(parts, list) or len(parts) != 5:
        raise BadFrame("a frame is [join_ref, ref, topic, event, payload]")
    join_ref, ref, topic, event, payload = parts
    for name, value in (("join_ref", join_ref), ("ref", ref)):
        if value is not None and not isinstance(value, str):
            raise BadFrame(f"{name} must be a string or null, not {type(value).__name__}")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise BadFrame("topic and event must be strings")
    return Frame(join_ref, ref, topic, event, payload)


def _decode_binary(data: bytes) -> Frame:
    if len(data) < 5 or data[0] != PUSH:
        raise BadFrame("a binary frame from a client is a push: kind 0 and four lengths")
    sizes = data[1:5]
    at, fields = 5, []
    for size in sizes:
        field = data[at : at + size]
        if len(field) != size:
            raise BadFrame("a binary frame cut short")
        try:
            fields.append(field.decode())
        except UnicodeDecodeError:
            raise BadFrame("a binary frame's header is not UTF-8") from None
        at += size
    join_ref, ref, topic, event = fields
    return Frame(join_ref or None, ref or None, topic, event, data[at:])


def encode(msg: Frame) -> str | bytes:
    """A frame to send: text, or binary when the payload is bytes (or a reply's response)."""
    payload = msg.payload
    if isinstance(payload, bytes | bytearray | memoryview):
        return _push_binary(msg, bytes(payload))
    if msg.event == "phx_reply" and isinstance(payload, dict):
        response = payload.get("response")
        if isinstance(response, bytes | bytearray | memoryview):
            return _reply_binary(msg, payload.get("status", "ok"), bytes(response))
    return _dumps([msg.join_ref, msg.ref, msg.topic, msg.event, payload])


def broadcast(topic: str, event: str, payload: Any) -> str | bytes:
    """The frame of a broadcast, made once for every socket of the topic (no refs)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        head = _fields(topic, event)
        return bytes((BROADCAST, len(head[0]), len(head[1]))) + b"".join(head) + bytes(payload)
    return _dumps([None, None, topic, event, payload])


def _push_binary(msg: Frame, payload: bytes) -> bytes:
    join_ref, topic, event = _fields(msg.join_ref or "", msg.topic, msg.event)
    head = bytes((PUSH, len(join_ref), len(topic), len(event)))
    return head + join_ref + topic + event + payload


def _reply_binary(msg: Frame, status: str, payload: bytes) -> bytes:
    join_ref, ref, topic, status_b = _fields(msg.join_ref or "", msg.ref or "", msg.topic, status)
    head = bytes((REPLY, len(join_ref), len(ref), len(topic), len(status_b)))
    return head + join_ref + ref + topic + status_b + payload


def _fields(*texts: str) -> list[bytes]:
    out = []
    for text in texts:
        raw = text.encode()
        if len(raw) > MAX_FIELD:
            raise BadFrame(f"{text[:40]!r}... is over {MAX_FIELD} bytes: no binary frame for it")
        out.append(raw)
    return out


_JSON_LEAVES = frozenset((str, int, bool, type(None)))  # as they are, nothing to look into


def json_problem(value: Any, where: str = "meta") -> str | None:
    """Where `value` stops being what a text frame carries, and why (`meta['a'][0] is bytes`);
    None if all of it is JSON. Stricter than `json.dumps`, which turns a dict's int key into
    a string (two keys may then collide) and writes NaN, which `JSON.parse` refuses."""
    kind = type(value)
    if kind in _JSON_LEAVES:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}, which JSON cannot carry"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r} ({type(key).__name__}); JSON's are strings"
            if type(item) not in _JSON_LEAVES:
                problem = json_problem(item, f"{where}[{key!r}]")
                if problem is not None:
                    return problem
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if type(item) not in _JSON_LEAVES:
                problem = json_problem(item, f"{where}[{i}]")
                if problem is not None:
                    return problem
        return None
    if isinstance(value, str | int):  # their subclasses (an enum of str, say) write as they do
        return None
    return f"{where} is {kind.__name__}, which JSON cannot carry"


def reply(join_ref: str | None, ref: str | None, topic: str, status: str, response: Any) -> Frame:
    """`phx_reply` to the client's push `ref`."""
    return Frame(join_ref, ref, topic, "phx_reply", {"status": status, "response": response})
