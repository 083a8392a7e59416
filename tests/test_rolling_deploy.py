"""Rolling deploys leave no zombies (DESIGN section 9; issue 23, item 3).

Three nodes run by `whosthere serve`, each with owners (processes tracking through its
fixed client address); each node in turn is replaced by a new one under a new name, its
`--peer` the survivors' addresses (a `dns:` name would stand for them on Kubernetes), the
old one stopped first: SIGTERM (a graceful stop: the goodbye) or SIGKILL (nothing said).
Its owners' clients track them again on the new node by themselves, as web workers on the
host do. Half the replacements listen on the old node's port (a VM restarted under another
name), half on a new one (a new pod). Subscribers on every node record every diff.
Periods as tests/test_cluster.py's: broadcast 50 ms, down 0.5 s, permdown 2 s.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.served import (
    DOWN_PERIOD,
    PERMDOWN_PERIOD,
    Recorder,
    Served,
    cleanup,
    listed_refs,
)
from tests.support.served import owners as start_owners
from tests.support.waiting import wait_until
from whosthere.node import node_status

TOPIC = "room"
SLOTS = 3
OWNERS_PER_SLOT = 2
NEW_PORT = "tcp://127.0.0.1:0"


def keys_of(slot: int) -> list[str]:
    return [f"s{slot}o{j}" for j in range(OWNERS_PER_SLOT)]


def up_peers(served: Served) -> list[str]:
    peers = node_status(served.address).get("peers", {})
    return sorted(name for name, p in peers.items() if p["status"] == "up")


def down_events(served: Served) -> int:
    """How many times the node saw a peer replica go down (silent for down_period)."""
    actors = node_status(served.address)["actors"]
    return sum(a["stats"]["replication_events"]["down"] for a in actors if a["name"] == "shard.0")


def views(nodes: list[Served]) -> list[dict[str, list[str]]]:
    return [listed_refs(n.address, TOPIC) for n in nodes]


def converged(nodes: list[Served], what: str, timeout: float = 15.0) -> dict[str, list[str]]:
    """Wait until every node lists every owner's key once, the same refs everywhere."""
    every_key = {k for slot in range(SLOTS) for k in keys_of(slot)}

    def same() -> dict[str, list[str]] | None:
        seen = views(nodes)
        first = seen[0]
        ok = set(first) == every_key and all(len(r) == 1 for r in first.values())
        return first if ok and all(v == first for v in seen) else None

    return wait_until(same, timeout=timeout, interval=0.02, what=what)


def holds_for(seconds: float, check: object) -> None:
    """`check()` (which asserts) keeps holding, polled for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()  # type: ignore[operator]
        time.sleep(0.05)


def once_each(recorder: Recorder) -> None:
    """No phx_ref joins twice or leaves twice on this node."""
    for side in ("joins", "leaves"):
        twice = [r for r, n in Counter(recorder.refs(side)).items() if n > 1]
        assert twice == [], f"{recorder.name}: {side} twice: {twice}"


@pytest.mark.parametrize("stop", ["sigterm", "sigkill", "surge"])
def test_a_rolling_deploy_leaves_no_zombies(stop: str, tmp_path: Path) -> None:
    """SIGTERM: the old node's presences leave every survivor before its `serve` exits, by
    its goodbye (no survivor sees it down), once each. SIGKILL: they leave after
    down_period, once each. Either way the re-tracked presences join once each, nothing
    else changes, and after permdown_period and more no node lists anything of a stopped
    node. Surge (Kubernetes' default order): the new node joins first, beside the old one,
    which is then stopped with SIGTERM; its owners die with it and new ones track on the
    new node (web clients reconnecting): the same, on the new node too."""
    servers: list[Served] = []
    owners: list[subprocess.Popen[str]] = []
    recorders: list[Recorder] = []
    with cleanup(servers, owners):
        addresses = [f"ipc://{tmp_path}/slot{i}.sock" for i in range(SLOTS)]
        nodes = [Served.start("n0", addresses[0], NEW_PORT, [])]
        servers += nodes
        with ThreadPoolExecutor() as pool:  # the others together, the first their seed
            seed = [nodes[0].cluster]
            starting = [
                pool.submit(Served.start, f"n{i}", addresses[i], NEW_PORT, seed)
                for i in range(1, SLOTS)
            ]
            for future in starting:
                nodes.append(future.result())
                servers.append(nodes[-1])
        all_up(nodes)
        owners += start_owners([(addresses[i], k) for i in range(SLOTS) for k in keys_of(i)], TOPIC)
        current = converged(nodes, "every owner listed everywhere")
        recorders += [Recorder(n, TOPIC) for n in nodes]
        gone_refs: set[str] = set()
        try:
            for i in range(SLOTS):
                old_refs = {current[k][0] for k in keys_of(i)}
                if stop == "surge":
                    current = surge(servers, nodes, recorders, owners, i, current, tmp_path)
                else:
                    current = replace(servers, nodes, recorders, i, stop, current)
                gone_refs |= old_refs
            all_up(nodes)

            def nothing_of_the_stopped() -> None:
                for node in nodes:
                    assert not gone_refs & _all_refs(node), node.name
                    assert listed_refs(node.address, TOPIC) == current, node.name
                for rec in recorders:
                    once_each(rec)

            holds_for(PERMDOWN_PERIOD + DOWN_PERIOD + 0.5, nothing_of_the_stopped)
            names = sorted(n.name for n in nodes)
            for node in nodes:  # the old replicas are forgotten, not kept down
                peers = sorted(node_status(node.address).get("peers", {}))
                assert peers == [n for n in names if n != node.name], node.name
        finally:
            for rec in recorders:
                rec.close()
    # a deploy is routine: nothing alarming logged (a node replaced on its address under a
    # new name once logged a conflict of names)
    for srv in servers:
        alarms = [line for line in srv.lines if " WARNING " in line or " ERROR " in line]
        assert alarms == [], f"{srv.name}: {alarms}"


def all_up(nodes: list[Served]) -> None:
    for node in nodes:
        wait_until(lambda node=node: len(up_peers(node)) == SLOTS - 1, timeout=15)


def replace(
    servers: list[Served],
    nodes: list[Served],
    recorders: list[Recorder],
    i: int,
    stop: str,
    current: dict[str, list[str]],
) -> dict[str, list[str]]:
    """Stop node i (`stop`: "sigterm" or "sigkill"), start its replacement under a new name
    (the survivors its seeds), wait until its owners are tracked again; check what every
    survivor saw meanwhile. Returns what every node lists then."""
    survivors = [r for k, r in enumerate(recorders) if k != i]
    settle(recorders)
    marks = [len(r.diffs) for r in survivors]
    old_refs = {current[k][0] for k in keys_of(i)}
    downs = {k: down_events(n) for k, n in enumerate(nodes) if k != i}
    recorders[i].close()
    killed_at = time.monotonic()
    if stop == "sigterm":
        took = nodes[i].terminate()
        assert took < 5, f"serve took {took:.1f} s to stop"
        for k, node in enumerate(nodes):  # gone already, said goodbye to
            if k != i:
                assert not old_refs & _all_refs(node), node.name
    else:
        nodes[i].kill()
    listen = nodes[i].cluster if i % 2 == 0 else NEW_PORT
    seeds = [n.cluster for k, n in enumerate(nodes) if k != i]  # or a dns: name
    nodes[i] = Served.start(f"n{i}-new", nodes[i].address, listen, seeds)
    servers.append(nodes[i])
    recorders[i] = Recorder(nodes[i], TOPIC)
    current = converged(nodes, f"slot {i}'s owners tracked again")
    new_refs = {current[k][0] for k in keys_of(i)}
    assert not new_refs & old_refs
    # the goodbye: no survivor saw the old node down; the kill: each did, once
    seen = {k: down_events(nodes[k]) - before for k, before in downs.items()}
    assert seen == dict.fromkeys(downs, 0 if stop == "sigterm" else 1)
    if stop == "sigkill":
        assert time.monotonic() - killed_at > DOWN_PERIOD * 0.8
    saw_once(survivors, marks, old_refs, new_refs)  # the diffs of the round
    return current


def surge(
    servers: list[Served],
    nodes: list[Served],
    recorders: list[Recorder],
    owners: list[subprocess.Popen[str]],
    i: int,
    current: dict[str, list[str]],
    tmp_path: Path,
) -> dict[str, list[str]]:
    """Start node i's replacement beside it (every node its seeds, as DNS would list
    them), then SIGTERM node i and kill its owners; new owners track on the replacement.
    Checks what the survivors and the replacement saw. Returns what every node lists."""
    survivors = [r for k, r in enumerate(recorders) if k != i]
    old_refs = {current[k][0] for k in keys_of(i)}
    new = Served.start(
        f"n{i}-new", f"ipc://{tmp_path}/slot{i}-new.sock", NEW_PORT, [n.cluster for n in nodes]
    )
    servers.append(new)
    newcomer = Recorder(new, TOPIC)
    everyone = [*nodes, new]
    for node in everyone:
        wait_until(lambda node=node: len(up_peers(node)) == SLOTS, timeout=15)
    assert converged(everyone, f"n{i}-new holds every presence") == current
    watchers = [*survivors, newcomer]
    settle(watchers)
    marks = [len(r.diffs) for r in watchers]
    downs = {n.name: down_events(n) for k, n in enumerate(everyone) if k != i}
    recorders[i].close()
    nodes[i].terminate()
    for node in everyone[:i] + everyone[i + 1 :]:  # gone already, said goodbye to
        assert not old_refs & _all_refs(node), node.name
    mine = [o for o in owners if o.args[-1] in keys_of(i)]  # its pod's workers die with it
    for proc in mine:
        proc.kill()
    nodes[i], recorders[i] = new, newcomer
    owners += start_owners([(new.address, key) for key in keys_of(i)], TOPIC)
    current = converged(nodes, f"slot {i}'s keys tracked on n{i}-new")
    new_refs = {current[k][0] for k in keys_of(i)}
    assert {n.name: down_events(n) for n in nodes} == downs  # nobody saw a node down
    saw_once(watchers, marks, old_refs, new_refs)
    return current


def settle(recorders: list[Recorder]) -> None:
    """Until the diffs of what every node lists have reached every recorder."""
    wait_until(lambda: all(r.quiet(0.3) for r in recorders), timeout=10, what="diffs settled")


def saw_once(
    recorders: list[Recorder], marks: list[int], old_refs: set[str], new_refs: set[str]
) -> None:
    """Since its mark, each recorder saw every old ref leave once, every new one join once,
    and nothing else."""
    for rec, mark in zip(recorders, marks, strict=True):
        try:
            wait_until(
                lambda rec=rec, mark=mark: _changed(rec, mark) == (old_refs, new_refs),
                timeout=5,
                what=f"{rec.name}: old refs {old_refs} leave, new ones {new_refs} join",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; saw {_changed(rec, mark)}") from None
        left, joined = _counts(rec, mark)
        assert (left, joined) == (Counter(old_refs), Counter(new_refs)), (rec.name, rec.diffs)


def _all_refs(node: Served) -> set[str]:
    return {ref for refs in listed_refs(node.address, TOPIC).values() for ref in refs}


def _counts(rec: Recorder, mark: int) -> tuple[Counter[str], Counter[str]]:
    since = rec.diffs[mark:]
    left: Counter[str] = Counter()
    joined: Counter[str] = Counter()
    for diff in since:
        for side, counter in (("leaves", left), ("joins", joined)):
            for entry in diff[side].values():
                counter.update(m["phx_ref"] for m in entry["metas"])
    return left, joined


def _changed(rec: Recorder, mark: int) -> tuple[set[str], set[str]]:
    left, joined = _counts(rec, mark)
    return set(left), set(joined)
