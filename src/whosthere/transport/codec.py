"""msgpack encoding of the messages in `messages`: the only module that imports msgpack.

Strings stay `str` (bin type for bytes), arrays decode as lists except in fields annotated as
`tuple`, map keys may be any hashable scalar. `decode` never raises anything but
`MalformedFrame`, so a receiver can log and drop a bad frame and keep serving.

Limits, each checked where a value enters (the client, before sending) and again where it is
received (`decode`, `check_packed_meta`: a raw frame bypasses the client):
- a frame: `MAX_FRAME_BYTES` (sockets refuse larger ones unread, see `sockets.socket`); a
  client's request `MAX_REQUEST_BYTES`, leaving room for what an actor wraps around it;
- a topic, key or event: `MAX_NAME_BYTES` of UTF-8;
- a meta or broadcast payload: containers nested at most `MAX_DEPTH` deep. msgpack refuses to
  unpack past 1,024 levels: a deeper value, once stored, would break every later `list`;
- a meta: only finite floats (NaN != NaN: a meta holding one could never be matched to be
  removed), a start time likewise.
"""

from __future__ import annotations

import math
import reprlib
import threading
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from whosthere.errors import InvalidMeta, MalformedFrame, MessageTooLarge
from whosthere.transport import messages as m

# msgpack ships no types: what it is called for, typed once
_packb: Callable[..., bytes] = msgpack.packb
_unpackb: Callable[..., Any] = msgpack.unpackb
_threads = threading.local()


def _packer() -> Callable[[Any], bytes]:
    """This thread's `Packer.pack`: `msgpack.packb` makes a new Packer every call (a third
    of a small message's cost). One per thread: a Packer holds a buffer, and a value whose
    type has Python methods (a dict subclass) can let another thread in mid-pack."""
    try:
        pack: Callable[[Any], bytes] = _threads.pack
    except AttributeError:
        pack = _threads.pack = msgpack.Packer(use_bin_type=True).pack
    return pack


# Stable wire tags: never renumber, only append (peers of another version read these).
TAGS: dict[type, int] = {
    m.Ok: 1,
    m.Failed: 2,
    m.Ping: 3,
    m.GetStats: 4,
    m.Calls: 5,
    m.ActorReady: 10,
    m.ActorFailed: 17,
    m.Lookup: 11,
    m.GetStatus: 12,
    m.Link: 13,
    m.Unlink: 14,
    m.ProcessesExited: 15,
    m.Shutdown: 16,
    m.Subscribe: 20,
    m.Broadcast: 21,
    m.Published: 22,
    m.Track: 30,
    m.Untrack: 31,
    m.UntrackPid: 32,
    m.Update: 33,
    m.GetMeta: 34,
    m.ListTopic: 35,
    m.GetByKey: 36,
    m.Fetch: 40,
    m.Fetched: 41,
    m.MetasDiff: 42,
    m.FetcherReady: 43,
    m.MetasResync: 44,
    m.MetasState: 45,
    m.PublishMany: 23,
    m.TrackMany: 37,
    m.UntrackMany: 38,
    m.PeerHello: 50,
    m.PeerWelcome: 51,
    m.PeerRefused: 52,
    m.ClusterCast: 53,
    m.PeerCast: 54,
    m.FromPeer: 55,
    m.DropPeers: 56,
    m.EngineFrame: 57,
    m.Heartbeat: 60,
    m.TransferReq: 61,
    m.TransferAck: 62,
    m.GracefulPermdown: 63,
    m.Depart: 64,
    m.GoodbyeAck: 65,
    m.Fragment: 66,
    m.Sync: 24,
    m.Mark: 25,
    m.ShardRestarted: 26,
    m.PeerBroadcasts: 27,
    m.ListTopics: 39,
}

MAX_FRAME_BYTES = 64 * 1024 * 1024  # larger frames are refused before unpacking
MAX_REQUEST_BYTES = MAX_FRAME_BYTES - 64 * 1024  # a client's: room for a Published around it
MAX_NAME_BYTES = 4 * 1024  # a topic, key or event, in UTF-8
MAX_DEPTH = 32  # containers nested in a meta or payload (the outermost counts as one)
MAX_SUBSCRIPTION_BYTES = 64 * 1024  # what an XPUB accepts from a SUB: filters are names

_ANY = None  # field spec: no check


def check_name(value: str, what: str = "topic") -> str:
    """`value` if it is at most `MAX_NAME_BYTES` in UTF-8; `ValueError` naming `what` if not."""
    if len(value) * 4 > MAX_NAME_BYTES:  # else short enough whatever its characters
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise ValueError(
                f"{what} is {size} bytes in UTF-8, over the {MAX_NAME_BYTES}-byte limit"
            )
    return value


def check_start_time(value: int | float | None, what: str = "start_time") -> None:
    """`ValueError` if a process start time is a NaN or an infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")


def check_nesting(value: Any, what: str = "meta", *, finite: bool = True) -> None:
    """`InvalidMeta` if `value` nests containers deeper than `MAX_DEPTH` or, with `finite`,
    holds a float (map keys included) that is a NaN or an infinity."""
    _check_tree(value, 1, finite, what)


_FLAT = frozenset((str, int, bool, bytes, type(None)))  # nothing to look into


def _check_tree(value: Any, depth: int, finite: bool, what: str) -> None:
    if isinstance(value, dict):
        children: Any = (*value, *value.values())
    elif isinstance(value, (list, tuple)):
        children = value
    else:
        if finite and isinstance(value, float) and not math.isfinite(value):
            raise InvalidMeta(
                f"{what} holds {value!r}: only finite floats are accepted (NaN never equals "
                "itself, so such a meta could never be found again to be removed)"
            )
        return
    if depth > MAX_DEPTH:
        raise InvalidMeta(f"{what} nests containers deeper than the {MAX_DEPTH}-level limit")
    for child in children:
        if type(child) not in _FLAT:
            _check_tree(child, depth + 1, finite, what)


def check_names(values: list[Any], what: str = "names") -> list[str]:
    """`values` if each is a str within the name limit; ValueError if not."""
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{what} must hold str, got {type(value).__name__}")
        check_name(value, what)
    return values


def _check_field(mark: str) -> Any:
    """The check of a field marker of `messages`: raises ValueError or InvalidMeta."""
    if mark == m.NAME:
        return check_name
    if mark == m.NAMES:
        return check_names
    if mark == m.FINITE:
        return check_start_time
    if mark == m.PAYLOAD:
        return lambda value, what: check_nesting(value, what, finite=False)
    raise AssertionError(f"unknown field marker {mark!r}")


def _field_spec(annotation: Any) -> tuple[tuple[type, ...] | None, bool]:
    """(accepted types or None for any, convert list to tuple) for one annotation."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation) or annotation
    if origin is Any:
        return _ANY, False
    if origin in (types.UnionType, typing.Union):
        accepted: list[type] = []
        to_tuple = False
        for arg in typing.get_args(annotation):
            spec, conv = _field_spec(arg)
            if spec is None:
                return _ANY, False
            accepted.extend(spec)
            to_tuple = to_tuple or conv
        return tuple(accepted), to_tuple
    if annotation is None or origin is type(None):
        return (type(None),), False
    if origin is float:
        return (float, int), False
    if origin is tuple:
        return (list, tuple), True
    return (origin,), False


class _Shape(NamedTuple):
    cls: type
    arity: int
    fields: tuple[tuple[str, tuple[type, ...] | None, bool], ...]
    checks: tuple[tuple[int, str, Any], ...]  # (field index, "Class.field", check) for limits
    typed: tuple[tuple[int, tuple[type, ...]], ...]  # (field index, accepted) of typed fields
    tupled: tuple[int, ...]  # fields whose lists become tuples


def _shape(cls: type) -> _Shape:
    hints = typing.get_type_hints(cls, include_extras=True)
    names: tuple[str, ...] = getattr(cls, "_fields")  # a NamedTuple's  # noqa: B009
    fields = tuple((name, *_field_spec(hints[name])) for name in names)
    checks = tuple(
        (i, f"{cls.__name__}.{name}", _check_field(mark))
        for i, name in enumerate(names)
        if typing.get_origin(hints[name]) is typing.Annotated
        for mark in hints[name].__metadata__
    )
    typed = tuple((i, spec) for i, (_, spec, _) in enumerate(fields) if spec is not None)
    tupled = tuple(i for i, (_, _, to_tuple) in enumerate(fields) if to_tuple)
    return _Shape(cls, len(fields), fields, checks, typed, tupled)


def _check_limits(shape: _Shape, values: Any) -> None:
    """The field markers' checks (ValueError or InvalidMeta)."""
    for i, what, check in shape.checks:
        value = values[i]
        if value is not None:
            check(value, what)


_PUBLISHED_TAG = _packb(TAGS[m.Published])
_make = tuple.__new__

_SHAPES: dict[int, _Shape] = {tag: _shape(cls) for cls, tag in TAGS.items()}
if len(_SHAPES) != len(TAGS):
    raise AssertionError("duplicate wire tag in codec.TAGS")


EXTENSION_TAGS_FROM = 1000  # tags below are whosthere's own


def register(cls: type, tag: int) -> None:
    """Add a message type outside `messages` (tests, extensions); tags from 1000 up.

    Both ends must register it: an actor's module registers its own messages at import.
    """
    if tag < EXTENSION_TAGS_FROM:
        raise ValueError(f"extension tags start at {EXTENSION_TAGS_FROM}, got {tag}")
    if TAGS.get(cls, tag) != tag or (tag in _SHAPES and _SHAPES[tag].cls is not cls):
        raise ValueError(f"tag {tag} or {cls.__name__} is registered already")
    TAGS[cls] = tag
    _SHAPES[tag] = _shape(cls)


DEFAULT_META_LIMIT = 64 * 1024  # bytes of a packed meta
RESERVED_META_KEYS = ("phx_ref", "phx_ref_prev")  # set by the tracker, never by users


def pack_meta(meta: object, limit: int = DEFAULT_META_LIMIT) -> bytes:
    """A meta as msgpack map bytes, without phx_ref/phx_ref_prev; `InvalidMeta` if it is not
    a dict with str keys and msgpack-able values, nests deeper than `MAX_DEPTH`, holds a
    non-finite float, or packs to more than `limit` bytes."""
    if not isinstance(meta, dict):
        raise InvalidMeta(f"meta must be a dict, got {type(meta).__name__}")
    for k in meta:
        if type(k) is not str and not isinstance(k, str):
            raise InvalidMeta(f"meta keys must be str, got {type(k).__name__} {k!r:.80}")
    _check_values(meta)
    if "phx_ref" in meta or "phx_ref_prev" in meta:  # RESERVED_META_KEYS
        meta = {k: v for k, v in meta.items() if k not in RESERVED_META_KEYS}
    try:
        packed = _packer()(meta)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMeta(f"meta cannot be packed with msgpack: {exc}") from exc
    if len(packed) > limit:
        raise InvalidMeta(f"meta is {len(packed)} bytes packed, over the {limit}-byte limit")
    return packed


def check_packed_meta(packed: bytes, limit: int = DEFAULT_META_LIMIT) -> None:
    """Check bytes from the wire as `pack_meta` would have made them; `InvalidMeta` if not."""
    if len(packed) > limit:
        raise InvalidMeta(f"meta is {len(packed)} bytes packed, over the {limit}-byte limit")
    try:
        meta = _unpackb(packed, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types; trailing bytes included
        raise InvalidMeta(f"meta is not msgpack: {exc}") from None
    if type(meta) is not dict:
        raise InvalidMeta("meta must be a map with str keys")
    for k in meta:
        if type(k) is not str:
            raise InvalidMeta("meta must be a map with str keys")
    if "phx_ref" in meta or "phx_ref_prev" in meta:  # RESERVED_META_KEYS
        raise InvalidMeta("meta must not carry phx_ref or phx_ref_prev")
    _check_values(meta)


def _check_values(meta: dict[str, Any]) -> None:
    """`check_nesting(meta)` for a dict with str keys, a flat one at a glance."""
    for value in meta.values():
        if type(value) not in _FLAT:
            _check_tree(value, 2, True, "meta")


def track_entry(entry: object) -> tuple[int, int | float | None, str, str, bytes]:
    """One `TrackMany` entry, checked as `decode` checks a `Track`; `MalformedFrame` if not."""
    if not isinstance(entry, list) or len(entry) != 5:
        raise MalformedFrame("a TrackMany entry is [pid, start_time, topic, key, meta]")
    pid, start, topic, key, meta = entry
    if (
        not isinstance(pid, int)
        or not (start is None or isinstance(start, (int, float)))
        or not isinstance(topic, str)
        or not isinstance(key, str)
        or not isinstance(meta, bytes)
    ):
        raise MalformedFrame("a TrackMany entry is [int, int|float|None, str, str, bytes]")
    try:
        check_start_time(start, "TrackMany start_time")
        check_name(topic, "TrackMany topic")
        check_name(key, "TrackMany key")
    except ValueError as exc:
        raise MalformedFrame(str(exc)) from None
    return pid, start, topic, key, meta


def unpack_map(packed: bytes) -> dict[str, Any]:
    """Bytes that must be exactly one msgpack map with str keys (a meta); `InvalidMeta` if
    not. Diffs and lists are built by concatenating metas: anything else would corrupt them."""
    try:
        meta = _unpackb(packed, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types; trailing bytes included
        raise InvalidMeta(f"meta is not msgpack: {exc}") from None
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise InvalidMeta("meta must be a map with str keys")
    return meta


def is_packed_map(packed: bytes) -> bool:
    """`unpack_map`'s rule as a yes or no, for a hot loop (a peer's delta of thousands)."""
    try:
        meta = _unpackb(packed, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several types; trailing bytes included
        return False
    return type(meta) is dict and all(type(key) is str for key in meta)


_PHX_REF = _packb("phx_ref")
_PHX_REF_PREV = _packb("phx_ref_prev")


def meta_with_refs(packed: bytes, ref: str, prev: str | None = None) -> bytes:
    """Append phx_ref (and phx_ref_prev) to a packed map, without unpacking it."""
    head = packed[0]
    if 0x80 <= head <= 0x8F:
        count, body = head & 0x0F, packed[1:]
    elif head == 0xDE:
        count, body = int.from_bytes(packed[1:3], "big"), packed[3:]
    elif head == 0xDF:
        count, body = int.from_bytes(packed[1:5], "big"), packed[5:]
    else:
        raise InvalidMeta("meta must be a msgpack map")
    extra = _PHX_REF + _pack_str(ref)
    count += 1
    if prev is not None:
        extra += _PHX_REF_PREV + _pack_str(prev)
        count += 1
    return _map_header(count) + body + extra


def _pack_str(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    if n < 32:
        return bytes((0xA0 | n,)) + data
    return _pack(text)


def _header(count: int, fixed: list[bytes], marker16: bytes, marker32: bytes) -> bytes:
    if count < 16:
        return fixed[count]
    if count < 0x10000:
        return marker16 + count.to_bytes(2, "big")
    return marker32 + count.to_bytes(4, "big")


def _map_header(count: int) -> bytes:
    return _header(count, _FIXMAP, b"\xde", b"\xdf")


def _array_header(count: int) -> bytes:
    return _header(count, _FIXARRAY, b"\xdc", b"\xdd")


_pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
_FIXMAP = [bytes((0x80 | n,)) for n in range(16)]
_FIXARRAY = [bytes((0x90 | n,)) for n in range(16)]
_METAS = _map_header(1) + _pack_str("metas")
_JOINS = _pack_str("joins")
_LEAVES = _pack_str("leaves")


def pack_grouped(grouped: dict[str, list[bytes]]) -> bytes:
    """`{key: {"metas": [meta, ...]}}` packed, from packed metas: the list shape, built by
    concatenation (the metas are never unpacked on the node)."""
    parts = [_map_header(len(grouped))]
    add = parts.append
    for key, metas in grouped.items():
        add(_pack_str(key))
        add(_METAS)
        add(_array_header(len(metas)))
        parts.extend(metas)
    return b"".join(parts)


def pack_diff(joins: dict[str, list[bytes]], leaves: dict[str, list[bytes]]) -> bytes:
    """A `presence_diff` payload `{"joins": ..., "leaves": ...}` packed, from packed metas."""
    return b"".join((_FIXMAP[2], _JOINS, pack_grouped(joins), _LEAVES, pack_grouped(leaves)))


def encode_published(epoch: int, seq: int, event: str, payload: bytes) -> bytes:
    """The wire bytes of `Published(epoch, seq, event, <payload>)` where `payload` is packed
    already: what `encode` would make of the unpacked payload, without unpacking it."""
    return b"".join(
        (
            _FIXARRAY[5],
            _PUBLISHED_TAG,
            _pack(epoch),
            _pack(seq),
            _pack_str(event),
            payload,
        )
    )


def pack_value(value: Any) -> bytes:
    """Any msgpack-able value (a fetched diff, say); `InvalidMeta` if it is not one."""
    try:
        return _packer()(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMeta(f"value cannot be packed with msgpack: {exc}") from exc


def unpack(data: bytes | memoryview) -> Any:
    """A value packed by `pack_meta` / `meta_with_refs`."""
    return _unpackb(data, raw=False, strict_map_key=False)


def encode(msg: tuple[Any, ...], *, checked: bool = False) -> bytes:
    """The wire bytes of a message; `InvalidMeta` if a field cannot be packed.

    `checked`: first the field limits `decode` would check, so a client's bad request is
    refused before it is sent: `ValueError` (a name too long, a start time not finite),
    `InvalidMeta` (a payload nested too deep), `MessageTooLarge` (over `MAX_REQUEST_BYTES`)."""
    try:
        tag = TAGS[type(msg)]
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a wire message") from None
    if checked:
        _check_limits(_SHAPES[tag], msg)
    try:
        data = _packer()((tag, *msg))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMeta(f"{type(msg).__name__} cannot be sent: {exc}") from exc
    if checked and len(data) > MAX_REQUEST_BYTES:
        raise MessageTooLarge(
            f"{type(msg).__name__} is {len(data)} bytes packed, over the {MAX_REQUEST_BYTES}-byte "
            "limit of a request"
        )
    return data


def decode(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """The message in `data`; `MalformedFrame` if it is not one, with the reason.

    `max_bytes`: larger frames are refused unread (a message reassembled from fragments,
    whose size was bounded as they came, is allowed more)."""
    if len(data) > max_bytes:
        raise MalformedFrame(f"frame of {len(data)} bytes exceeds {max_bytes}")
    try:
        obj = _unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise MalformedFrame(f"frame is not msgpack: {exc}") from None
    if not isinstance(obj, list) or not obj:
        raise MalformedFrame(f"frame is not a tagged array: {type(obj).__name__}")
    shape = _SHAPES.get(obj[0]) if type(obj[0]) is int else None  # a bool is no tag
    if shape is None:
        raise MalformedFrame(f"unknown message tag {reprlib.repr(obj[0])}")  # may be deep
    values = obj[1:]
    if len(values) != shape.arity:
        raise MalformedFrame(
            f"{shape.cls.__name__} takes {shape.arity} field(s), frame has {len(values)}"
        )
    for i, accepted in shape.typed:
        if not isinstance(values[i], accepted):
            raise MalformedFrame(
                f"{shape.cls.__name__}.{shape.fields[i][0]} must be "
                f"{' or '.join(t.__name__ for t in accepted)}, got {type(values[i]).__name__}"
            )
    for i in shape.tupled:
        if isinstance(values[i], list):
            values[i] = tuple(values[i])
    if shape.checks:
        try:
            _check_limits(shape, values)
        except (ValueError, InvalidMeta) as exc:
            raise MalformedFrame(str(exc)) from None
    return _make(shape.cls, values)  # the fields are counted: no Python-level __new__


def decode_reply(data: bytes) -> Any:
    """`decode` for a call's reply: an `Ok` at a glance (its one field takes anything), the
    rest through `decode`. A client decodes a reply per call: this is its hot path."""
    try:
        obj = _unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # decode says why
        return decode(data)
    if type(obj) is list and len(obj) == 2 and type(obj[0]) is int and obj[0] == _OK_TAG:
        return m.Ok(obj[1])
    return decode(data)


_OK_TAG = TAGS[m.Ok]


# -- PubSub frames ---------------------------------------------------------------------------
# A published message is two frames: a topic frame, then the encoded `Published`. ZeroMQ SUB
# filters match prefixes, so the topic frame is length-prefixed: the filter for "room:1" is
# b"\x00\x00\x00\x06room:1", which is not a prefix of "room:10"'s frame. Exact matching.

_INBOX_PREFIX = b"\xff\xff\xff\xff"  # a length no topic has: inbox filters never match topics


def topic_frame(topic: str) -> bytes:
    """The first frame (and the SUB filter) of messages on `topic`; `ValueError` for a topic
    over `MAX_NAME_BYTES`, before it reaches a socket: ZeroMQ keeps a filter as a trie of
    one node per byte, and a filter of megabytes takes long to store and can overflow the
    stack when it is freed."""
    data = check_name(topic).encode()
    return len(data).to_bytes(4, "big") + data


def topic_of(frame: bytes) -> str | None:
    """The topic named by a topic frame, None if the frame is not one."""
    if not 4 <= len(frame) <= 4 + MAX_NAME_BYTES or frame.startswith(_INBOX_PREFIX):
        return None  # not a topic frame, or one no publisher can send to
    size = int.from_bytes(frame[:4], "big")
    if size != len(frame) - 4:
        return None
    try:
        return frame[4:].decode()
    except UnicodeDecodeError:
        return None


def inbox_frame(token: str) -> bytes:
    """The SUB filter of a subscriber's one-off inbox (see `messages.Subscribe`)."""
    return _INBOX_PREFIX + token.encode()


def inbox_of(frame: bytes) -> str | None:
    """The token of an inbox filter, None if the frame is not one."""
    if not frame.startswith(_INBOX_PREFIX) or len(frame) > len(_INBOX_PREFIX) + MAX_NAME_BYTES:
        return None
    return frame[len(_INBOX_PREFIX) :].decode(errors="replace")
