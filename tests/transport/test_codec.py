from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whosthere.errors import InvalidMeta, MalformedFrame
from whosthere.transport import codec
from whosthere.transport import messages as m


def _values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[object]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | floats
        | st.text()
        | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )


payloads = _values(st.floats(allow_nan=False))  # a broadcast may carry infinities
meta_values = _values(st.floats(allow_nan=False, allow_infinity=False))  # a meta may not


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.text(), st.text(), payloads, st.booleans())
def test_broadcast_round_trips_with_strings_staying_strings(topic, event, payload, local):
    msg = m.Broadcast(topic, event, payload, local)
    assert codec.decode(codec.encode(msg)) == msg


def test_every_message_round_trips():
    samples = [
        m.Ok({"a": [1, 2]}),
        m.Failed("NotTracked", "no", ""),
        m.Ping(),
        m.GetStats(),
        m.ActorReady("pubsub", 12),
        m.ActorFailed("cluster", 12, "NodeNameTaken", "name 'a' is taken"),
        m.Lookup(),
        m.GetStatus(),
        m.Link([[1, 2]]),
        m.Unlink([[1, 2.5]]),
        m.ProcessesExited([[1, None]]),
        m.ProcessesExited([[1, 2]], 1_764_288_000.5),
        m.Shutdown("bye"),
        m.Subscribe(["t"], "inbox"),
        m.Sync("mailbox.x", ["t"]),
        m.Mark(7, {"t": 3}),
        m.Broadcast("t", "e", None, True),
        m.Published(1, 2, "e", b"x"),
        m.Track(1, 2, "t", "k", b"\x80"),
        m.Untrack(1, "t", "k"),
        m.UntrackPid(1),
        m.UntrackMany([1, 1 << 32 | 1]),
        m.Calls([b"\x91\x03"]),
        m.Update(1, "t", "k", b"\x80", None),
        m.GetMeta(1, "t", "k"),
        m.ListTopic("t"),
        m.ListTopics(50),
        m.GetByKey("t", "k"),
        m.Fetch(0, 1, "t", {}, {}),
        m.Fetched(1, None, "boom"),
        m.MetasDiff("t", {"joins": {}, "leaves": {}}, 0),
        m.FetcherReady(1, 2),
        m.ShardRestarted(1, 2),
        m.PeerBroadcasts(7, 3, 12.5, [["t", "e", b"\x80"]]),
        m.MetasResync(),
        m.MetasState(0, 0, True, {"t": {"k": {"metas": [{"a": 1}]}}}),
        m.PublishMany([["t", "e", b"\xc0"]], True),
        m.TrackMany([[1, 2, "t", "k", b"\x80"]]),
        m.PeerHello("a", 2, "tcp://127.0.0.1:1", ["tcp://127.0.0.1:2"]),
        m.PeerWelcome("b", []),
        m.PeerRefused("b", "pool_size mismatch"),
        m.DropPeers(["b"]),
        m.EngineFrame("a", b"\x93\x01\x02\x03", b"\x00" * 32),
        m.ClusterCast("*", 0, b"x"),
        m.PeerCast("a", 1, b"x"),
        m.FromPeer("a", b"x"),
        m.Heartbeat(["a", 1], None, [["a", 1, 3]], 2.5),
        m.TransferReq(7, ["a", 1], []),
        m.TransferAck(7, ["b", 2], None, [["b", 2], [], [], []]),
        m.GracefulPermdown(["a", 1]),
        m.GoodbyeAck(["b", 2]),
        m.Fragment(7, 0, 2, b"piece"),
        m.Depart(),
    ]
    assert {type(s) for s in samples} == {c for c, t in codec.TAGS.items() if t < 1000}
    for sample in samples:
        assert codec.decode(codec.encode(sample)) == sample


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "^frame is not msgpack"),
        (b"\xc1", "^frame is not msgpack"),
        (msgpack.packb({"a": 1}), "^frame is not a tagged array: dict$"),
        (msgpack.packb([]), "^frame is not a tagged array: list$"),
        (msgpack.packb([999]), "^unknown message tag 999$"),
        (msgpack.packb(["Ping"]), "^unknown message tag 'Ping'$"),
        (msgpack.packb([21, "t", "e"]), r"^Broadcast takes 4 field\(s\), frame has 2$"),
        (msgpack.packb([21, 1, "e", None, True]), "^Broadcast.topic must be str, got int$"),
        (msgpack.packb([10, "x", "12"]), "^ActorReady.pid must be int, got str$"),
    ],
)
def test_malformed_frames_raise_a_typed_error_naming_the_rule(frame, reason):
    with pytest.raises(MalformedFrame, match=reason):
        codec.decode(frame)


def test_oversized_frame_is_refused_before_unpacking():
    with pytest.raises(MalformedFrame, match="exceeds"):
        codec.decode(b"\x00" * (codec.MAX_FRAME_BYTES + 1))


def test_unpackable_values_raise_invalid_meta():
    with pytest.raises(InvalidMeta, match="Broadcast cannot be sent"):
        codec.encode(m.Broadcast("t", "e", {"x": object()}, False))
    with pytest.raises(InvalidMeta):
        codec.encode(m.Broadcast("t", "e", 2**70, False))


def test_topic_frames_match_exactly_not_by_prefix():
    assert not codec.topic_frame("room:10").startswith(codec.topic_frame("room:1"))
    assert codec.topic_of(codec.topic_frame("room:1")) == "room:1"
    assert codec.topic_of(codec.inbox_frame("abc")) is None
    assert codec.inbox_of(codec.inbox_frame("abc")) == "abc"
    assert codec.topic_of(b"\x00\x00\x00\x09short") is None


metas = st.dictionaries(st.text(max_size=40), meta_values, max_size=20)
keys = st.text(max_size=40)


@settings(deadline=None)
@given(
    st.dictionaries(keys, st.lists(metas, min_size=1, max_size=3), max_size=20),
    st.dictionaries(keys, st.lists(metas, min_size=1, max_size=3), max_size=20),
    st.text(max_size=40),
    st.one_of(st.none(), st.text(max_size=40)),
)
def test_packed_diffs_unpack_to_the_list_shape(joins, leaves, ref, prev):
    """pack_diff / meta_with_refs build by concatenation what msgpack itself would pack."""

    def packed(grouped):
        return {
            k: [codec.meta_with_refs(codec.pack_meta(meta), ref, prev) for meta in metas]
            for k, metas in grouped.items()
        }

    def expected(grouped):
        refs = {"phx_ref": ref} if prev is None else {"phx_ref": ref, "phx_ref_prev": prev}

        def with_refs(meta):
            return {**{k: v for k, v in meta.items() if k not in codec.RESERVED_META_KEYS}, **refs}

        return {k: {"metas": [with_refs(meta) for meta in metas]} for k, metas in grouped.items()}

    payload = codec.pack_diff(packed(joins), packed(leaves))
    want = {"joins": expected(joins), "leaves": expected(leaves)}
    assert codec.unpack(payload) == want
    body = codec.encode_published(7, 2**40, "presence_diff", payload)
    assert codec.decode(body) == m.Published(7, 2**40, "presence_diff", want)


def test_a_reply_decodes_as_decode_would_make_it():
    """`decode_reply`'s shortcut for `Ok` gives what `decode` gives, and leaves the rest to
    it: a `Failed`, a frame that only looks like an Ok, garbage."""
    for value in ("ref", None, [1, 2], {"k": [b"x"]}, 3.5):
        body = codec.encode(m.Ok(value))
        assert codec.decode_reply(body) == codec.decode(body) == m.Ok(value)
    failed = codec.encode(m.Failed("NotTracked", "no", ""))
    assert codec.decode_reply(failed) == m.Failed("NotTracked", "no", "")
    looks_like_ok = msgpack.packb([True, "ref"])  # True == 1, but a bool is no tag
    with pytest.raises(MalformedFrame):
        codec.decode_reply(looks_like_ok)
    with pytest.raises(MalformedFrame):
        codec.decode_reply(b"\xc1")


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=5,
    )
)
@settings(max_examples=300)
def test_a_packed_meta_passes_the_node_check_exactly_when_the_client_took_it(meta):
    """`pack_meta` (the client) and `check_packed_meta` (the shard, for raw frames) apply one
    rule: a meta one takes, the other takes; one refuses (a NaN anywhere), so does the other."""
    try:
        packed = codec.pack_meta(meta)
    except InvalidMeta:
        with pytest.raises(InvalidMeta):
            codec.check_packed_meta(msgpack.packb(meta, use_bin_type=True))
    else:
        codec.check_packed_meta(packed)
        kept = {k: v for k, v in meta.items() if k not in codec.RESERVED_META_KEYS}
        assert msgpack.unpackb(packed, raw=False) == kept
