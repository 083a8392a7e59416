"""Cluster-wide PubSub on three nodes: `broadcast` reaches every node's subscribers once, in
the sender's order; `local_broadcast` stays home; a netsplit loses what was sent across it,
never delivers it late, and every subscriber on the far side hears of it (`MessagesLost`)."""

from __future__ import annotations

import time

import pytest

import whosthere
from tests.support.waiting import wait_until
from tests.test_cluster import cluster, heal, split


def drain(sub, want: int, timeout: float = 10.0) -> list:
    """Payloads of `want` messages, in the order received (fails past `timeout`)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"got {len(got)} of {want}: {got[-3:]}"
        msg = sub.get(timeout=0.1)
        if msg is not None:
            got.append(msg.payload)
    return got


def nothing_more(sub, seconds: float = 0.5) -> None:
    msg = sub.get(timeout=seconds)
    assert msg is None, f"unexpected {msg}"


def test_a_broadcast_reaches_every_nodes_subscribers_once_in_order(engine):
    with cluster(3, engine=engine) as nodes:
        subs = [node.pubsub.subscribe("chat", "other") for node in nodes]
        try:
            for i in range(300):
                nodes[i % 2].pubsub.broadcast("chat", "msg", {"from": i % 2, "n": i})
            nodes[2].pubsub.broadcast("other", "msg", {"n": -1})
            for sub in subs:
                got = drain(sub, 301)
                for sender in (0, 1):  # each sender's order, and each message once
                    mine = [p["n"] for p in got if p.get("from") == sender]
                    assert mine == list(range(sender, 300, 2))
                assert {"n": -1} in got
                nothing_more(sub)
            nodes[1].pubsub.local_broadcast("chat", "msg", {"local": True})
            assert drain(subs[1], 1) == [{"local": True}]
            for sub in (subs[0], subs[2]):
                nothing_more(sub)
            stats = {a["name"]: a["stats"] for a in nodes[2].status()["actors"]}
            assert stats["pubsub"]["bridged_in"] == 300 and stats["pubsub"]["bridge_losses"] == 0
        finally:
            for sub in subs:
                sub.close()


def test_what_is_sent_across_a_netsplit_is_lost_not_late_and_told(engine):
    with cluster(3, engine=engine) as nodes:
        a, _, c = nodes
        subs = [node.pubsub.subscribe("chat") for node in nodes]
        try:
            a.pubsub.broadcast("chat", "msg", {"n": 0})
            for sub in subs:
                assert drain(sub, 1) == [{"n": 0}]
            split(a, "n2")  # a and c lose each other; b still hears both
            split(c, "n0")
            for n in (1, 2, 3):
                a.pubsub.broadcast("chat", "msg", {"n": n})
            assert drain(subs[1], 3) == [{"n": 1}, {"n": 2}, {"n": 3}]
            nothing_more(subs[2])  # nothing crosses the split
            heal(nodes)
            # c hears of the loss soon, though nothing more is broadcast (a's stream beats)
            with pytest.raises(whosthere.MessagesLost):
                wait_until(lambda: subs[2].get(timeout=0.1), timeout=5, what="MessagesLost")
            a.pubsub.broadcast("chat", "msg", {"n": 4})
            assert drain(subs[2], 1) == [{"n": 4}]  # never 1, 2, 3 late
            # on the near side, everything and no loss (a get would raise MessagesLost)
            assert drain(subs[0], 4) == [{"n": n} for n in (1, 2, 3, 4)]
            assert drain(subs[1], 1) == [{"n": 4}]
            for sub in subs:
                nothing_more(sub)
        finally:
            for sub in subs:
                sub.close()
