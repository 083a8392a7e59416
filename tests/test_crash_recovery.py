"""A crashed actor comes back and loses nothing (DESIGN section 4): here, the shards."""

from __future__ import annotations

import os
import signal
import time

import pytest

import whosthere
from tests.support.diffs import expect_diff, expect_quiet
from tests.support.nodes import actor_pid, alive
from tests.support.presences import (
    GatedFetchPresence,
    GatedPresence,
    HangOncePresence,
    MetasPresence,
)
from tests.support.processes import sleeper
from tests.support.waiting import wait_until
from whosthere.tracker.pool import shard_for

TOPICS = [f"room:{i}" for i in range(10)]


@pytest.fixture
def owners():
    procs = [sleeper() for _ in range(20)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def listed(node: whosthere.Node) -> dict[str, dict[str, list]]:
    return {t: node.presence.list(t) for t in TOPICS}


def restart(node: whosthere.Node, name: str) -> None:
    old = actor_pid(node, name)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: (p := actor_pid(node, name)) != old and alive({p}), what=f"{name} restarted")


def serving(node: whosthere.Node, topic: str) -> bool:
    try:
        node.presence.list(topic)
    except whosthere.NodeUnavailable:
        return False  # asked the old incarnation
    return True


def track_all(node: whosthere.Node, owners) -> None:
    entries = [
        (owners[i % len(owners)].pid, TOPICS[i % len(TOPICS)], f"user{i}", {"i": i})
        for i in range(100)
    ]
    node.presence.track_many(entries)


def test_a_killed_shard_comes_back_with_every_presence_as_the_same_replica(owners):
    with whosthere.Node(pool_size=2) as node, node.pubsub.subscribe(*TOPICS) as sub:
        track_all(node, owners)
        for _ in TOPICS:  # one diff per topic
            assert sub.get(timeout=5) is not None
        before = listed(node)
        on_0 = [t for t in TOPICS if shard_for(t, 2) == 0]
        assert on_0 and sum(len(before[t]) for t in on_0) > 0
        restart(node, "shard.0")
        wait_until(lambda: serving(node, on_0[0]), what="shard.0 serving")
        assert listed(node) == before  # every presence, with its phx_ref
        # diffs made just before a crash may not have gone out: subscribers of its
        # topics are told to resync, and nobody sees anything leave
        with pytest.raises(whosthere.MessagesLost):
            sub.get(timeout=5)
        expect_quiet(sub, timeout=0.5)
        # and it goes on: the owners are linked again, so an exit still makes a leave
        victim = owners[0]  # user0, user20... all on room:0
        victim.kill()
        victim.wait()
        expect_diff(sub, leaves={f"user{i}": 1 for i in range(0, 100, 20)})


def test_an_owner_that_died_while_its_shard_was_down_leaves_once_it_is_back(owners):
    with whosthere.Node(pool_size=1) as node, node.pubsub.subscribe(TOPICS[0]) as sub:
        track_all(node, owners)
        expect_diff(sub, joins={f"user{i}": 1 for i in range(0, 100, 10)})
        shard = actor_pid(node, "shard.0")
        os.kill(shard, signal.SIGKILL)
        victim = owners[0]  # owns user0, user20, user40... all on room:0
        victim.kill()
        victim.wait()
        with pytest.raises(whosthere.MessagesLost):  # the shard's restart
            sub.get(timeout=10)
        diff = expect_diff(sub, leaves={f"user{i}": 1 for i in range(0, 100, 20)}, timeout=10)
        assert not diff["joins"]
        assert actor_pid(node, "shard.0") != shard
        assert sorted(node.presence.list(TOPICS[0])) == sorted(
            f"user{i}" for i in range(10, 100, 20)
        )


def test_without_durability_a_killed_shard_comes_back_empty(owners):
    with whosthere.Node(pool_size=1, durable=False) as node:
        track_all(node, owners)
        restart(node, "shard.0")
        wait_until(lambda: serving(node, TOPICS[0]), what="shard.0 serving")
        assert all(not v for v in listed(node).values())


def test_a_restarted_shard_keeps_journaling_and_survives_a_second_crash(owners):
    with whosthere.Node(pool_size=1) as node:
        track_all(node, owners)
        restart(node, "shard.0")
        wait_until(lambda: serving(node, TOPICS[0]), what="shard.0 serving")
        ref = node.presence.update(owners[1].pid, TOPICS[1], "user1", {"i": "new"})
        node.presence.untrack(owners[2].pid, TOPICS[2], "user2")
        before = listed(node)
        restart(node, "shard.0")
        wait_until(lambda: serving(node, TOPICS[0]), what="shard.0 serving again")
        assert listed(node) == before
        meta = before[TOPICS[1]]["user1"]["metas"][0]
        assert meta["phx_ref"] == ref and meta["i"] == "new" and "phx_ref_prev" in meta
        assert "user2" not in before[TOPICS[2]]


def shard_stats(node: whosthere.Node) -> dict:
    return next(a["stats"] for a in node.status()["actors"] if a["name"] == "shard.0")


def test_peers_see_nothing_when_a_clustered_shard_restarts(owners, engine):
    from tests.test_cluster import cluster, converged

    # down_period: longer than a restart takes on a loaded machine (the default is 30 s)
    with cluster(3, down_period=5.0, permdown_period=20.0, engine=engine) as nodes:
        a, b, c = nodes
        a.presence.track_many([(p.pid, "room", f"a{i}", {"v": i}) for i, p in enumerate(owners)])
        b.presence.track(owners[0].pid, "room", "b0", {"v": 100})
        want = {"room": {**{f"a{i}": [i] for i in range(20)}, "b0": [100]}}
        converged(nodes, want)
        vsn = {n.name: n.status()["peers"][a.name]["vsn"] for n in (b, c)}
        transfers = {n.name: shard_stats(n)["transfers"] for n in (b, c)}
        with b.pubsub.subscribe("room") as on_b, c.pubsub.subscribe("room") as on_c:
            restart(a, "shard.0")
            wait_until(lambda: serving(a, "room"), what="a's shard serving")
            a.presence.track(owners[1].pid, "room", "later", {"v": 200})  # replicates on
            converged(nodes, {"room": {**want["room"], "later": [200]}})
            for n, sub in ((b, on_b), (c, on_c)):  # one join, and not a single leave
                msg = sub.get(timeout=5)
                assert msg is not None and list(msg.payload["joins"]) == ["later"], msg
                assert not msg.payload["leaves"]
                expect_quiet(sub, timeout=0.3)
                peer = n.status()["peers"][a.name]
                assert peer["vsn"] == vsn[n.name] and peer["status"] == "up"
                assert shard_stats(n)["transfers"] == transfers[n.name]  # no state asked


# -- fetchers, the presence client actor, the cluster actor ---------------------------------


def test_a_fetch_lost_with_its_fetcher_is_fetched_again_at_once(owner, tmp_path):
    topic = f"once:{tmp_path / 'hung'}"
    node = whosthere.Node(presence=HangOncePresence, fetchers=1, fetch_timeout=60)
    with node, node.pubsub.subscribe(topic) as sub:
        node.presence.track(owner.pid, topic, "u1", {})
        wait_until((tmp_path / "hung").exists, what="the fetch hangs")
        started = time.monotonic()
        restart(node, "fetcher.0")
        diff = expect_diff(sub, joins={"u1": 1}, timeout=20)
        assert diff["joins"]["u1"]["fetched"] is True  # fetched, not released unfetched
        assert time.monotonic() - started < 20  # not after fetch_timeout (60 s)


def test_a_diff_whose_fetch_kills_the_fetcher_twice_goes_out_unfetched(owner):
    node = whosthere.Node(presence=HangOncePresence, fetchers=1, fetch_timeout=60, max_restarts=5)
    with node, node.pubsub.subscribe("poison:1") as sub:
        node.presence.track(owner.pid, "poison:1", "u1", {})
        diff = expect_diff(sub, joins={"u1": 1}, timeout=20)
        assert "fetched" not in diff["joins"]["u1"]
        entry = next(a for a in node.status()["actors"] if a["name"] == "fetcher.0")
        assert entry["restarts"] == 2
        assert node.presence.list("other") == {}  # and the node serves on


def test_a_restarted_presence_client_actor_rebuilds_its_state_from_every_presence(owner):
    node = whosthere.Node(presence=MetasPresence, pool_size=2)
    with node, node.pubsub.subscribe("metas:room") as reports:
        for key in ("u1", "u2"):
            node.presence.track(owner.pid, "room", key, {"k": key})
        wait_until(lambda: (m := reports.get(timeout=5)) and len(m.payload["presences"]) == 2)
        restart(node, "client")
        msg = reports.get(timeout=10)  # init() again, then every presence as joins
        assert msg is not None and msg.payload["calls"] == 1, msg
        assert sorted(msg.payload["presences"]) == ["u1", "u2"]
        node.presence.track(owner.pid, "room", "u3", {"k": "u3"})
        msg = reports.get(timeout=5)
        assert msg is not None and msg.payload["calls"] == 2
        assert sorted(msg.payload["presences"]) == ["u1", "u2", "u3"]


def test_a_cluster_actor_listening_on_port_0_comes_back_on_the_same_port(owners):
    from tests.test_cluster import cluster, converged

    with cluster(2) as (a, b):
        bound = a.status()["cluster"]["bound"]
        restart(a, "cluster")
        wait_until(
            lambda: (a.status().get("cluster") or {}).get("bound") == bound,
            what="the cluster actor bound again",
        )
        a.presence.track(owners[0].pid, "room", "on_a", {"v": 1})
        b.presence.track(owners[1].pid, "room", "on_b", {"v": 2})
        converged([a, b], {"room": {"on_a": [1], "on_b": [2]}})


def test_a_presence_client_actor_that_fell_behind_gets_the_whole_state_again(
    owner, tmp_path, monkeypatch
):
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("GATE", str(gate))
    node = whosthere.Node(presence=GatedPresence)
    with node, node.pubsub.subscribe("probe:report") as reports:
        node.presence.track(owner.pid, "t0", "k", {})  # handle_metas now waits at the gate
        # one diff each: more than the shard queues for the actor (10,000), its mailbox
        # (1,000) and the kernel's socket buffers between them hold (15,000 was not always)
        total = 30_000
        for i in range(0, total, 1_000):
            node.presence.track_many(
                [(owner.pid, f"t{j}", "k", {}) for j in range(i + 1, i + 1_001)]
            )
        wait_until(lambda: shard_stats(node)["client_behind"], what="the actor fell behind")
        node.presence.untrack(owner.pid, "t5", "k")  # a leave it must hear of too
        gate.unlink()

        def reported() -> int:
            node.presence.update(owner.pid, "probe", "k", {"at": time.monotonic()})
            msg = reports.get(timeout=0.5)
            return msg is not None and msg.payload["total"]

        node.presence.track(owner.pid, "probe", "k", {})
        wait_until(
            lambda: reported() == total + 1,
            timeout=60,
            interval=0.2,
            what="the actor's state equals what the shard lists",
        )
        assert not shard_stats(node)["client_behind"]


def test_a_slow_fetch_bounds_the_shards_queue_and_later_diffs_go_out_unfetched(
    owner, tmp_path, monkeypatch
):
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("GATE", str(gate))
    node = whosthere.Node(presence=GatedFetchPresence, fetchers=1, fetch_timeout=120)
    with node, node.pubsub.subscribe("last") as sub:
        try:
            total = 15_000  # one fetch each: more than the shard queues for a fetcher
            for i in range(0, total, 1_000):
                node.presence.track_many(
                    [(owner.pid, f"t{j}", "k", {}) for j in range(i, i + 1_000)]
                )
            node.presence.track(owner.pid, "last", "k", {})
            diff = expect_diff(sub, joins={"k": 1}, timeout=10)  # not after fetch_timeout
            assert "fetched" not in diff["joins"]["k"]  # published as made: the queue was full
            assert shard_stats(node)["fetch_overflows"] > 0
        finally:
            gate.unlink()
