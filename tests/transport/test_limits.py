"""The limits of what enters a node: refused at the door (the client's checked encode) and
again on receipt (`decode`, `check_packed_meta`), since a raw frame bypasses the client."""

from __future__ import annotations

import math

import msgpack
import pytest

from whosthere.errors import InvalidMeta, MalformedFrame, MessageTooLarge
from whosthere.transport import codec
from whosthere.transport import messages as m

META = codec.pack_meta({"status": "online"})
LONG = "x" * (codec.MAX_NAME_BYTES + 1)


def nested(depth: int) -> object:
    """A value of `depth` nested containers (lists), the outermost counted."""
    value: object = None
    for _ in range(depth):
        value = [value]
    return value


def raw_deep_meta(depth: int) -> bytes:
    """A packed map {"a": [[...nil]]} with `depth` levels in all, as a raw frame carries it."""
    return b"\x81\xa1a" + b"\x91" * (depth - 1) + b"\xc0"


def frame(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


# -- start times -----------------------------------------------------------------------------


@pytest.mark.parametrize("start", [math.nan, math.inf, -math.inf])
def test_a_track_with_a_non_finite_start_time_is_a_malformed_frame(start):
    body = frame(codec.TAGS[m.Track], 42, start, "room", "u1", META)
    with pytest.raises(MalformedFrame, match=r"^Track.start_time must be finite, got"):
        codec.decode(body)
    with pytest.raises(ValueError, match="must be finite"):
        codec.encode(m.Track(42, start, "room", "u1", META), checked=True)


@pytest.mark.parametrize("start", [math.nan, math.inf])
def test_a_track_many_entry_with_a_non_finite_start_time_is_refused(start):
    with pytest.raises(MalformedFrame, match=r"^TrackMany start_time must be finite"):
        codec.track_entry([42, start, "room", "u1", META])
    assert codec.track_entry([42, 12.5, "room", "u1", META]) == (42, 12.5, "room", "u1", META)


# -- topics and keys -------------------------------------------------------------------------


def test_names_up_to_the_limit_pass_and_longer_ones_are_refused():
    at_limit = "x" * codec.MAX_NAME_BYTES
    assert codec.check_name(at_limit) is at_limit
    with pytest.raises(ValueError, match=rf"^key is {codec.MAX_NAME_BYTES + 1} bytes in UTF-8"):
        codec.check_name(LONG, "key")
    wide = "é" * (codec.MAX_NAME_BYTES // 2 + 1)  # under the limit in characters, not bytes
    with pytest.raises(ValueError, match="over the 4096-byte limit"):
        codec.check_name(wide)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (m.Track(42, 1, LONG, "u1", META), "Track.topic"),
        (m.Track(42, 1, "room", LONG, META), "Track.key"),
        (m.ListTopic(LONG), "ListTopic.topic"),
        (m.GetByKey("room", LONG), "GetByKey.key"),
        (m.Untrack(42, LONG, "u1"), "Untrack.topic"),
        (m.Update(42, "room", LONG, META, None), "Update.key"),
        (m.Broadcast(LONG, "e", None, False), "Broadcast.topic"),
        (m.Broadcast("t", LONG, None, False), "Broadcast.event"),
        (m.Subscribe(["ok", LONG], "inbox"), "Subscribe.topics"),
    ],
)
def test_a_name_over_the_limit_is_refused_on_decode_and_before_sending(msg, field):
    with pytest.raises(MalformedFrame, match=rf"^{field} is \d+ bytes in UTF-8, over the"):
        codec.decode(codec.encode(msg))
    with pytest.raises(ValueError, match=rf"^{field} is"):
        codec.encode(msg, checked=True)


def test_a_track_many_entry_with_a_long_topic_or_key_is_refused():
    with pytest.raises(MalformedFrame, match="^TrackMany topic is"):
        codec.track_entry([42, 1, LONG, "u1", META])
    with pytest.raises(MalformedFrame, match="^TrackMany key is"):
        codec.track_entry([42, 1, "room", LONG, META])


def test_topic_frames_past_the_limit_are_refused_and_name_no_topic():
    assert codec.topic_of(codec.topic_frame("x" * codec.MAX_NAME_BYTES)) is not None
    with pytest.raises(ValueError, match="^topic is 4097 bytes"):
        codec.topic_frame(LONG)  # before a SUB socket stores it as a filter
    assert codec.topic_of(len(LONG).to_bytes(4, "big") + LONG.encode()) is None
    assert codec.inbox_of(codec.inbox_frame(LONG)) is None


# -- nesting ---------------------------------------------------------------------------------


def test_a_meta_nested_up_to_the_limit_packs_and_deeper_is_invalid():
    ok = {"a": nested(codec.MAX_DEPTH - 1)}  # the meta itself is the first level
    codec.check_packed_meta(codec.pack_meta(ok))
    deep = {"a": nested(codec.MAX_DEPTH)}
    with pytest.raises(InvalidMeta, match=r"^meta nests containers deeper than the 32-level"):
        codec.pack_meta(deep)
    with pytest.raises(InvalidMeta, match="^meta nests containers deeper"):
        codec.check_packed_meta(msgpack.packb(deep))


@pytest.mark.parametrize("depth", [codec.MAX_DEPTH + 1, 1023, 1025, 5000])
def test_a_raw_deep_meta_is_invalid_on_receipt(depth):
    # 1,023 levels unpack (and would break every later list of the topic); 1,025 do not
    with pytest.raises(InvalidMeta):
        codec.check_packed_meta(raw_deep_meta(depth))


def test_a_broadcast_payload_nested_too_deep_is_refused_on_decode_and_before_sending():
    msg = m.Broadcast("t", "e", nested(codec.MAX_DEPTH + 1), False)
    with pytest.raises(MalformedFrame, match=r"^Broadcast.payload nests containers deeper"):
        codec.decode(codec.encode(msg))
    with pytest.raises(InvalidMeta, match=r"^Broadcast.payload nests containers deeper"):
        codec.encode(msg, checked=True)
    fine = m.Broadcast("t", "e", nested(codec.MAX_DEPTH), False)
    assert codec.decode(codec.encode(fine, checked=True)) == fine


# -- non-finite floats in metas ----------------------------------------------------------------


@pytest.mark.parametrize(
    "meta",
    [{"x": math.nan}, {"x": math.inf}, {"x": [1, {"y": -math.inf}]}, {"x": {math.nan: 1}}],
)
def test_a_meta_holding_a_non_finite_float_is_invalid(meta):
    with pytest.raises(InvalidMeta, match="only finite floats are accepted"):
        codec.pack_meta(meta)
    with pytest.raises(InvalidMeta, match="only finite floats are accepted"):
        codec.check_packed_meta(msgpack.packb(meta))


def test_a_broadcast_payload_may_hold_non_finite_floats():
    msg = m.Broadcast("t", "e", {"x": math.inf}, False)  # nothing matches payloads later
    assert codec.decode(codec.encode(msg, checked=True)) == msg


# -- sizes -----------------------------------------------------------------------------------


def test_a_request_over_the_limit_is_refused_before_sending():
    big = b"x" * codec.MAX_REQUEST_BYTES
    with pytest.raises(MessageTooLarge, match=r"^Broadcast is \d+ bytes packed, over the"):
        codec.encode(m.Broadcast("t", "e", big, False), checked=True)
    codec.encode(m.Broadcast("t", "e", big, False))  # an actor's own sends are not checked


def test_a_deeply_nested_tag_is_a_malformed_frame_not_a_recursion_error():
    # found by tests/test_fuzz.py: the reason quoted the tag's whole repr
    with pytest.raises(MalformedFrame, match="^unknown message tag"):
        codec.decode(frame(nested(1000), 1))
