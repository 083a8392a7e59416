"""Cluster faults on real network stacks: each node in its own Linux network namespace.

Where tests/test_cluster.py drops traffic through the cluster actor's test hook, here a
netsplit is a cable pulled (`ip link set down` at the hub's bridge, see tests/support/netns.py),
a healed split is the cable back, and a node's death is SIGKILL on its whole process tree.
The test process, in the host's namespace, reaches every node over its ipc:// address.

Periods are short: broadcast 0.1 s, down 1 s, permdown 6 s. Scenarios that leave the cluster
whole share one (starting its processes is most of a scenario's cost, each uses topics of its
own); the short split (with a longer down_period: the heal waits for tcp's retransmission
backoff, up to about the split's length again) and the node killed get clusters of their own.
The whole module is skipped where namespaces cannot be made (not root, no `ip`, no permission).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import whosthere
from tests.support.netns import NetnsNode, Network, running_nodes, unavailable
from tests.support.processes import python
from tests.support.waiting import wait_until

FAST = {
    "broadcast_period": 0.1,
    "max_silent_periods": 2,
    "down_period": 1.0,
    "permdown_period": 6.0,  # a heal must beat it, converging under a loaded CI machine
    "clock_sample_periods": 2,
    "fetchers": 1,
}
# a peer's last heartbeat may predate its death by up to max_silent_periods broadcasts
SLACK = FAST["broadcast_period"] * FAST["max_silent_periods"] + 0.05
Views = dict[str, dict[str, list[Any]]]  # {topic: {key: sorted meta values}}


@pytest.fixture(scope="module")
def namespaces_work() -> None:
    """Skip the module where network namespaces cannot be made (probed once, for real)."""
    reason = unavailable()
    if reason:
        pytest.skip(f"no network namespaces: {reason}")


@contextlib.contextmanager
def cluster(**options: Any) -> Iterator[tuple[Network, list[NetnsNode]]]:
    """Three namespaces, a node in each, every node up with the two others; the nodes
    stopped and the namespaces deleted afterwards, however the test ends."""
    network = Network(3)
    try:
        network.create()
        with running_nodes(network, {**FAST, **options}, uuid.uuid4().hex) as nodes:
            all_up(nodes, timeout=20)
            yield network, nodes
    finally:
        network.destroy()


@pytest.fixture(scope="module")
def shared(namespaces_work: None) -> Iterator[tuple[Network, list[NetnsNode]]]:
    """One cluster for the scenarios that leave it whole (each on topics of its own):
    starting three nodes is most of a scenario's cost."""
    with cluster(pool_size=2) as network_and_nodes:
        yield network_and_nodes


@pytest.fixture
def nodes(shared: tuple[Network, list[NetnsNode]]) -> Iterator[list[NetnsNode]]:
    """The shared cluster, whole: every cable in and every node up with the others."""
    network, nodes = shared
    all_up(nodes, timeout=10)
    try:
        yield nodes
    finally:
        network.mend_all()


def all_up(nodes: list[NetnsNode], timeout: float) -> None:
    for node in nodes:
        wait_until(
            lambda n=node: len(up_peers(n)) == len(nodes) - 1,
            timeout=timeout,
            what=f"{node} up with every other node",
        )


def up_peers(node: NetnsNode) -> list[str]:
    return sorted(p for p, r in node.status().get("peers", {}).items() if r["status"] == "up")


def listed(node: NetnsNode, topic: str) -> dict[str, list[Any]]:
    """{key: sorted meta values} as the node lists the topic."""
    return {
        key: sorted(m.get("v") for m in entry["metas"])
        for key, entry in node.presence.list(topic).items()
    }


def converged(nodes: list[NetnsNode], want: Views, timeout: float = 10) -> None:
    """Wait until every node lists exactly `want`."""

    def views() -> list[Views]:
        return [{topic: listed(node, topic) for topic in want} for node in nodes]

    wait_until(
        lambda: all(v == want for v in views()),
        timeout=timeout,
        interval=0.02,
        what=f"every node of {nodes} to list {want} (last: {views()})",
    )


def events(sub: whosthere.Subscription, into: list[tuple[str, str, Any]]) -> None:
    """Append (joins|leaves, key, v) of every diff already delivered to `sub`."""
    while (msg := sub.get(timeout=0.05)) is not None:
        for kind in ("joins", "leaves"):
            for key, entry in msg.payload[kind].items():
                into.extend((kind, key, meta.get("v")) for meta in entry["metas"])


def until_heard(
    sub: whosthere.Subscription, seen: list[tuple[str, str, Any]], event: tuple[str, str, Any]
) -> None:
    """Read `sub` into `seen` until `event` is among them."""

    def heard() -> bool:
        events(sub, seen)
        return event in seen

    wait_until(heard, timeout=5, what=f"{event} (heard: {seen})")


def silent_for(node: NetnsNode, peer: str) -> float:
    """Seconds since `node` last heard anything from `peer` (its cluster actor's view)."""
    return node.status()["cluster"]["peers"][peer]["last_heard_age"]


def test_joins_updates_and_leaves_converge_across_namespaces(nodes, owner):
    a, b, c = nodes
    seen: list[tuple[str, str, Any]] = []
    with c.presence.subscribe("room:0") as sub:
        for i, node in enumerate(nodes):
            node.presence.track_many(
                [(owner.pid, f"room:{t}", f"u{i}", {"v": i}) for t in range(4)]
            )
        converged(nodes, {f"room:{t}": {f"u{i}": [i] for i in range(3)} for t in range(4)})
        a.presence.update(owner.pid, "room:0", "u0", {"v": 10})
        b.presence.untrack(owner.pid, "room:1", "u1")
        c.presence.track(owner.pid, "room:1", "u1", {"v": 12})  # the same key, another node's
        want = {f"room:{t}": {f"u{i}": [i] for i in range(3)} for t in range(4)}
        want["room:0"]["u0"] = [10]
        want["room:1"]["u1"] = [12]
        converged(nodes, want)
        a.presence.untrack(owner.pid)  # every presence of the owner on a
        for t in range(4):
            del want[f"room:{t}"]["u0"]
        converged(nodes, want)
        until_heard(sub, seen, ("leaves", "u0", 10))
    # c heard a's join, its update as one diff (new meta in, old out), and its leave
    assert [e for e in seen if e[1] == "u0"] == [
        ("joins", "u0", 0),
        ("joins", "u0", 10),
        ("leaves", "u0", 0),
        ("leaves", "u0", 10),
    ]


@pytest.mark.usefixtures("namespaces_work")
def test_a_netsplit_shorter_than_down_period_removes_nothing(owner):
    """a's cable is out well under down_period: nobody's presences leave anywhere, and what
    a tracked meanwhile reaches the others once the cable is back."""
    periods = {"down_period": 3.0, "permdown_period": 6.0}  # room for tcp's retransmissions
    with cluster(**periods) as (network, nodes):
        netsplit_shorter_than_down_period(network, nodes, periods["down_period"], owner)


def netsplit_shorter_than_down_period(
    network: Network, nodes: list[NetnsNode], down_period: float, owner: Any
) -> None:
    a, b, c = nodes
    for i, node in enumerate(nodes):
        node.presence.track(owner.pid, "room", f"u{i}", {"v": i})
    before = {"room": {f"u{i}": [i] for i in range(3)}}
    converged(nodes, before)
    seen_a: list[tuple[str, str, Any]] = []
    seen_b: list[tuple[str, str, Any]] = []
    with a.presence.subscribe("room") as sub_a, b.presence.subscribe("room") as sub_b:
        network.cut(0)
        cut_at = time.monotonic()
        a.presence.track(owner.pid, "room", "during", {"v": 9})
        # the split is real: b and c hear nothing from a, and a nothing from them
        for node, peer in ((b, "n0"), (c, "n0"), (a, "n1"), (a, "n2")):
            wait_until(lambda n=node, p=peer: silent_for(n, p) > 0.5, timeout=2)
        for node in (b, c):
            assert listed(node, "room") == before["room"]  # a's change has not crossed
        network.mend(0)
        assert time.monotonic() - cut_at < down_period
        converged(nodes, {"room": {**before["room"], "during": [9]}})
        until_heard(sub_a, seen_a, ("joins", "during", 9))
        until_heard(sub_b, seen_b, ("joins", "during", 9))
        converged(nodes, {"room": {**before["room"], "during": [9]}})  # still, after the diffs
        events(sub_a, seen_a)
        events(sub_b, seen_b)
    assert seen_a == seen_b == [("joins", "during", 9)], (seen_a, seen_b)  # and no leave
    for node in nodes:
        assert len(up_peers(node)) == 2


def test_a_netsplit_past_down_period_hides_and_heals(shared, nodes, owner):
    """a's cable is out past down_period: a's presences leave b and c (and theirs leave a);
    the cable is back before permdown_period, and everything converges, a's changes during
    the split included."""
    network, _ = shared
    a, b, c = nodes
    a.presence.track(owner.pid, "split", "stays", {"v": 1})
    a.presence.track(owner.pid, "split", "goes", {"v": 1})
    c.presence.track(owner.pid, "split", "carol", {"v": 3})
    converged(nodes, {"split": {"carol": [3], "goes": [1], "stays": [1]}})
    seen: list[tuple[str, str, Any]] = []
    with b.presence.subscribe("split") as sub:
        network.cut(0)
        cut_at = time.monotonic()
        a.presence.untrack(owner.pid, "split", "goes")
        a.presence.track(owner.pid, "split", "new", {"v": 2})
        converged([b, c], {"split": {"carol": [3]}}, timeout=5)  # a is down on b and c
        converged([a], {"split": {"new": [2], "stays": [1]}}, timeout=5)  # and they on a
        assert all(n.status()["peers"]["n0"]["status"] == "down" for n in (b, c))
        network.mend(0)
        assert time.monotonic() - cut_at < FAST["permdown_period"], "healed too late"
        converged(nodes, {"split": {"carol": [3], "new": [2], "stays": [1]}})
        until_heard(sub, seen, ("joins", "new", 2))
    # b saw a's presences leave (a down: hidden), then a's come back as they are now: all
    # the leaves before any join (each group in one diff or several)
    leaves = [e for e in seen if e[0] == "leaves"]
    assert sorted(leaves) == [("leaves", "goes", 1), ("leaves", "stays", 1)], seen
    assert sorted(seen[len(leaves) :]) == [("joins", "new", 2), ("joins", "stays", 1)], seen
    for node in nodes:
        wait_until(lambda node=node: len(up_peers(node)) == 2, timeout=5)


@pytest.mark.usefixtures("namespaces_work")
def test_a_node_killed_leaves_after_down_period_and_is_forgotten(owner):
    """c's whole process tree gets SIGKILL: after down_period its presences leave a and b;
    after permdown_period they forget it."""
    with cluster() as (_, nodes):
        node_killed(nodes, owner)


def node_killed(nodes: list[NetnsNode], owner: Any) -> None:
    a, b, c = nodes
    for i, node in enumerate(nodes):
        node.presence.track(owner.pid, "room", f"u{i}", {"v": i})
    converged(nodes, {"room": {"u0": [0], "u1": [1], "u2": [2]}})
    seen: list[tuple[str, str, Any]] = []
    with b.presence.subscribe("room") as sub:
        c.kill()
        killed_at = time.monotonic()
        until_heard(sub, seen, ("leaves", "u2", 2))
    assert time.monotonic() - killed_at >= FAST["down_period"] - SLACK  # not before it
    assert seen == [("leaves", "u2", 2)]
    converged([a, b], {"room": {"u0": [0], "u1": [1]}})
    for node in (a, b):
        assert node.status()["peers"]["n2"]["status"] == "down"
    for node, other in ((a, "n1"), (b, "n0")):  # permdown: the replica is dropped
        wait_until(lambda n=node, o=other: list(n.status()["peers"]) == [o], timeout=10)
    assert time.monotonic() - killed_at >= FAST["permdown_period"] - SLACK
    converged([a, b], {"room": {"u0": [0], "u1": [1]}})


WORKER = """
import os, sys, time
import whosthere
presence = whosthere.Presence.connect()
presence.track(os.getpid(), "workers", "w", {"v": 1})
print("tracked", flush=True)
time.sleep(60)
"""


def test_a_worker_killed_on_one_node_leaves_on_another(nodes, owner):
    """A worker (in the host's namespace) tracks itself on a over ipc and gets SIGKILL: a's
    supervisor sees it exit, and the leave reaches a subscriber on c over the wire."""
    a, b, c = nodes
    b.presence.track(owner.pid, "workers", "stays", {"v": 2})
    worker = python(
        WORKER, stdout=subprocess.PIPE, env={**os.environ, "WHOSTHERE_ADDRESS": a.address}
    )
    try:
        seen: list[tuple[str, str, Any]] = []
        with c.presence.subscribe("workers") as sub:
            assert worker.stdout is not None and worker.stdout.readline() == b"tracked\n"
            converged(nodes, {"workers": {"stays": [2], "w": [1]}})
            until_heard(sub, seen, ("joins", "w", 1))
            os.kill(worker.pid, signal.SIGKILL)
            until_heard(sub, seen, ("leaves", "w", 1))
        assert [e for e in seen if e[0] == "leaves"] == [("leaves", "w", 1)], seen
        converged(nodes, {"workers": {"stays": [2]}})
    finally:
        worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


@pytest.mark.usefixtures("namespaces_work")
def test_a_node_killed_during_a_split_never_reappears_when_the_link_comes_back(owner):
    """c is cut off until a and b hold it down, then killed: its kernel may still hold
    heartbeats it sent during the split and deliver them once the cable is back. Those are
    stale, not a sign of life: c must never come back up, nor its presences join again."""
    with cluster() as (network, nodes):
        a, b, c = nodes
        for i, node in enumerate(nodes):
            node.presence.track(owner.pid, "room", f"u{i}", {"v": i})
        converged(nodes, {"room": {"u0": [0], "u1": [1], "u2": [2]}})
        seen: list[tuple[str, str, Any]] = []
        with a.presence.subscribe("room") as on_a, b.presence.subscribe("room") as on_b:
            network.cut(2)
            for node in (a, b):
                wait_until(
                    lambda n=node: n.status()["peers"]["n2"]["status"] == "down",
                    timeout=10,
                    what=f"{node} holds c down",
                )
            c.kill()
            network.mend(2)
            deadline = time.monotonic() + 3 * FAST["down_period"]
            while time.monotonic() < deadline:  # a few retransmissions' worth of time
                for sub in (on_a, on_b):
                    events(sub, seen)
                for node in (a, b):
                    assert node.status()["peers"].get("n2", {}).get("status") != "up"
        assert ("joins", "u2", 2) not in seen, seen
        converged([a, b], {"room": {"u0": [0], "u1": [1]}})


def test_broadcasts_held_through_a_cut_cable_are_lost_not_delivered_late(shared, nodes):
    """a broadcasts while its cable is out, past down_period: when the cable is back, the
    kernel delivers what it held, too late to be news. b and c never publish those; their
    subscribers hear of the loss (`MessagesLost`), then get what comes after."""
    network, _ = shared
    clients = [whosthere.PubSub.connect(node.address) for node in nodes]
    subs = [client.subscribe("news") for client in clients]

    def next_payload(sub: whosthere.Subscription) -> Any:
        msg = wait_until(lambda: sub.get(timeout=0.1), timeout=10, what="a broadcast")
        return msg.payload

    try:
        clients[0].broadcast("news", "msg", {"n": 0})
        assert [next_payload(sub) for sub in subs] == [{"n": 0}] * 3
        network.cut(0)
        for n in (1, 2, 3):
            clients[0].broadcast("news", "msg", {"n": n})
        for node in nodes[1:]:  # past down_period: a is down on b and c
            wait_until(
                lambda node=node: node.status()["peers"]["n0"]["status"] == "down",
                timeout=10,
                what=f"n0 down on {node}",
            )
        network.mend(0)
        for sub in subs[1:]:
            with pytest.raises(whosthere.MessagesLost):
                wait_until(lambda sub=sub: sub.get(timeout=0.1), timeout=20, what="the loss")
        clients[0].broadcast("news", "msg", {"n": 4})
        assert [next_payload(subs[1]), next_payload(subs[2])] == [{"n": 4}] * 2
        assert [next_payload(subs[0]) for _ in range(4)] == [{"n": n} for n in (1, 2, 3, 4)]
        for sub in subs:
            assert sub.get(timeout=0.3) is None
    finally:
        for sub in subs:
            sub.close()
        for client in clients:
            client.close()
