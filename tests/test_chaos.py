"""Every actor kind SIGKILLed in turn under a live workload: nothing lost, nothing phantom,
and a subscriber's view (diffs, plus a resync after MessagesLost) equals `list`."""

from __future__ import annotations

import time

import pytest

import whosthere
from tests.support.chaos import Chaos, ChaosPresence

KINDS = ["shard.0", "shard.1", "pubsub", "fetcher.0", "fetcher.1", "client"]


@pytest.mark.timeout(300)
def test_killing_each_actor_under_load_loses_nothing():
    node = whosthere.Node(presence=ChaosPresence, pool_size=2, max_restarts=100, max_seconds=1)
    with node, Chaos(node, owners=6, seed=11) as chaos:
        chaos.check(time.monotonic())  # the workload runs and the checker agrees with it
        for i, name in enumerate(KINDS):
            time.sleep(0.3)  # load between kills
            if i % 2:
                chaos.kill_owner()
            started = time.monotonic()
            chaos.kill_actor(name)
            chaos.check(started)
        report = chaos.report
    assert report.failures == []
    assert (report.lost, report.phantom, report.view_wrong) == (0, 0, 0)
    assert report.survived == len(KINDS) and len(report.converge_s) == len(KINDS) + 1


@pytest.mark.timeout(300)
def test_killing_each_actor_of_a_clustered_node_loses_nothing_anywhere():
    from tests.test_cluster import FAST, LISTEN

    opts = {**FAST, "down_period": 5.0, "permdown_period": 20.0}  # longer than a restart
    common = {"presence": ChaosPresence, "pool_size": 2, "max_restarts": 100, "max_seconds": 1}
    nodes: list[whosthere.Node] = []
    try:
        a = whosthere.Node(name="a", listen=LISTEN, **common, **opts).start()
        nodes.append(a)
        for name in ("b", "c"):
            nodes.append(
                whosthere.Node(
                    name=name, listen=LISTEN, peers=[a.cluster_address], **common, **opts
                ).start()
            )
        with Chaos(a, owners=4, seed=5, others=tuple(nodes[1:])) as chaos:
            chaos.check(time.monotonic(), timeout=30)
            for name in [*KINDS, "cluster"]:
                time.sleep(0.3)
                started = time.monotonic()
                chaos.kill_actor(name)
                chaos.check(started, timeout=30)
            report = chaos.report
        for other in nodes[1:]:  # no replica of a went down: its presences never left there
            peer = other.status()["peers"]["a"]
            assert peer["status"] == "up"
    finally:
        for node in nodes:
            node.stop()
    assert report.failures == []
    assert (report.lost, report.phantom, report.view_wrong) == (0, 0, 0)
