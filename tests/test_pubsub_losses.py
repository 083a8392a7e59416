"""Losses a subscriber must hear of (issue 11): a PubSub restart, an overflow, and the end of
the node; and a subscription of thousands of topics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import whosthere
from tests.support.diffs import expect_diff
from tests.support.nodes import actor_pid, alive
from tests.support.processes import sleeper
from tests.support.waiting import wait_until


def kill_pubsub(node: whosthere.Node) -> int:
    """SIGKILL the PubSub actor; its new pid once the supervisor has restarted it."""
    old = actor_pid(node, "pubsub")
    os.kill(old, signal.SIGKILL)
    return wait_until(
        lambda: (p := actor_pid(node, "pubsub")) != old and alive({p}) and p,
        what="the pubsub actor restarted",
    )


def test_a_pubsub_restart_is_announced_within_a_second_though_nothing_is_published():
    with whosthere.Node() as node, node.pubsub.subscribe("quiet", "still") as sub:
        assert sub.get(timeout=0.1) is None
        outcome: dict[str, object] = {}

        def read() -> None:
            try:
                outcome["got"] = sub.get(timeout=10)
            except whosthere.MessagesLost as lost:
                outcome["lost"] = lost
            outcome["at"] = time.monotonic()

        reader = threading.Thread(target=read)
        reader.start()
        old = actor_pid(node, "pubsub")
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: alive({actor_pid(node, "pubsub")}) - {old}, what="pubsub back")
        ready = time.monotonic()  # the new actor is up: from here, within a second
        reader.join(timeout=10)
        assert "got" not in outcome
        lost = outcome["lost"]
        assert isinstance(lost, whosthere.MessagesLost)
        assert lost.missed is None
        assert str(lost) == (
            "an unknown number of message(s) lost on topic '*': the PubSub actor restarted"
        )
        assert outcome["at"] - ready < 1.0  # type: ignore[operator]
        node.pubsub.broadcast("still", "after", 1)  # and everything after arrives
        assert sub.get(timeout=5) == whosthere.Message("still", "after", 1)
        assert sub.get(timeout=0.3) is None  # reported once, not again


def test_a_diff_published_right_after_a_pubsub_restart_reaches_the_subscriber(owner):
    with whosthere.Node() as node:
        presence = node.presence
        with presence.subscribe("room") as sub:
            presence.track(owner.pid, "room", "u1", {"s": 1})
            expect_diff(sub, joins={"u1": 1})
            kill_pubsub(node)
            owner.kill()  # its leave goes out before the subscriber has reconnected
            owner.wait()
            wait_until(lambda: not presence.list("room"), what="the owner's leave")
            with pytest.raises(whosthere.MessagesLost, match="the PubSub actor restarted"):
                sub.get(timeout=5)
            expect_diff(sub, leaves={"u1": 1})
            node.pubsub.broadcast("room", "later", 2)
            assert sub.get(timeout=5) == whosthere.Message("room", "later", 2)


def test_messages_published_while_the_subscriber_does_not_read_after_a_restart_arrive():
    with whosthere.Node() as node:
        pubsub = node.pubsub
        with pubsub.subscribe("busy") as sub:
            kill_pubsub(node)
            for i in range(100):  # the subscriber's filters are not back yet: kept, replayed
                pubsub.broadcast("busy", "n", i)
            pubsub._conn.dealer().flush()
            with pytest.raises(whosthere.MessagesLost, match="restarted"):
                sub.get(timeout=5)
            assert [sub.get(timeout=5).payload for _ in range(100)] == list(range(100))
            assert sub.get(timeout=0.3) is None


def test_an_overflowing_subscriber_hears_of_it_within_a_second_without_more_messages():
    total = 30_000  # far beyond what hwm 1,000 on both sides and the kernel hold
    with whosthere.Node(pubsub_hwm=1_000) as node:
        pubsub = node.pubsub
        with pubsub.subscribe("flood", hwm=1_000) as sub:
            for i in range(total):
                pubsub.broadcast("flood", "n", i)
            pubsub._conn.dealer().flush()  # all published: nothing more comes
            received: list[int] = []
            lost = None
            while lost is None:
                try:
                    msg = sub.get(timeout=1.0)  # None would mean the loss went unheard
                except whosthere.MessagesLost as exc:
                    lost = exc
                    continue
                assert msg is not None, f"no MessagesLost after {len(received)} messages"
                received.append(msg.payload)
            assert lost.missed is not None and lost.missed > 0
            assert received == list(range(len(received)))  # in order up to the gap
            while True:  # more gaps may follow: the actor publishes as the queue drains
                try:
                    msg = sub.get(timeout=0.5)
                except whosthere.MessagesLost:
                    continue
                if msg is None:
                    break
                received.append(msg.payload)
            assert len(received) + sub.missed == total
            assert received == sorted(received)


def test_a_keeping_up_subscriber_hears_of_no_loss(node_for_losses):
    pubsub = node_for_losses.pubsub
    with pubsub.subscribe("steady", hwm=100) as sub:
        for i in range(3_000):  # many runs of hwm/2 messages: a Sync after each drain
            pubsub.broadcast("steady", "n", i)
            if i % 40 == 39:
                assert [sub.get(timeout=5).payload for _ in range(40)] == list(range(i - 39, i + 1))
        assert sub.get(timeout=0.5) is None
        assert sub.missed == 0


def test_one_subscription_holds_five_thousand_topics(node_for_losses):
    pubsub = node_for_losses.pubsub
    topics = [f"many:{i}" for i in range(5_000)]
    with pubsub.subscribe(*topics) as sub:
        assert sorted(sub.topics) == sorted(topics)
        for t in topics:
            pubsub.broadcast(t, "hi", t)
        got = [sub.get(timeout=5) for _ in topics]
        assert sorted(m.payload for m in got if m) == sorted(topics)
        sub.subscribe(*(f"more:{i}" for i in range(3_000)))  # later batches too
        pubsub.broadcast("more:2999", "hi", 1)
        assert sub.get(timeout=5) == whosthere.Message("more:2999", "hi", 1)


@pytest.fixture(scope="module")
def node_for_losses():
    with whosthere.Node() as node:
        yield node


CHILD = """
import sys, time, whosthere
presence = whosthere.Presence.connect(sys.argv[1], timeout=5)
ps = whosthere.PubSub.connect(sys.argv[1], timeout=5)
presence.list("x")
print("ready", flush=True)
sys.stdin.readline()
calls = (("list", lambda: presence.list("x")), ("broadcast", lambda: ps.broadcast("x", "e", 1)))
for name, call in calls:
    start = time.monotonic()
    try:
        call()
        print(name, "ok", flush=True)
    except whosthere.NodeUnavailable:
        print(name, "NodeUnavailable", round(time.monotonic() - start, 3), flush=True)
"""


def test_when_the_supervisor_dies_every_client_fails_at_once(owner):
    node = whosthere.Node(call_timeout=5)
    node.start()
    child = None
    try:
        presence, pubsub = node.presence, node.pubsub
        sub = presence.subscribe("room")
        presence.track(owner.pid, "room", "u1", {})
        assert sub.get(timeout=5) is not None  # its diff: nothing else is on its way
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, node.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        os.kill(node.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(whosthere.NodeUnavailable, match=r"supervisor \(pid \d+\) has exited"):
            sub.get()  # would otherwise wait forever
        with pytest.raises(whosthere.NodeUnavailable):
            presence.list("room")
        with pytest.raises(whosthere.NodeUnavailable):
            presence.track(owner.pid, "room", "u2", {})
        with pytest.raises(whosthere.NodeUnavailable):
            pubsub.broadcast("room", "e", 1)
        assert time.monotonic() - start < 1.0  # not the 5 s call timeout
        child.stdin.write("go\n")
        child.stdin.flush()
        out, _ = child.communicate(timeout=10)
        lines = [line.split() for line in out.splitlines()]
        assert [line[:2] for line in lines] == [
            ["list", "NodeUnavailable"],
            ["broadcast", "NodeUnavailable"],
        ]
        assert all(float(line[2]) < 0.5 for line in lines)
        sub.close()
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        node.stop()


def test_a_reused_supervisor_pid_is_not_taken_for_the_supervisor():
    from whosthere.client import SupervisorWatch
    from whosthere.watch import start_time

    proc = sleeper()
    try:
        started = start_time(proc.pid)
        assert started is not None
        SupervisorWatch(proc.pid, started).check()  # alive: no error
        with pytest.raises(whosthere.NodeUnavailable, match="has exited"):
            SupervisorWatch(proc.pid, started + 1).check()  # same pid, another process
    finally:
        proc.kill()
        proc.wait()
