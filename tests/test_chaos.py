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
