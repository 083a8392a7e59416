"""A `ShardActor` built in this process, its neighbours played by sockets of the test.

No node runs: the test binds the supervisor's, the PubSub actor's, the fetchers' and the
client actor's mailboxes itself, sends the shard messages, turns its loop one wake-up at a
time (`Actor.turn`), and reads what the shard sent each of them. So the ordering rules
(journal before reply, one diff per topic per message, a reused pid's leave before the new
join) are checked message by message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from whosthere.actors import shard_links
from whosthere.actors.base import ActorSpec
from whosthere.actors.shard import ShardActor
from whosthere.config import NodeConfig
from whosthere.topology import EXITS_TOPIC, SUPERVISOR, Topology
from whosthere.transport import codec
from whosthere.transport.messages import (
    ActorReady,
    Calls,
    Fetch,
    Fetched,
    Link,
    ListTopic,
    MetasDiff,
    MetasResync,
    MetasState,
    ProcessesExited,
    PublishMany,
    Track,
    Unlink,
    Untrack,
    UntrackPid,
)
from whosthere.transport.sockets import bind, socket
from whosthere.watch.identity import start_time

P, Q = 4242, 4343


class Neighbour:
    """A ROUTER bound where an actor the shard talks to would be."""

    def __init__(self, endpoint: str) -> None:
        self.socket = socket(zmq.ROUTER)
        bind(self.socket, endpoint)
        self.identity = b""

    def received(self) -> list[Any]:
        out = []
        while self.socket.poll(50):
            frames = self.socket.recv_multipart()
            self.identity = frames[0]
            out.append(codec.decode(frames[-1]))
        return out

    def push(self, msg: tuple) -> None:
        self.socket.send_multipart([self.identity, b"", codec.encode(msg)])


@dataclass
class Harness:
    shard: ShardActor
    caller: zmq.Socket
    supervisor: Neighbour
    pubsub: Neighbour
    fetchers: list[Neighbour] = field(default_factory=list)
    client: Neighbour | None = None
    refs: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 30)))

    def call(self, msg: tuple) -> Any:
        ref = next(self.refs).to_bytes(8, "big")
        self.caller.send_multipart([ref, codec.encode(msg)])
        for _ in range(20):
            self.shard.turn(0.05)
            if self.caller.poll(0):
                got_ref, body = self.caller.recv_multipart()
                assert got_ref == ref
                return codec.decode(body)
        raise AssertionError(f"no reply to {msg}")

    def cast(self, msg: tuple) -> None:
        self.caller.send_multipart([b"", codec.encode(msg)])
        self.idle()

    def idle(self, turns: int = 3) -> None:
        for _ in range(turns):
            self.shard.turn(0.01)

    def published(self) -> list[list[Any]]:
        """[topic, event, payload] of every PublishMany since last asked."""
        self.idle()
        return [
            [topic, event, codec.unpack(payload)]
            for msg in self.pubsub.received()
            if isinstance(msg, PublishMany)
            for topic, event, payload in msg.items
        ]


@contextlib.contextmanager
def harness(own_pidfds: int = 0, **options: Any) -> Iterator[Harness]:
    # the pids here are made up (4242...): only the supervisor the test plays tells exits,
    # not the shard's own pidfds, which would find no such process at once
    own_pidfds, shard_links.OWN_PIDFDS = shard_links.OWN_PIDFDS, own_pidfds
    try:
        yield from _harness(**options)
    finally:
        shard_links.OWN_PIDFDS = own_pidfds


def _harness(**options: Any) -> Iterator[Harness]:
    runtime = tempfile.mkdtemp(prefix="wt-s-", dir="/tmp")  # ipc paths must stay short
    config = NodeConfig(name="n1", **options).started(runtime)
    topology = Topology(config)
    spec = ActorSpec(
        name="shard.0",
        actor="whosthere.actors.shard:ShardActor",
        endpoint=topology.shards[0],
        runtime_dir=runtime,
        supervisor=topology.endpoint(SUPERVISOR),
        parent_pid=os.getpid(),
        node_name="n1",
        config=config,
    )
    supervisor = Neighbour(spec.supervisor)
    pubsub = Neighbour(topology.pubsub)
    fetchers = [Neighbour(e) for e in topology.fetchers] if config.custom_fetch else []
    client = Neighbour(topology.client) if topology.client else None
    shard = ShardActor(spec)
    caller = socket(zmq.DEALER)
    try:
        shard.setup()
        caller.connect(shard.endpoint)
        h = Harness(shard, caller, supervisor, pubsub, fetchers, client)
        assert any(isinstance(m, ActorReady) for m in supervisor.received())
        yield h
    finally:
        caller.close(linger=0)
        shard.teardown()
        for n in (supervisor, pubsub, *fetchers, *([client] if client else [])):
            n.socket.close(linger=0)
        shutil.rmtree(runtime, ignore_errors=True)


def track(pid: int, topic: str, key: str, start: int = 1, **meta: Any) -> Track:
    return Track(pid, start, topic, key, codec.pack_meta(meta))


def value(reply: Any) -> Any:
    assert reply.__class__.__name__ == "Ok", reply
    return reply.value


def test_a_track_is_journaled_before_its_reply_and_linked_once():
    with harness() as h:
        journal = Path(h.shard.spec.runtime_dir)
        before = sum(p.stat().st_size for p in journal.glob("shard.0.journal.*"))
        ref = value(h.call(track(P, "room", "u1", n=1)))
        after = sum(p.stat().st_size for p in journal.glob("shard.0.journal.*"))
        assert after > before  # the change was written before the reply went out
        value(h.call(track(P, "room", "u2")))
        links = [m for m in h.supervisor.received() if isinstance(m, Link)]
        assert links == [Link([[P, 1]])]  # one link for the process, on its first presence
        diffs = h.published()
        assert [d[0] for d in diffs] == ["room", "room"]
        assert diffs[0][2]["joins"]["u1"]["metas"][0] == {"n": 1, "phx_ref": ref}


def test_a_calls_batch_makes_one_diff_per_topic():
    with harness() as h:
        items = [codec.encode(track(P, "room", f"u{i}")) for i in range(50)]
        items.append(codec.encode(track(P, "other", "x")))
        replies = value(h.call(Calls(items)))
        assert len(replies) == 51
        diffs = h.published()
        assert [d[0] for d in diffs] == ["room", "other"]
        assert len(diffs[0][2]["joins"]) == 50


def test_a_track_by_a_reused_pid_takes_the_old_processs_presences_away():
    with harness() as h:
        value(h.call(track(P, "room", "old", start=1)))
        value(h.call(track(P, "hall", "old", start=1)))
        h.published()
        value(h.call(track(P, "room", "new", start=2)))  # pid P is another process now
        diffs = [d for d in h.published() if d[1] == "presence_diff"]
        assert sorted((d[0], list(d[2]["joins"]), list(d[2]["leaves"])) for d in diffs) == [
            ("hall", [], ["old"]),
            ("room", ["new"], ["old"]),  # one message: one diff per topic
        ]
        assert [m for m in h.supervisor.received() if isinstance(m, Link)] == [
            Link([[P, 1]]),
            Link([[P, 2]]),
        ]


def test_an_exit_takes_the_presences_and_is_told_on_the_exits_topic():
    with harness() as h:
        value(h.call(track(P, "room", "u1")))
        value(h.call(track(P, "hall", "u1")))
        value(h.call(track(Q, "room", "u2", start=5)))
        h.published()
        h.supervisor.push(ProcessesExited([[P, 1]], 123.0))
        out = h.published()
        leaves = {d[0]: list(d[2]["leaves"]) for d in out if d[1] == "presence_diff"}
        assert leaves == {"room": ["u1"], "hall": ["u1"]}
        (exit_,) = [d for d in out if d[0] == EXITS_TOPIC]
        assert exit_[2]["pid"] == P and exit_[2]["presences"] == 2
        assert exit_[2]["topics"] == ["hall", "room"] and exit_[2]["seen_at"] == 123.0
        h.supervisor.push(ProcessesExited([[Q, 4]], 0.0))  # an older process of pid Q
        assert h.published() == []
        assert list(codec.unpack(value(h.call(ListTopic("room"))))) == ["u2"]


def test_an_owner_killed_leaves_by_the_shards_own_pidfd_and_the_supervisors_notice_is_a_no_op():
    """The shard watches what it links: the leave needs no word from the supervisor (the
    test plays it, and it says nothing), whose later notice then finds nothing to do."""
    owner = subprocess.Popen(["sleep", "60"])
    try:
        with harness(own_pidfds=16) as h:
            key = [owner.pid, start_time(owner.pid)]
            value(h.call(Track(owner.pid, key[1], "room", "u", codec.pack_meta({}))))
            assert [m for m in h.supervisor.received() if isinstance(m, Link)] == [Link([key])]
            h.published()
            owner.kill()
            owner.wait()
            deadline = time.monotonic() + 5
            out: list[list[Any]] = []
            while not out and time.monotonic() < deadline:
                out = h.published()
            leaves = {d[0]: list(d[2]["leaves"]) for d in out if d[1] == "presence_diff"}
            assert leaves == {"room": ["u"]}
            assert [d[0] for d in out if d[0] == EXITS_TOPIC] == [EXITS_TOPIC]
            h.supervisor.push(ProcessesExited([key], time.time()))
            assert h.published() == []
            assert codec.unpack(value(h.call(ListTopic("room")))) == {}
    finally:
        owner.kill()
        owner.wait()


def test_the_last_untrack_of_a_process_unlinks_it():
    with harness() as h:
        value(h.call(track(P, "room", "u1")))
        value(h.call(track(P, "room", "u2")))
        value(h.call(Untrack(P, "room", "u1")))
        assert not [m for m in h.supervisor.received() if isinstance(m, Unlink)]
        assert value(h.call(UntrackPid(P))) == 1
        assert [m for m in h.supervisor.received() if isinstance(m, Unlink)] == [Unlink([[P, 1]])]


def test_a_list_is_never_served_stale():
    with harness() as h:
        value(h.call(track(P, "room", "u1")))
        assert list(codec.unpack(value(h.call(ListTopic("room"))))) == ["u1"]
        value(h.call(track(P, "room", "u2")))
        assert sorted(codec.unpack(value(h.call(ListTopic("room"))))) == ["u1", "u2"]


def test_with_a_fetch_diffs_go_through_the_fetchers_in_order():
    with harness(custom_fetch=True, fetchers=2) as h:
        value(h.call(track(P, "room", "u1")))
        value(h.call(track(P, "room", "u2")))
        h.idle()
        fetches = [m for f in h.fetchers for m in f.received() if isinstance(m, Fetch)]
        assert sorted(list(f.joins) for f in fetches) == [["u1"], ["u2"]]
        assert h.published() == []  # not before they are fetched
        first, second = sorted(fetches, key=lambda f: list(f.joins))
        for fetch in (second, first):  # answered out of order, as fetchers answer: a cast
            payload = {"joins": fetch.joins, "leaves": {}}
            h.cast(Fetched(fetch.id, payload, ""))
        diffs = h.published()
        assert [sorted(d[2]["joins"]) for d in diffs] == [["u1"], ["u2"]]  # the shard's order


def test_the_client_actor_gets_the_state_then_the_diffs():
    with harness(presence_client=True) as h:
        assert h.client is not None
        value(h.call(track(P, "room", "u1")))
        h.idle()
        h.client.received()
        h.cast(MetasResync())
        (state,) = h.client.received()
        assert isinstance(state, MetasState) and state.last
        assert list(state.topics["room"]) == ["u1"]
        value(h.call(track(P, "room", "u2")))
        h.idle()
        (diff,) = h.client.received()
        assert isinstance(diff, MetasDiff) and list(diff.diff["joins"]) == ["u2"]


@pytest.mark.parametrize("bad", [0, -5, 1 << 62])
def test_a_bad_owner_is_refused_and_nothing_changes(bad):
    with harness() as h:
        reply = h.call(track(bad, "room", "u1"))
        assert reply.__class__.__name__ == "Failed" and reply.kind == "MalformedFrame"
        assert h.published() == []
        assert h.shard.stats()["presences"] == 0
