"""The PubSub actor: exact topics, order, fan-out, slow subscribers, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest
import zmq

import whosthere
from tests.support.nodes import actor_pid, alive
from tests.support.waiting import wait_until
from whosthere.transport.messages import Ping
from whosthere.transport.sockets import Dealer, socket


@pytest.fixture(scope="module")
def node():
    with whosthere.Node() as node:
        yield node


@pytest.fixture
def pubsub(node):
    pubsub = whosthere.PubSub.connect(node.address)
    yield pubsub
    pubsub.close()


def drain(sub: whosthere.Subscription, count: int, timeout: float = 10.0) -> list:
    out = []
    while len(out) < count:
        msg = sub.get(timeout=timeout)
        assert msg is not None, f"only {len(out)} of {count} messages arrived"
        out.append(msg)
    return out


def test_topics_match_exactly_never_by_prefix(pubsub):
    topics = ["room", "room:1", "room:10", "room:1:x"]
    subs = {t: pubsub.subscribe(t) for t in topics}
    try:
        for t in topics:
            pubsub.broadcast(t, "hello", t)
        for t, sub in subs.items():
            assert sub.get(timeout=5) == whosthere.Message(t, "hello", t)
            assert sub.get(timeout=0.2) is None
    finally:
        for sub in subs.values():
            sub.close()


def test_ten_thousand_messages_arrive_in_order(pubsub):
    with pubsub.subscribe("order") as sub:
        for i in range(10_000):
            pubsub.broadcast("order", "n", i)
        assert [m.payload for m in drain(sub, 10_000)] == list(range(10_000))


def test_fifty_subscribers_each_get_everything_in_order(pubsub):
    subs = [pubsub.subscribe("fan") for _ in range(50)]
    try:
        for i in range(1_000):
            pubsub.broadcast("fan", "n", i)
        for sub in subs:
            assert [m.payload for m in drain(sub, 1_000)] == list(range(1_000))
    finally:
        for sub in subs:
            sub.close()


def test_order_is_kept_per_publisher_across_processes_and_threads(node, pubsub):
    code = (
        "import sys, whosthere\n"
        f"ps = whosthere.PubSub.connect({node.address!r})\n"
        "for i in range(2000): ps.broadcast('multi', 'n', [sys.argv[1], i])\n"
        "ps.close()\n"
    )
    with pubsub.subscribe("multi") as sub:
        procs = [subprocess.Popen([*python_argv(code), name]) for name in ("p1", "p2")]

        def thread_publisher(name: str) -> None:
            for i in range(2000):
                pubsub.broadcast("multi", "n", [name, i])

        threads = [threading.Thread(target=thread_publisher, args=(f"t{k}",)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            assert p.wait(timeout=30) == 0
        last: dict[str, int] = {}
        for msg in drain(sub, 8000):
            name, i = msg.payload
            assert i == last.get(name, -1) + 1
            last[name] = i
        assert last == {"p1": 1999, "p2": 1999, "t0": 1999, "t1": 1999}


def python_argv(code: str) -> list[str]:
    import sys

    return [sys.executable, "-c", code]


def test_subscribe_is_in_place_when_it_returns(node, pubsub):
    other = whosthere.PubSub.connect(node.address)
    try:
        for i in range(50):
            with pubsub.subscribe(f"fresh:{i}") as sub:
                other.broadcast(f"fresh:{i}", "first", i)
                assert sub.get(timeout=5) == whosthere.Message(f"fresh:{i}", "first", i)
    finally:
        other.close()


def test_a_slow_subscriber_does_not_block_others_and_detects_its_gap():
    total = 60_000  # far beyond what the slow one's queues hold (hwm 20 + 10,000 + kernel)
    with whosthere.Node(pubsub_hwm=10_000) as node:
        pubsub = node.pubsub
        slow = pubsub.subscribe("busy", hwm=20)
        fast = pubsub.subscribe("busy")
        fast_got: list = []

        def read_fast() -> None:
            try:
                fast_got.extend(drain(fast, total))
            except whosthere.MessagesLost as lost:
                fast_got.append(lost)

        reader = threading.Thread(target=read_fast)
        reader.start()
        try:
            for i in range(total):
                pubsub.broadcast("busy", "n", i)
            reader.join(timeout=60)
            assert [m.payload for m in fast_got] == list(range(total))
            received, missed, gaps = [], 0, 0

            def read_slow(timeout: float) -> object:
                nonlocal missed, gaps
                try:
                    msg = slow.get(timeout=timeout)
                except whosthere.MessagesLost as lost:
                    gaps += 1
                    missed += lost.missed or 0
                    return True
                if msg is not None:
                    received.append(msg.payload)
                return msg

            while read_slow(0.5) is not None:  # what the slow one still holds
                pass
            pubsub.broadcast("busy", "n", "end")  # reveals a gap at the tail, if any
            while not received or received[-1] != "end":
                assert read_slow(5) is not None
            assert gaps >= 1
            assert len(received) + missed == total + 1
            assert received[:-1] == sorted(received[:-1])
            assert slow.missed == missed
        finally:
            reader.join(timeout=60)
            slow.close()
            fast.close()


def test_malformed_frames_are_rejected_and_the_pubsub_lives_on(node, pubsub):
    endpoint = pubsub.info.endpoints["pubsub"]
    raw = socket(zmq.DEALER)
    raw.connect(endpoint)
    try:
        raw.send_multipart([b"", b"\xc1\xc1"])
        raw.send_multipart([b"", b"\x93\x15\x01\x02"])  # Broadcast with the wrong shape
        raw.send_multipart([b"r", b"\x91\xcd\x03\xe7"])  # unknown tag, as a call
        assert raw.poll(5000)
        assert raw.recv_multipart()[0] == b"r"
    finally:
        raw.close()
    dealer = Dealer(endpoint)
    try:
        assert dealer.call(Ping()) == actor_pid(node, "pubsub")
    finally:
        dealer.close()
    with pubsub.subscribe("still") as sub:
        pubsub.broadcast("still", "ok", 1)
        assert sub.get(timeout=5) == whosthere.Message("still", "ok", 1)
    assert next(a for a in node.status()["actors"] if a["name"] == "pubsub")["restarts"] == 0


def test_a_bad_item_of_a_publish_many_loses_only_itself(node, pubsub):
    from whosthere.transport import codec
    from whosthere.transport.messages import PublishMany

    dealer = Dealer(pubsub.info.endpoints["pubsub"])
    try:
        with pubsub.subscribe("many") as sub:
            items = [
                ["many", "e", codec.pack_value(1)],
                ["many", 5, b""],
                "x",
                ["many", "e", b"\x02"],
            ]
            dealer.cast(PublishMany(items, True))
            assert sub.get(timeout=5) == whosthere.Message("many", "e", 1)
            assert sub.get(timeout=5) == whosthere.Message("many", "e", 2)
    finally:
        dealer.close()
    assert next(a for a in node.status()["actors"] if a["name"] == "pubsub")["restarts"] == 0


def test_bad_input_gets_a_clear_error_client_side(pubsub):
    with pytest.raises(whosthere.InvalidMeta, match="cannot be sent"):
        pubsub.broadcast("t", "e", {"x": object()})
    with pytest.raises(TypeError, match="^topic must be a str, got int$"):
        pubsub.broadcast(1, "e", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^event must be a str, got NoneType$"):
        pubsub.local_broadcast("t", None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^topic must be a str"):
        pubsub.subscribe(b"t")  # type: ignore[arg-type]


def test_local_broadcast_and_unsubscribe(pubsub):
    with pubsub.subscribe("a", "b") as sub:
        assert sorted(sub.topics) == ["a", "b"]
        pubsub.local_broadcast("a", "x", 1)
        assert sub.get(timeout=5) == whosthere.Message("a", "x", 1)
        pubsub.unsubscribe(sub, "a")
        pubsub.broadcast("a", "x", 2)
        pubsub.broadcast("b", "x", 3)
        assert sub.get(timeout=5) == whosthere.Message("b", "x", 3)
        assert sub.get(timeout=0.2) is None


def test_a_restarted_pubsub_is_reported_as_a_possible_loss():
    with whosthere.Node() as node:
        pubsub = node.pubsub
        with pubsub.subscribe("r") as sub:
            pubsub.broadcast("r", "n", "before")
            assert sub.get(timeout=5).payload == "before"
            old = actor_pid(node, "pubsub")
            os.kill(old, signal.SIGKILL)
            wait_until(
                lambda: (p := actor_pid(node, "pubsub")) != old and alive({p}),
                what="pubsub restarted",
            )

            def next_event():
                pubsub.broadcast("r", "n", "after")  # until the SUB has resubscribed
                try:
                    return sub.get(timeout=0.05)
                except whosthere.MessagesLost as lost:
                    return lost

            lost = wait_until(next_event, what="a message after the restart")
            assert isinstance(lost, whosthere.MessagesLost)
            assert lost.missed is None
            assert str(lost) == (
                "an unknown number of message(s) lost on topic 'r': the PubSub actor restarted"
            )
            assert sub.get(timeout=5).payload == "after"


def test_resubscribing_never_takes_old_messages_for_new_ones(node, pubsub):
    """Regression: numbers restarted when a topic lost its last subscriber."""
    with pubsub.subscribe("again") as sub:
        for i in range(3):
            pubsub.broadcast("again", "old", i)
        pubsub._conn.dealer().flush()
        sub.unsubscribe("again")
        wait_until(lambda: _topics(node) == 0, what="the topic unsubscribed")
        sub.subscribe("again")  # the 3 old messages may still sit unread in the socket
        for i in range(3):
            pubsub.broadcast("again", "new", i)
        got = [sub.get(timeout=5) for _ in range(3)]
        assert [(m.event, m.payload) for m in got if m] == [("new", 0), ("new", 1), ("new", 2)]
        assert sub.get(timeout=0.2) is None


def _topics(node: whosthere.Node) -> int:
    return next(a for a in node.status()["actors"] if a["name"] == "pubsub")["stats"]["topics"]
