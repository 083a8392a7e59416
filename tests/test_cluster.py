"""Nodes on loopback replicating presences (Phoenix's shard_replication_test, on real nodes).

Periods are short, as upstream's tests use: broadcast 50 ms, down 0.5 s, permdown 2 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

import whosthere
from tests.support.diffs import next_diff
from tests.support.processes import sleeper
from tests.support.waiting import wait_until
from whosthere.transport.messages import DropPeers
from whosthere.transport.sockets import Dealer

FAST = {
    "broadcast_period": 0.05,
    "max_silent_periods": 2,
    "down_period": 0.5,
    "permdown_period": 2.0,
    "clock_sample_periods": 2,
}
LISTEN = "tcp://127.0.0.1:0"
_NO_DIFF = whosthere.Message("", "", {"joins": {}, "leaves": {}})


@contextlib.contextmanager
def cluster(n: int, *, pool_size: int = 1, **options) -> Iterator[list[whosthere.Node]]:
    """n nodes; each knows only the first one's address (the cluster meshes itself)."""
    opts = {**FAST, **options}
    nodes: list[whosthere.Node] = []
    try:
        first = whosthere.Node(name="n0", pool_size=pool_size, listen=LISTEN, **opts).start()
        nodes.append(first)
        seed = first.cluster_address
        for i in range(1, n):
            nodes.append(
                whosthere.Node(
                    name=f"n{i}", pool_size=pool_size, listen=LISTEN, peers=[seed], **opts
                ).start()
            )
        for node in nodes:  # every node sees every other as up
            wait_until(lambda node=node: len(up_peers(node)) == n - 1, timeout=10)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def up_peers(node: whosthere.Node) -> list[str]:
    return sorted(p for p, r in node.status().get("peers", {}).items() if r["status"] == "up")


def listed(node: whosthere.Node, topic: str) -> dict[str, list]:
    """{key: sorted metas without refs} as the node lists the topic."""
    out = {}
    for key, entry in node.presence.list(topic).items():
        out[key] = sorted(m.get("v") for m in entry["metas"])
    return out


def split(node: whosthere.Node, *peers: str) -> None:
    """Lose all traffic between `node` and `peers` (both ways, as seen from `node`)."""
    dealer = Dealer(node.presence.info.endpoints["cluster"])
    try:
        dealer.call(DropPeers(list(peers)))
    finally:
        dealer.close()


def test_joins_updates_and_leaves_replicate(owner):
    with cluster(2) as (a, b), b.presence.subscribe("room") as sub:
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        wait_until(lambda: listed(b, "room") == {"alice": [1]})
        assert next_diff(sub)["joins"]["alice"]["metas"][0]["v"] == 1
        a.presence.update(owner.pid, "room", "alice", {"v": 2})
        wait_until(lambda: listed(b, "room") == {"alice": [2]})
        a.presence.untrack(owner.pid, "room", "alice")
        wait_until(lambda: listed(b, "room") == {})


def test_three_nodes_hold_the_same_presences(owner):
    with cluster(3, pool_size=2) as nodes:
        for i, node in enumerate(nodes):
            node.presence.track_many([(owner.pid, f"t{t}", f"u{i}", {"v": i}) for t in range(10)])
        want = {f"u{i}": [i] for i in range(3)}
        for node in nodes:
            for t in range(10):
                wait_until(lambda node=node, t=t: listed(node, f"t{t}") == want)


def test_a_worker_killed_on_one_node_leaves_everywhere():
    with cluster(2) as (a, b):
        worker = sleeper()
        try:
            with b.presence.subscribe("room") as sub:
                a.presence.track(worker.pid, "room", "w", {"v": 1})
                assert "w" in next_diff(sub)["joins"]
                worker.kill()
                assert "w" in next_diff(sub, timeout=5)["leaves"]
                assert listed(b, "room") == {}
        finally:
            worker.kill()
            worker.wait()


def test_a_node_killed_with_sigkill_leaves_after_down_period(owner):
    with cluster(2) as (a, b):
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        wait_until(lambda: listed(b, "room") == {"alice": [1]})
        with b.presence.subscribe("room") as sub:
            os.killpg(a.pid, signal.SIGKILL)  # the supervisor and every actor of node a
            # a join diff may still be on its way (list can show a change before its diff)
            wait_until(lambda: "alice" in (sub.get(timeout=0.1) or _NO_DIFF).payload["leaves"])
        assert listed(b, "room") == {}
        wait_until(lambda: b.status()["peers"] == {}, timeout=10)  # permdown: forgotten


@pytest.mark.parametrize(
    ("seconds", "periods"),
    [
        (0.3, {"down_period": 3.0, "permdown_period": 10.0}),
        (1.2, {"down_period": 0.5, "permdown_period": 5.0}),
        (3.0, {"down_period": 0.5, "permdown_period": 2.0}),
    ],
    ids=["shorter-than-down", "between-down-and-permdown", "longer-than-permdown"],
)
def test_netsplits_heal(owner, seconds, periods):
    """B sees each key's joins and leaves in an order that ends in A's state after the heal.

    As upstream, a split longer than down_period shows A's presences leave, then rejoin on
    the heal, then the changes made during the split (a presence removed meanwhile may
    flicker: leave, join, leave)."""
    import time

    with cluster(2, **periods) as (a, b), b.presence.subscribe("room") as sub:
        events: dict[str, list[str]] = {}

        def drain(timeout: float = 0.3) -> None:
            while (msg := sub.get(timeout=timeout)) is not None:
                for kind in ("joins", "leaves"):
                    for key in msg.payload[kind]:
                        events.setdefault(key, []).append(kind)

        a.presence.track(owner.pid, "room", "stays", {"v": 1})
        a.presence.track(owner.pid, "room", "goes", {"v": 1})
        wait_until(lambda: listed(b, "room") == {"goes": [1], "stays": [1]})
        split(a, "n1")
        split(b, "n0")
        a.presence.untrack(owner.pid, "room", "goes")  # during the split
        a.presence.track(owner.pid, "room", "new", {"v": 2})
        started = time.monotonic()
        time.sleep(seconds)  # the split itself: its length is the test's input
        if seconds > periods["down_period"]:
            wait_until(lambda: listed(b, "room") == {})  # a's presences hidden: down
        else:
            assert time.monotonic() - started < periods["down_period"]
            assert listed(b, "room") == {"goes": [1], "stays": [1]}  # nothing noticed
        split(a)
        split(b)
        wait_until(lambda: listed(b, "room") == {"new": [2], "stays": [1]}, timeout=10)
        drain()
        assert events["stays"][-1] == "joins" and events["new"] == ["joins"]
        assert events["goes"][-1] == "leaves"
        if seconds <= periods["down_period"]:
            assert events == {"stays": ["joins"], "goes": ["joins", "leaves"], "new": ["joins"]}


def test_a_partial_partition_converges_once_healed(owner):
    with cluster(3) as (a, b, c):
        split(a, "n2")
        split(c, "n0")
        c.presence.track(owner.pid, "room", "carol", {"v": 3})
        wait_until(lambda: listed(b, "room") == {"carol": [3]})
        wait_until(lambda: "n2" not in up_peers(a))
        assert listed(a, "room") == {}
        split(a)
        split(c)
        wait_until(lambda: listed(a, "room") == {"carol": [3]}, timeout=10)


def test_graceful_permdown_drops_presences_at_once(owner):
    with cluster(2, down_period=5.0, permdown_period=20.0) as (a, b):
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        wait_until(lambda: listed(b, "room") == {"alice": [1]})
        a.graceful_permdown()
        wait_until(lambda: listed(b, "room") == {}, timeout=2)  # well before down_period
        assert b.status()["peers"] == {}


def test_permdown_on_shutdown_drops_presences_when_a_node_stops(owner):
    opts = {**FAST, "down_period": 5.0, "permdown_period": 20.0}
    a = whosthere.Node(name="s0", listen=LISTEN, permdown_on_shutdown=True, **opts).start()
    try:
        b = whosthere.Node(name="s1", listen=LISTEN, peers=[a.cluster_address], **opts)
        with b:
            wait_until(lambda: up_peers(b) == ["s0"], timeout=10)
            a.presence.track(owner.pid, "room", "alice", {"v": 1})
            wait_until(lambda: listed(b, "room") == {"alice": [1]})
            a.stop()
            wait_until(lambda: listed(b, "room") == {}, timeout=2)  # well before down_period
            assert b.status()["peers"] == {}
    finally:
        a.stop()


def test_a_restarted_node_is_a_new_replica(owner):
    """The new incarnation's first heartbeat replaces the old one, long before down_period."""
    with cluster(2, down_period=10.0, permdown_period=30.0) as (a, b):
        a.presence.track(owner.pid, "room", "old", {"v": 1})
        wait_until(lambda: listed(b, "room") == {"old": [1]})
        address = a.cluster_address
        a.stop()
        opts = {**FAST, "down_period": 10.0, "permdown_period": 30.0}
        again = whosthere.Node(name="n0", listen=address, **opts).start()
        try:
            again.presence.track(owner.pid, "room", "new", {"v": 2})
            wait_until(lambda: listed(b, "room") == {"new": [2]}, timeout=5)
        finally:
            again.stop()


def test_pool_size_mismatch_is_refused_on_both_sides():
    with (
        whosthere.Node(name="p1", pool_size=1, listen=LISTEN, **FAST) as a,
        whosthere.Node(
            name="p2", pool_size=2, listen=LISTEN, peers=[a.cluster_address], **FAST
        ) as b,
    ):
        wait_until(lambda: "p2" in a.status()["cluster"]["refused"])
        wait_until(lambda: "p1" in b.status()["cluster"]["refused"])
        assert "pool_size mismatch" in a.status()["cluster"]["refused"]["p2"]
        assert b.status()["peers"] == {} and a.status()["peers"] == {}


def test_a_peer_without_the_cookie_is_refused(owner):
    with whosthere.Node(name="c1", listen=LISTEN, cookie="secret", **FAST) as a:
        seed = a.cluster_address
        wrong = whosthere.Node(name="c2", listen=LISTEN, peers=[seed], cookie="wrong", **FAST)
        right = whosthere.Node(name="c3", listen=LISTEN, peers=[seed], cookie="secret", **FAST)
        with wrong as b, right as c:
            wait_until(lambda: up_peers(a) == ["c3"])
            a.presence.track(owner.pid, "room", "alice", {"v": 1})
            wait_until(lambda: listed(c, "room") == {"alice": [1]})
            assert b.status()["peers"] == {} and listed(b, "room") == {}


def test_listening_beyond_loopback_needs_a_cookie(monkeypatch):
    monkeypatch.delenv("WHOSTHERE_COOKIE", raising=False)
    with pytest.raises(ValueError, match="without a cookie"):
        whosthere.Node(listen="tcp://192.0.2.1:7000")
    with pytest.raises(ValueError, match="tcp://host:port"):
        whosthere.Node(listen="ipc:///tmp/x")
    with pytest.raises(ValueError, match="not a wildcard"):
        whosthere.Node(listen="tcp://0.0.0.0:7000", cookie="c")
    with pytest.raises(ValueError, match="tcp://host:port"):
        whosthere.Node(listen="tcp://127.0.0.1:7000", peers=["tcp://nohost"])
    with pytest.raises(ValueError, match="peers need listen"):
        whosthere.Node(peers=["tcp://127.0.0.1:7000"])
