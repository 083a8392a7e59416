"""A crash-proof node (issue 11): bad input gets a clear error at the door and loses nothing.

`test_a_flood_of_bad_frames_restarts_nothing_and_loses_nothing` sends 10,000 random and
mutated frames to every ipc socket of a running node, as any process of the user could;
`test_bad_calls_get_named_errors_and_lose_nothing` makes bad calls through the public API.
Afterwards no actor has restarted, every presence is still listed, and the node serves.

The generator is seeded; the seed is printed (and `WHOSTHERE_FUZZ_SEED` replays one).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

import whosthere
from tests.support.presences import FetchAndMetasPresence
from tests.support.processes import sleeper
from whosthere.client import lookup
from whosthere.errors import InvalidMeta, MalformedFrame, MessageTooLarge, WhosthereError
from whosthere.topology import PUBSUB_PUB, Topology
from whosthere.transport import codec
from whosthere.transport import messages as m
from whosthere.transport.sockets import context
from whosthere.watch import is_pid

FRAMES = 10_000
TOPICS = [f"fuzz:{i}" for i in range(6)]
DEEP = 1_100  # deeper than msgpack unpacks (1,024)


# -- the node under test -----------------------------------------------------------------------


@pytest.fixture
def tracked_node() -> Iterator[tuple[whosthere.Node, dict[str, Any], list[int]]]:
    """A node with fetchers and the presence client actor, and presences of live owners."""
    owners = [sleeper() for _ in range(3)]
    try:
        with whosthere.Node(presence=FetchAndMetasPresence, pool_size=2) as node:
            presence = node.presence
            for i, owner in enumerate(owners):
                for topic in TOPICS:
                    presence.track(owner.pid, topic, f"user{i}", {"n": i, "tags": ["a", "b"]})
            listed = {topic: presence.list(topic) for topic in TOPICS}
            for entries in listed.values():
                assert sorted(entries) == ["user0", "user1", "user2"]
            yield node, listed, [owner.pid for owner in owners]
    finally:
        for owner in owners:
            owner.kill()
            owner.wait()


def actors(node: whosthere.Node) -> dict[str, tuple[int, int]]:
    """Each actor's (pid, restarts)."""
    return {a["name"]: (a["pid"], a["restarts"]) for a in node.status()["actors"]}


def assert_intact(node: whosthere.Node, before: dict[str, tuple[int, int]], listed: dict) -> None:
    """No restart, nothing lost, and the node still tracks, lists and publishes."""
    assert actors(node) == before
    assert all(restarts == 0 for _, restarts in before.values())
    presence = node.presence
    assert {topic: presence.list(topic) for topic in TOPICS} == listed
    me = os.getpid()
    with presence.subscribe("fuzz:after") as sub:
        ref = presence.track(me, "fuzz:after", "me", {"ok": True})
        msg = sub.get(timeout=5)
        assert msg is not None and msg.event == "presence_diff"
        assert msg.payload["joins"]["me"]["metas"][0]["phx_ref"] == ref
    assert presence.list("fuzz:after")["me"]["metas"][0]["ok"] is True
    presence.untrack(me)
    assert presence.list("fuzz:after") == {}
    assert len(presence.fetchers_pids()) == 2


# -- frames ------------------------------------------------------------------------------------


class Fuzzer:
    """Bad frames: random bytes, random msgpack, and valid messages mutated."""

    def __init__(self, rng: random.Random, owners: list[int], topics: list[str]) -> None:
        self.rng = rng
        self.owners = owners
        self.topics = topics
        meta = codec.pack_meta({"n": 1})
        topic = topics[0]
        pid = owners[0]
        self.templates: list[tuple] = [
            m.Ok(1),
            m.Failed("NotTracked", "x", ""),
            m.Ping(),
            m.GetStats(),
            m.ActorReady("shard.0", pid),
            m.Lookup(),
            m.GetStatus(),
            m.Link([[pid, 1]]),
            m.Unlink([[pid, 1]]),
            m.ProcessesExited([[pid, 1]]),
            m.Shutdown("fuzz"),
            m.Subscribe([topic], "inbox"),
            m.Sync("mailbox.x", [topic]),
            m.Mark(1, {topic: 1}),
            m.ShardRestarted(0, 2),
            m.FetcherReady(0, 1),
            m.MetasResync(),
            m.MetasState(0, 0, True, {topic: {}}),
            m.Broadcast(topic, "e", {"a": 1}, True),
            m.PublishMany([[topic, "presence_diff", codec.pack_diff({}, {})]], True),
            m.Published(1, 1, "e", None),
            m.Track(pid, 1, topic, "user0", meta),
            m.TrackMany([[pid, 1, topic, "user0", meta]]),
            m.Untrack(pid, topic, "user0"),
            m.UntrackPid(pid),
            m.Update(pid, topic, "user0", meta, None),
            m.GetMeta(pid, topic, "user0"),
            m.ListTopic(topic),
            m.GetByKey(topic, "user0"),
            m.Fetch(0, 1, topic, {}, {}),
            m.Fetched(1, {"joins": {}, "leaves": {}}, ""),
            m.MetasDiff(topic, {"joins": {}, "leaves": {}}, 0),
            m.PeerHello("x", 2, "tcp://a", []),
            m.PeerWelcome("x", []),
            m.PeerRefused("x", "no"),
            m.ClusterCast("*", 0, b""),
            m.PeerCast("x", 0, b""),
            m.FromPeer("x", b""),
            m.DropPeers(["x"]),
            m.Heartbeat(["x", 1], None, [], 1.0),
            m.TransferReq(1, ["x", 1], []),
            m.TransferAck(1, ["x", 1], None, None),
            m.Depart(),
            m.GracefulPermdown(["x", 1]),
            m.GoodbyeAck(["x", 1]),
            m.Fragment(1, 0, 2, b"xx"),
        ]

    def value(self, depth: int = 0) -> Any:
        """A random value: wrong types, huge and odd numbers, deep nesting, packed metas."""
        r = self.rng
        pick = r.randrange(22)
        if pick == 0:
            return r.choice([0, -1, 1, 2**40, 2**63 - 1, -(2**63), 2**64 - 1, True, False])
        if pick == 1:
            return r.choice([math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5])
        if pick == 2:
            return r.choice(["", "x" * r.randrange(5000), "\udcff", "\x00", "é" * 3000])
        if pick == 3:
            return r.randbytes(r.randrange(64))
        if pick == 4:
            return None
        if pick == 5 and depth < 3:
            return [self.value(depth + 1) for _ in range(r.randrange(5))]
        if pick == 6 and depth < 3:
            return {self.scalar(): self.value(depth + 1) for _ in range(r.randrange(5))}
        if pick == 7:
            return self.deep(r.choice([33, 200, 1000]))
        if pick == 8:
            return self.raw_meta()
        if pick == 9:
            return r.choice([*self.owners, os.getpid(), 1, 0, -1, 2**22 + 1])
        if pick == 10:
            return r.choice(self.topics)
        if pick == 11:
            return [[self.value(depth + 3), self.value(depth + 3)]]  # a pids list
        if pick == 12:
            return msgpack.ExtType(r.randrange(128), r.randbytes(r.randrange(8)))
        return r.choice([r.randrange(-(2**31), 2**31), r.random(), "user0", "x"])

    def scalar(self) -> Any:
        return self.rng.choice(["a", "phx_ref", 1, -1, 1.5, b"k", None, True, ""])

    def deep(self, depth: int) -> Any:
        value: Any = None
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"k": value}
        return value

    def raw_meta(self) -> bytes:
        """Packed metas a client would never send."""
        r = self.rng
        return r.choice(
            [
                b"\x81\xa1a" + b"\x91" * r.choice([31, 32, 33, 1022, 1023, 1030]) + b"\xc0",
                msgpack.packb({"x": math.nan}),
                msgpack.packb({"x": [math.inf]}),
                msgpack.packb({1: "int key"}),
                msgpack.packb({"phx_ref": "forged"}),
                msgpack.packb([1, 2]),
                b"\x81\xa1a\xc0\xc0",  # trailing bytes
                b"\xdf\xff\xff\xff\xff",  # a map that claims 4 billion entries
                r.randbytes(r.randrange(1, 32)),
                b"",
                msgpack.packb({"big": "x" * (70 * 1024)}),
            ]
        )

    def mutated(self) -> bytes:
        """A valid message with a field replaced, swapped, dropped or added, or cut short."""
        r = self.rng
        msg = r.choice(self.templates)
        fields = [codec.TAGS[type(msg)], *msg]
        how = r.randrange(6)
        if how == 0 and len(fields) > 1:
            fields[r.randrange(1, len(fields))] = self.value()
        elif how == 1 and len(fields) > 2:
            i, j = r.sample(range(1, len(fields)), 2)
            fields[i], fields[j] = fields[j], fields[i]
        elif how == 2 and len(fields) > 1:
            del fields[r.randrange(1, len(fields))]
        elif how == 3:
            fields.append(self.value())
        elif how == 4:
            fields[0] = r.choice([0, 9, 99, 1000, -1, 2**40, "Track", None, 30.0])
        else:
            for i in range(1, len(fields)):
                if r.random() < 0.5:
                    fields[i] = self.value()
        try:
            body = msgpack.packb(fields, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return self.noise()
        if r.random() < 0.15:
            body = body[: r.randrange(len(body) + 1)]
        return body

    def noise(self) -> bytes:
        r = self.rng
        if r.random() < 0.5:
            return r.randbytes(r.randrange(200))
        try:
            return msgpack.packb(self.value(), use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return b"\xc1"  # never used by msgpack

    def body(self) -> bytes:
        """A frame that must be refused (or is harmless): never one that would legitimately
        change what is tracked or stop the node."""
        while True:
            body = self.mutated() if self.rng.random() < 0.7 else self.noise()
            if not self.would_act(body):
                return body

    def would_act(self, body: bytes) -> bool:
        """Whether `body` is a well-formed request that a node rightly obeys (stopping, an
        untrack, a track of a real process...): such frames are no fault to find."""
        try:
            msg = codec.decode(body)
        except MalformedFrame:
            return False
        if isinstance(msg, m.Track):
            return accepted_entry([msg.pid, msg.start_time, msg.topic, msg.key, msg.meta])
        if isinstance(msg, m.TrackMany):
            return any(accepted_entry(entry) for entry in msg.entries)
        if isinstance(msg, m.Update):
            return accepted_meta(msg.meta)
        return isinstance(
            msg,
            m.Shutdown
            | m.Depart
            | m.Untrack
            | m.UntrackPid
            | m.ActorReady
            | m.Unlink
            | m.Fetched
            | m.MetasDiff
            | m.MetasState
            | m.PublishMany
            | m.Link
            | m.Fetch,
        )


def accepted_meta(meta: bytes) -> bool:
    try:
        codec.check_packed_meta(meta)
    except InvalidMeta:
        return False
    return True


def accepted_entry(entry: object) -> bool:
    try:
        pid, _, _, _, meta = codec.track_entry(entry)
    except MalformedFrame:
        return False
    return is_pid(pid) and accepted_meta(meta)


def endpoints(node: whosthere.Node) -> tuple[list[str], str]:
    """Every mailbox (the supervisor's too) and the XPUB endpoint, as the topology names them."""
    info = lookup(node.address)
    topology = Topology(node.config.started(str(node.runtime_dir)))
    assert info.endpoints == topology.endpoints() and info.address == topology.address
    mailboxes = [topology.address, *(e for n, e in info.endpoints.items() if n != PUBSUB_PUB)]
    return mailboxes, topology.pubsub_pub


def seed() -> int:
    value = int(os.environ.get("WHOSTHERE_FUZZ_SEED", random.randrange(2**32)))
    print(f"fuzz seed: {value} (replay: WHOSTHERE_FUZZ_SEED={value})")
    return value


def barrier(sock: zmq.Socket, timeout: float = 20.0) -> None:
    """Wait for the reply to a Ping sent on `sock` after everything else: all handled.

    Sent again every second: a socket refused for an oversized frame reconnects, and what
    it had queued on the dropped connection is lost."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.send_multipart((b"barrier", codec.encode(m.Ping())))
        until = time.monotonic() + 1.0
        while sock.poll(max(1, int((until - time.monotonic()) * 1000))):
            if sock.recv_multipart()[0] == b"barrier":
                return
    raise AssertionError(f"no answer to a Ping at {sock.getsockopt_string(zmq.LAST_ENDPOINT)}")


# -- the tests ---------------------------------------------------------------------------------


def test_a_flood_of_bad_frames_restarts_nothing_and_loses_nothing(tracked_node):
    node, listed, owners = tracked_node
    rng = random.Random(seed())
    before = actors(node)
    fuzz = Fuzzer(rng, owners, TOPICS)
    mailboxes, xpub = endpoints(node)
    ctx = context()
    socks = []
    for endpoint in mailboxes:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 10_000)
        sock.connect(endpoint)
        socks.append(sock)
    sub = ctx.socket(zmq.XSUB)  # sends subscription (and non-subscription) frames to the XPUB
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(xpub)
    try:
        for i in range(FRAMES):
            sock = socks[i % len(socks)]
            shape = rng.random()
            if shape < 0.05:  # not [ref, body]
                sock.send_multipart([fuzz.body() for _ in range(rng.choice([1, 3, 4]))])
            else:  # a cast, or a call whose reply is read (or not)
                ref = b"" if shape < 0.7 else rng.randbytes(rng.choice([1, 8]))
                sock.send_multipart((ref, fuzz.body()))
            if i % 50 == 0:
                filt = rng.choice(
                    [
                        codec.topic_frame(rng.choice(TOPICS)),
                        codec.inbox_frame("x" * 5000),
                        b"\x00\x00\x13\x88" + b"x" * 5000,
                        rng.randbytes(rng.randrange(40)),
                        b"",
                    ]
                )
                sub.send(rng.choice([b"\x01", b"\x00", b"\x02", b""]) + filt)
            if i % 1000 == 0:
                for s in socks:  # drain replies now and then
                    while s.poll(0):
                        s.recv_multipart()
        big = b"\x00" * (codec.MAX_FRAME_BYTES + 1)  # refused unread by every socket
        for sock in (socks[0], socks[1]):
            sock.send_multipart((b"", big))
        sub.send(b"\x02" + big)  # not as a subscription: the XSUB would keep it (a trie)
        del big
        for sock in socks:
            barrier(sock)
    finally:
        for sock in (*socks, sub):
            sock.close(linger=0)
    assert_intact(node, before, listed)


def expect(error: type[BaseException], call: Callable[[], Any]) -> None:
    with pytest.raises(error):
        call()


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def bad_pids(presence: whosthere.Presence, links: whosthere.Links) -> None:
    """Not a positive int in range is a TypeError, as before (pid 1 is a process: below)."""
    for pid in (0, -1, 2**40, "1", None, 1.5, True):
        expect(TypeError, lambda pid=pid: presence.track(pid, "bad", "k", {}))
        expect(TypeError, lambda pid=pid: presence.untrack(pid))
        expect(TypeError, lambda pid=pid: links.link(pid))
    expect(ValueError, lambda: links.link(os.getpid(), math.nan))
    assert links.linked == set()


def bad_names(presence: whosthere.Presence, pubsub: whosthere.PubSub) -> None:
    """Wrong types are TypeErrors; a topic, key or event over the limit a ValueError."""
    me = os.getpid()
    for topic in (1, None, b"t", ["t"]):
        expect(TypeError, lambda topic=topic: presence.track(me, topic, "k", {}))
        expect(TypeError, lambda topic=topic: presence.list(topic))
        expect(TypeError, lambda topic=topic: pubsub.broadcast(topic, "e", {}))
    for key in (None, 1.5, [], b"k"):
        expect(TypeError, lambda key=key: presence.track(me, "bad", key, {}))
    for name in ("x" * (codec.MAX_NAME_BYTES + 1), "x" * (30 * 1024 * 1024)):
        expect(ValueError, lambda name=name: presence.track(me, name, "k", {}))
        expect(ValueError, lambda name=name: presence.track(me, "bad", name, {}))
        expect(ValueError, lambda name=name: presence.track_many([(me, name, "k", {})]))
        expect(ValueError, lambda name=name: presence.track_many([(me, "bad", name, {})]))
        expect(ValueError, lambda name=name: presence.update(me, "bad", name, {}))
        expect(ValueError, lambda name=name: presence.untrack(me, name, "k"))
        expect(ValueError, lambda name=name: presence.list(name))
        expect(ValueError, lambda name=name: presence.get_by_key("bad", name))
        expect(ValueError, lambda name=name: pubsub.broadcast(name, "e", {}))
        expect(ValueError, lambda name=name: pubsub.local_broadcast("t", name, {}))
        expect(ValueError, lambda name=name: presence.subscribe(name))


def bad_metas(presence: whosthere.Presence) -> None:
    """Not dicts, non-str keys, unpackable, deep, huge, non-finite floats: InvalidMeta."""
    me = os.getpid()
    metas = [
        [1],
        None,
        {1: "a"},
        {("a",): 1},
        {"a": object()},
        {"a": nested(DEEP)},
        {"a": nested(codec.MAX_DEPTH)},
        {"a": "x" * (codec.DEFAULT_META_LIMIT + 1)},
        {"a": math.nan},
        {"a": {"b": -math.inf}},
        {"a": 2**70},
    ]
    for meta in metas:
        expect(InvalidMeta, lambda meta=meta: presence.track(me, "bad", "k", meta))
        expect(InvalidMeta, lambda meta=meta: presence.track_many([(me, "bad", "k", meta)]))
        expect(InvalidMeta, lambda meta=meta: presence.update(me, "bad", "k", meta))
    expect(whosthere.NotTracked, lambda: presence.update(me, "bad", "k", {"a": 1}))


def bad_broadcasts(pubsub: whosthere.PubSub) -> None:
    """Deep or unpackable payloads: InvalidMeta; over the frame limit: MessageTooLarge."""
    for payload in (nested(DEEP), nested(codec.MAX_DEPTH + 1), object(), 2**70):
        expect(InvalidMeta, lambda payload=payload: pubsub.broadcast("t", "e", payload))
    expect(TypeError, lambda: pubsub.broadcast("t", 1, {}))
    big = b"x" * (codec.MAX_FRAME_BYTES + 1)
    expect(MessageTooLarge, lambda: pubsub.broadcast("t", "e", big))
    expect(MessageTooLarge, lambda: pubsub.local_broadcast("t", "e", big))


def test_bad_calls_get_named_errors_and_lose_nothing(tracked_node):
    node, listed, _ = tracked_node
    before = actors(node)
    presence, pubsub, links = node.presence, node.pubsub, node.links()
    try:
        bad_pids(presence, links)
        bad_names(presence, pubsub)
        bad_metas(presence)
        bad_broadcasts(pubsub)
        # pid 1 (init) is a process like any other: tracked until untracked, and linkable
        ref = presence.track(1, "init", "k", {})
        assert presence.list("init")["k"]["metas"][0]["phx_ref"] == ref
        presence.untrack(1, "init", "k")
        assert presence.list("init") == {}
        links.link(1)
        assert links.linked == {1}
        links.unlink(1)
    finally:
        links.close()
    assert_intact(node, before, listed)


def test_every_error_named_here_is_a_whosthere_error():
    for error in (InvalidMeta, MalformedFrame, MessageTooLarge):
        assert issubclass(error, WhosthereError)
