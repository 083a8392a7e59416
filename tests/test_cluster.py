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
from whosthere.transport.messages import DropPeers, GetStats
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
def cluster(
    n: int, *, pool_size: int = 1, engine: str | None = None, **options
) -> Iterator[list[whosthere.Node]]:
    """n nodes; each knows only the first one's address (the cluster meshes itself), or,
    with `engine` (a Redis URL), only the Redis server."""
    opts = {**FAST, **options}
    nodes: list[whosthere.Node] = []
    try:
        if engine is not None:
            for i in range(n):
                nodes.append(
                    whosthere.Node(name=f"n{i}", pool_size=pool_size, engine=engine, **opts).start()
                )
        else:
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


def converged(
    nodes: list[whosthere.Node], want: dict[str, dict[str, list]], timeout: float = 10
) -> None:
    """Wait until every node lists exactly `want` ({topic: listed}): the same everywhere."""

    def views() -> list[dict[str, dict[str, list]]]:
        return [{topic: listed(node, topic) for topic in want} for node in nodes]

    wait_until(lambda: all(v == want for v in views()), timeout=timeout, what=f"{want}")


def split(node: whosthere.Node, *peers: str) -> None:
    """Lose all traffic between `node` and `peers` (both ways, as seen from `node`)."""
    dealer = Dealer(node.presence.info.endpoints["cluster"])
    try:
        dealer.call(DropPeers(list(peers)))
    finally:
        dealer.close()


def isolate(nodes: list[whosthere.Node], i: int) -> None:
    """A netsplit between node i and all the others."""
    for j, node in enumerate(nodes):
        split(node, *([f"n{k}" for k in range(len(nodes)) if k != i] if j == i else [f"n{i}"]))


def heal(nodes: list[whosthere.Node]) -> None:
    for node in nodes:
        split(node)


def restart(nodes: list[whosthere.Node], i: int, **options) -> whosthere.Node:
    """Stop node i and start a new incarnation on its address, or on its Redis engine
    under its name (a new replica, new vsn)."""
    engine = nodes[i].engine  # the URL without a password: the tests' servers have none
    address = nodes[i].cluster_address
    seed = nodes[(i + 1) % len(nodes)].cluster_address
    nodes[i].stop()
    where = {"engine": engine} if engine else {"listen": address, "peers": [seed]}
    nodes[i] = whosthere.Node(name=f"n{i}", **where, **{**FAST, **options}).start()
    return nodes[i]


def test_joins_updates_and_leaves_replicate(owner, engine):
    with cluster(3, engine=engine) as nodes, nodes[1].presence.subscribe("room") as sub:
        a = nodes[0]
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        converged(nodes, {"room": {"alice": [1]}})
        assert next_diff(sub)["joins"]["alice"]["metas"][0]["v"] == 1
        a.presence.update(owner.pid, "room", "alice", {"v": 2})
        converged(nodes, {"room": {"alice": [2]}})
        a.presence.untrack(owner.pid, "room", "alice")
        converged(nodes, {"room": {}})


def test_three_nodes_hold_the_same_presences(owner, engine):
    with cluster(3, pool_size=2, engine=engine) as nodes:
        for i, node in enumerate(nodes):
            node.presence.track_many([(owner.pid, f"t{t}", f"u{i}", {"v": i}) for t in range(10)])
        converged(nodes, {f"t{t}": {f"u{i}": [i] for i in range(3)} for t in range(10)})


def test_a_worker_killed_on_one_node_leaves_everywhere(owner, engine):
    with cluster(3, engine=engine) as nodes:
        a, b, c = nodes
        worker = sleeper()
        try:
            with b.presence.subscribe("room") as sub:
                c.presence.track(owner.pid, "room", "stays", {"v": 3})
                a.presence.track(worker.pid, "room", "w", {"v": 1})
                converged(nodes, {"room": {"stays": [3], "w": [1]}})
                while "w" not in next_diff(sub)["joins"]:
                    pass
                worker.kill()
                while "w" not in (diff := next_diff(sub, timeout=5))["leaves"]:
                    assert not diff["leaves"], diff  # only the join of "stays" may come between
                converged(nodes, {"room": {"stays": [3]}})
        finally:
            worker.kill()
            worker.wait()


def test_a_node_killed_with_sigkill_leaves_after_down_period(owner, engine):
    """Node c's whole process tree is killed: after down_period its presences leave a and b;
    after permdown_period they forget it (replica and address: no longer dialled)."""
    with cluster(3, engine=engine) as nodes:
        a, b, c = nodes
        for i, node in enumerate(nodes):
            node.presence.track(owner.pid, "room", f"u{i}", {"v": i})
        converged(nodes, {"room": {"u0": [0], "u1": [1], "u2": [2]}})
        with b.presence.subscribe("room") as sub:
            os.killpg(c.pid, signal.SIGKILL)  # the supervisor and every actor of node c
            # a join diff may still be on its way (list can show a change before its diff)
            wait_until(lambda: "u2" in (sub.get(timeout=0.1) or _NO_DIFF).payload["leaves"])
        converged([a, b], {"room": {"u0": [0], "u1": [1]}})
        for node, other in ((a, "n1"), (b, "n0")):  # permdown: forgotten
            wait_until(lambda n=node, o=other: list(n.status()["peers"]) == [o], timeout=10)
            wait_until(  # the cluster actor forgets it after max(permdown_period, 10 s)
                lambda n=node, o=other: list(n.status()["cluster"]["peers"]) == [o], timeout=15
            )


def test_a_node_restarted_under_another_name_replaces_the_old_name(owner):
    with cluster(3, down_period=5.0, permdown_period=20.0) as nodes:
        address = nodes[2].cluster_address
        nodes[2].stop()
        nodes[2] = whosthere.Node(
            name="m2", listen=address, peers=[nodes[0].cluster_address], **FAST
        ).start()
        for node, others in zip(nodes, (["m2", "n1"], ["m2", "n0"], ["n0", "n1"]), strict=True):
            wait_until(lambda node=node, o=others: sorted(node.status()["cluster"]["peers"]) == o)
        nodes[2].presence.track(owner.pid, "room", "m", {"v": 1})
        converged(nodes, {"room": {"m": [1]}})


@pytest.mark.parametrize(
    ("seconds", "periods"),
    [
        (0.3, {"down_period": 3.0, "permdown_period": 10.0}),
        (2.5, {"down_period": 1.5, "permdown_period": 6.0}),
        (3.0, {"down_period": 0.5, "permdown_period": 2.0}),
    ],
    ids=["shorter-than-down", "between-down-and-permdown", "longer-than-permdown"],
)
def test_netsplits_heal(owner, seconds, periods, engine):
    """Node a is cut off from b and c, changes its presences, and the split heals.

    A split longer than down_period shows a's presences leave, and on the heal rejoin as
    they are then: unlike upstream, a presence removed during the split does not join
    again for a moment (b shows a once it has caught up)."""
    import time

    with cluster(3, **periods, engine=engine) as nodes, nodes[1].presence.subscribe("room") as sub:
        a, b, c = nodes
        events: dict[str, list[str]] = {}

        def drain(timeout: float = 0.3) -> None:
            while (msg := sub.get(timeout=timeout)) is not None:
                for kind in ("joins", "leaves"):
                    for key in msg.payload[kind]:
                        events.setdefault(key, []).append(kind)

        a.presence.track(owner.pid, "room", "stays", {"v": 1})
        a.presence.track(owner.pid, "room", "goes", {"v": 1})
        c.presence.track(owner.pid, "room", "carol", {"v": 3})
        converged(nodes, {"room": {"carol": [3], "goes": [1], "stays": [1]}})
        isolate(nodes, 0)
        a.presence.untrack(owner.pid, "room", "goes")  # during the split
        a.presence.track(owner.pid, "room", "new", {"v": 2})
        started = time.monotonic()
        time.sleep(seconds)  # the split itself: its length is the test's input
        if seconds > periods["down_period"]:
            converged([b, c], {"room": {"carol": [3]}})  # a's presences hidden: down
            converged([a], {"room": {"new": [2], "stays": [1]}})  # and c's on a
        else:
            assert time.monotonic() - started < periods["down_period"]
            assert listed(b, "room") == {"carol": [3], "goes": [1], "stays": [1]}
        heal(nodes)
        converged(nodes, {"room": {"carol": [3], "new": [2], "stays": [1]}})
        drain()
        split_seen = seconds > periods["down_period"]
        assert events == {
            "stays": ["joins", "leaves", "joins"] if split_seen else ["joins"],
            "goes": ["joins", "leaves"],
            "new": ["joins"],
            "carol": ["joins"],
        }


def test_a_partial_partition_converges_once_healed(owner, engine):
    """a and c cannot reach each other, both reach b: b sees all, a and c each other's not."""
    with cluster(3, engine=engine) as nodes:
        a, b, c = nodes
        split(a, "n2")
        split(c, "n0")
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        c.presence.track(owner.pid, "room", "carol", {"v": 3})
        converged([b], {"room": {"alice": [1], "carol": [3]}})
        wait_until(lambda: "n2" not in up_peers(a) and "n0" not in up_peers(c))
        converged([a], {"room": {"alice": [1]}})
        converged([c], {"room": {"carol": [3]}})
        heal(nodes)
        converged(nodes, {"room": {"alice": [1], "carol": [3]}})


def test_a_rolling_restart_keeps_every_other_presence(owner, engine):
    """Each node in turn restarts (a new replica) and tracks its presence again; the others'
    presences never leave anywhere, and all three end with the same view."""
    with cluster(3, down_period=5.0, permdown_period=20.0, engine=engine) as nodes:
        for i, node in enumerate(nodes):
            node.presence.track(owner.pid, "room", f"u{i}", {"v": 0})
        converged(nodes, {"room": {f"u{i}": [0] for i in range(3)}})
        version = [0, 0, 0]
        for i in range(3):
            watcher = nodes[(i + 1) % 3]
            with watcher.presence.subscribe("room") as sub:
                node = restart(nodes, i, down_period=5.0, permdown_period=20.0)
                version[i] = 1
                node.presence.track(owner.pid, "room", f"u{i}", {"v": 1})
                want = {"room": {f"u{k}": [version[k]] for k in range(3)}}
                converged(nodes, want)
                left = set()
                while (msg := sub.get(timeout=0.3)) is not None:
                    for key, entry in msg.payload["leaves"].items():
                        left.update((key, meta["v"]) for meta in entry["metas"])
                # only old incarnations' presences leave (a diff of the last round may
                # arrive late): never a presence of a node not restarted yet, nor a new one
                assert left <= {(f"u{k}", 0) for k in range(i + 1)}, left
            for other in nodes:
                wait_until(lambda other=other: len(up_peers(other)) == 2, timeout=10)
        # each old incarnation was replaced, not kept beside the new one
        assert {n.name: sorted(n.status()["peers"]) for n in nodes} == {
            "n0": ["n1", "n2"],
            "n1": ["n0", "n2"],
            "n2": ["n0", "n1"],
        }


def test_graceful_permdown_drops_presences_at_once(owner, engine):
    with cluster(3, down_period=5.0, permdown_period=20.0, engine=engine) as nodes:
        a, b, c = nodes
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        b.presence.track(owner.pid, "room", "bob", {"v": 2})
        converged(nodes, {"room": {"alice": [1], "bob": [2]}})
        a.graceful_permdown()
        converged([b, c], {"room": {"bob": [2]}}, timeout=2)  # well before down_period
        assert sorted(b.status()["peers"]) == ["n2"] and sorted(c.status()["peers"]) == ["n1"]


def test_a_lost_goodbye_is_repeated_until_acknowledged(owner, engine):
    """b hears nothing from a while a says goodbye; the goodbye is repeated, and once the
    split heals (well before down_period) b drops a's presences."""
    import threading

    with cluster(3, down_period=5.0, permdown_period=20.0, engine=engine) as nodes:
        a, b, c = nodes
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        converged(nodes, {"room": {"alice": [1]}})
        split(b, "n0")

        def heal_once_a_goodbye_is_lost() -> None:
            # c has acknowledged, b has not (it drops what a sends): a repeats the goodbye
            # for GOODBYE_FOR_S (1 s), so this looks at a's shard alone (a whole `status`,
            # every actor of the node, took long enough under load to miss the window)
            shard = Dealer(a.presence.info.endpoints["shard.0"])
            try:
                wait_until(
                    lambda: shard.call(GetStats()).get("departing") == ["n1"], interval=0.001
                )
            finally:
                shard.close()
            split(b)

        healer = threading.Thread(target=heal_once_a_goodbye_is_lost)
        healer.start()
        a.graceful_permdown()
        healer.join()
        converged([b, c], {"room": {}}, timeout=2)
        assert list(b.status()["peers"]) == ["n2"]


def test_permdown_on_shutdown_drops_presences_when_a_node_stops(owner, engine):
    opts = {"down_period": 5.0, "permdown_period": 20.0, "permdown_on_shutdown": True}
    with cluster(3, **opts, engine=engine) as nodes:
        a, b, c = nodes
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        c.presence.track(owner.pid, "room", "carol", {"v": 3})
        converged(nodes, {"room": {"alice": [1], "carol": [3]}})
        a.stop()
        converged([b, c], {"room": {"carol": [3]}}, timeout=2)  # well before down_period
        assert sorted(b.status()["peers"]) == ["n2"] and sorted(c.status()["peers"]) == ["n1"]


def test_a_restarted_node_is_a_new_replica(owner, engine):
    """The new incarnation's first heartbeat replaces the old one, long before down_period."""
    with cluster(3, down_period=10.0, permdown_period=30.0, engine=engine) as nodes:
        nodes[0].presence.track(owner.pid, "room", "old", {"v": 1})
        nodes[2].presence.track(owner.pid, "room", "carol", {"v": 3})
        converged(nodes, {"room": {"carol": [3], "old": [1]}})
        again = restart(nodes, 0, down_period=10.0, permdown_period=30.0)
        again.presence.track(owner.pid, "room", "new", {"v": 2})
        converged(nodes, {"room": {"carol": [3], "new": [2]}})


def test_pool_size_mismatch_is_refused_on_both_sides(engine):
    first = {"engine": engine} if engine else {"listen": LISTEN}
    with whosthere.Node(name="p1", pool_size=1, **first, **FAST) as a:
        second = {"engine": engine} if engine else {"listen": LISTEN, "peers": [a.cluster_address]}
        with whosthere.Node(name="p2", pool_size=2, **second, **FAST) as b:
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
    with pytest.raises(ValueError, match="give advertise="):
        whosthere.Node(listen="tcp://0.0.0.0:7000", cookie="c")
    with pytest.raises(ValueError, match="give advertise="):
        whosthere.Node(listen="tcp://0.0.0.0:7000", advertise="tcp://*:7000", cookie="c")
    with pytest.raises(ValueError, match="needs listen"):
        whosthere.Node(advertise="tcp://127.0.0.1:7000")
    with pytest.raises(ValueError, match="tcp://host:port"):
        whosthere.Node(listen="tcp://127.0.0.1:7000", peers=["tcp://nohost"])
    with pytest.raises(ValueError, match="peers need listen"):
        whosthere.Node(peers=["tcp://127.0.0.1:7000"])


def test_a_whole_state_transfer_over_the_frame_limit_arrives_in_pieces(owner, engine):
    """70 MB of presences (frames over 64 MiB are refused unread) reach a newcomer; over
    Redis in pieces of 1 MiB, paced under its pub/sub client output-buffer limits."""
    pad = "x" * 10_000
    first = {"engine": engine} if engine else {"listen": LISTEN}
    with whosthere.Node(name="big", **first, **FAST) as a:
        a.presence.track_many(
            [(owner.pid, f"t{i % 10}", f"k{i}", {"pad": pad}) for i in range(7000)]
        )
        second = {"engine": engine} if engine else {"listen": LISTEN, "peers": [a.cluster_address]}
        with whosthere.Node(name="new", **second, **FAST) as b:
            wait_until(lambda: len(b.presence.list("t3")) == 700, timeout=30)
            assert sum(len(b.presence.list(f"t{t}")) for t in range(10)) == 7000
            assert b.status()["actors"]
            if engine:
                assert a.status()["cluster"]["engine"]["published"] > 70  # in pieces


def test_a_node_listening_on_every_interface_advertises_a_dialable_address(owner):
    opts = {**FAST, "cookie": "secret"}
    anywhere = {"listen": "tcp://0.0.0.0:0", "advertise": "tcp://127.0.0.1:0"}
    wild = whosthere.Node(name="w0", **anywhere, **opts)
    with wild as a:
        status = a.status()["cluster"]
        assert status["bound"].startswith("tcp://0.0.0.0:")
        assert a.cluster_address == "tcp://127.0.0.1:" + status["bound"].rsplit(":", 1)[1]
        with whosthere.Node(name="w1", listen=LISTEN, peers=[a.cluster_address], **opts) as b:
            a.presence.track(owner.pid, "room", "alice", {"v": 1})
            converged([a, b], {"room": {"alice": [1]}})
            assert b.status()["cluster"]["peers"]["w0"]["address"] == a.cluster_address


def test_a_rogue_peer_sending_garbage_kills_nothing_and_loses_nothing(owner):
    """Malformed frames, bad replication messages and a peer speaking for another are
    dropped; the node keeps its presences and keeps replicating with its real peer."""
    import msgpack
    import zmq

    from whosthere.transport import codec
    from whosthere.transport import messages as m

    with cluster(2) as (a, b), b.presence.subscribe("room") as sub:
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        converged([a, b], {"room": {"alice": [1]}})
        assert list(next_diff(sub)["joins"]) == ["alice"]
        vsn_a = b.status()["peers"]["n0"]["vsn"]
        ctx = zmq.Context.instance()
        rogue = ctx.socket(zmq.DEALER)
        rogue.linger = 0
        rogue.connect(b.cluster_address)
        try:

            def cast(index: int, inner: tuple | bytes, sender: str = "rogue") -> bytes:
                payload = inner if isinstance(inner, bytes) else codec.encode(inner)
                return codec.encode(m.PeerCast(sender, index, payload))

            rogue.send(codec.encode(m.PeerHello("rogue", 1, "tcp://127.0.0.1:9", [])))
            wait_until(lambda: "rogue" in b.status()["cluster"]["peers"])
            frames = [
                b"\x00garbage",
                msgpack.packb([50, 123, "x", None, 5]),  # a hello of the wrong types
                msgpack.packb([54, "rogue", 0]),  # too few fields
                cast(0, m.GracefulPermdown(["n0", vsn_a]), sender="n0"),  # not its route
                cast(0, m.GracefulPermdown(["n0", vsn_a])),  # speaks for another replica
                cast(0, b"\xc1"),
                cast(7, m.Heartbeat(["rogue", 1], None, [], 1.0)),  # no such shard
                cast(0, m.Heartbeat(["rogue", 1], [["x"]], [["n0", "vsn", 1]], 1.0)),
                cast(0, m.Heartbeat(["rogue", 1], None, [["n1", -1, 2**63]], None)),
                cast(0, m.TransferAck(1, ["rogue", 1], None, [[], 5, "x", None])),
                cast(0, m.Fragment(1, 0, 10**12, b"x")),
                cast(0, m.Fragment(2, 0, 2, b"\xc1")),
                cast(0, m.Fragment(2, 1, 2, b"\xc1")),
                cast(0, m.Fragment(3, 5, 9, b"x")),
                cast(0, m.ListTopic("room")),  # not a replication message
            ]
            for frame in frames:
                rogue.send(frame)
            a.presence.track(owner.pid, "room", "bob", {"v": 2})
            converged([a, b], {"room": {"alice": [1], "bob": [2]}})
            seen = []
            while (msg := sub.get(timeout=0.5)) is not None:
                seen.append(msg.payload)
            assert [list(d["joins"]) for d in seen] == [["bob"]] and not seen[0]["leaves"]
            assert [x["restarts"] for x in b.status()["actors"]] == [0] * len(b.status()["actors"])
            assert b.status()["peers"]["n0"]["status"] == "up"
        finally:
            rogue.close()


def test_a_peer_not_up_yet_blocks_nothing_and_is_joined_when_it_comes(owner):
    import socket as _socket

    with _socket.socket() as probe:  # a free port, for a node that starts later
        probe.bind(("127.0.0.1", 0))
        later = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    with whosthere.Node(name="early", listen=LISTEN, peers=[later], **FAST) as a:
        a.presence.track(owner.pid, "room", "alice", {"v": 1})  # works alone meanwhile
        assert listed(a, "room") == {"alice": [1]}
        with whosthere.Node(name="late", listen=later, **FAST) as b:
            b.presence.track(owner.pid, "room", "bob", {"v": 2})
            converged([a, b], {"room": {"alice": [1], "bob": [2]}})


def test_a_node_restarted_on_another_address_is_reached_there(owner):
    """Peers drop the route to the old address (silent) for the one the node greets on."""
    with cluster(3, down_period=10.0, permdown_period=30.0) as nodes:
        old = nodes[0].cluster_address
        nodes[0].stop()
        nodes[0] = whosthere.Node(
            name="n0",
            listen=LISTEN,
            peers=[nodes[1].cluster_address],
            **{**FAST, "down_period": 10.0, "permdown_period": 30.0},
        ).start()
        assert nodes[0].cluster_address != old
        nodes[0].presence.track(owner.pid, "room", "moved", {"v": 1})
        nodes[2].presence.track(owner.pid, "room", "carol", {"v": 3})
        converged(nodes, {"room": {"carol": [3], "moved": [1]}}, timeout=15)
