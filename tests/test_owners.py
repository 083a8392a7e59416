"""Owners: many per OS process (DESIGN section 5).

Two browser tabs of one user in one web worker are two owners: the same key on one topic is
two metas; closing one tab's owner takes only its meta; the worker's death takes both. The
node links the OS process once, however many owners it holds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

import whosthere
from tests.support.diffs import next_diff
from tests.support.processes import python
from tests.support.waiting import wait_until
from tests.test_cluster import cluster, converged

WORKER = """
import sys, time
import whosthere
presence = whosthere.Presence.connect()
tabs = [presence.owner() for _ in range(2)]
for n, tab in enumerate(tabs):
    presence.track(tab, "room", "alice", {"tab": n})
print(" ".join(str(t.id) for t in tabs), flush=True)
time.sleep(60)
"""


@contextlib.contextmanager
def worker_with_two_tabs(node: whosthere.Node) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process of the node with two owners tracking "alice" on "room"."""
    worker = python(
        WORKER, stdout=subprocess.PIPE, env={**os.environ, "WHOSTHERE_ADDRESS": node.address}
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline()
        yield worker
    finally:
        worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


def tabs(presence: whosthere.Presence, topic: str = "room") -> list:
    entry = presence.get_by_key(topic, "alice")
    return sorted(m["tab"] for m in entry["metas"]) if entry else []


def links(node: whosthere.Node) -> int:
    return node.status()["links"]["processes"]


def test_two_owners_of_one_process_hold_one_key_as_two_metas():
    with whosthere.Node(pool_size=2) as node, node.presence.subscribe("room") as sub:
        presence = node.presence
        first, second = presence.owner(), presence.owner()
        assert first.pid == second.pid == os.getpid() and first.id != second.id
        presence.track(first, "room", "alice", {"tab": 0})
        presence.track(whosthere.Channel(second, "room"), "alice", {"tab": 1})
        with pytest.raises(whosthere.AlreadyTracked):  # identity is (owner, topic, key)
            presence.track(first, "room", "alice", {"tab": 9})
        assert tabs(presence) == [0, 1]
        presence.update(second, "room", "alice", lambda meta: {**meta, "typing": True})
        presence.track(second, "lobby", "alice", {"tab": 1})
        for _ in range(3):  # the two joins and the update (lobby is not read)
            next_diff(sub)
        second.close()  # both of its presences, in every shard
        diff = next_diff(sub)
        assert list(diff["leaves"]) == ["alice"] and diff["leaves"]["alice"]["metas"][0]["tab"] == 1
        assert tabs(presence) == [0] and presence.list("lobby") == {}
        second.close()  # idempotent
        with presence.owner() as third:
            presence.track(third, "room", "alice", {"tab": 2})
            assert tabs(presence) == [0, 2]
        assert tabs(presence) == [0]
        presence.untrack(first, "room", "alice")
        assert tabs(presence) == []
        wait_until(lambda: links(node) == 0, what="the process unlinked with its last owner")


def test_a_process_holds_one_link_and_its_death_takes_every_owner():
    with whosthere.Node() as node, worker_with_two_tabs(node) as worker:
        assert tabs(node.presence) == [0, 1]
        owners = [node.presence.owner() for _ in range(1_000)]
        node.presence.track_many([(o, "many", "k", {}) for o in owners])
        assert len(node.presence.list("many")["k"]["metas"]) == 1_000
        assert links(node) == 2  # the worker and this process: one link each
        os.kill(worker.pid, signal.SIGKILL)
        wait_until(lambda: tabs(node.presence) == [], what="both tabs gone with the worker")
        assert len(node.presence.list("many")["k"]["metas"]) == 1_000  # not ours


def test_a_peer_lists_two_owners_of_one_process_as_two_metas():
    with cluster(2) as (a, b):
        presence = a.presence
        first, second = presence.owner(), presence.owner()
        presence.track(first, "room", "alice", {"v": 1})
        presence.track(second, "room", "alice", {"v": 2})
        converged([a, b], {"room": {"alice": [1, 2]}})
        second.close()
        converged([a, b], {"room": {"alice": [1]}})
        first.close()
        converged([a, b], {"room": {}})


def test_owners_come_back_with_a_restarted_shard_and_still_leave_with_their_process():
    with whosthere.Node() as node, worker_with_two_tabs(node) as worker:
        shard = next(a for a in node.status()["actors"] if a["name"] == "shard.0")
        os.kill(shard["pid"], signal.SIGKILL)
        wait_until(
            lambda: _tabs_or_none(node.presence) == [0, 1],
            timeout=10,
            what="both tabs back with the shard",
        )
        os.kill(worker.pid, signal.SIGKILL)  # linked again by the restarted shard
        wait_until(lambda: tabs(node.presence) == [], what="both tabs gone")


def _tabs_or_none(presence: whosthere.Presence) -> list | None:
    try:
        return tabs(presence)
    except whosthere.NodeUnavailable:  # the shard is restarting
        return None


def test_anything_but_a_pid_or_an_owner_is_refused():
    with whosthere.Node() as node:
        for bad in (0, -1, True, "1", 1.0, 1 << 62, None):
            with pytest.raises(TypeError):
                node.presence.track(bad, "t", "k", {})
