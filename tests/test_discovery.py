"""Peers found by DNS, for real: nodes in network namespaces resolve through a dnsmasq.

Each node runs in its own namespace (tests/support/netns.py) with `/etc/resolv.conf` pointing
at a dnsmasq in the hub namespace (tests/support/dnsmasq.py), and is given only a DNS name:
`dns:peers.wt.test:7100` (A records, as a Kubernetes headless service) or
`srv:_whosthere._tcp.wt.test` (SRV records). The cluster forms, a node added to DNS joins,
a node removed from DNS and killed goes down, permdown, and its address is no longer dialled
(the cluster actor's stats say what it dials and what DNS said); back in DNS it returns. A name
that does not resolve is retried and never stops a node; gossip still adds an address DNS
does not name. Periods are short (broadcast 0.05 s, down 0.5 s, permdown 3 s, discovery
0.3 s); an address leaves after `forget_after`, the permdown period but at least 10 s.

The namespace tests skip where namespaces cannot be made or dnsmasq is missing; the last test
runs `whosthere serve` with `--peer dns:...` and `$WHOSTHERE_PEERS` on loopback, anywhere.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import dnsmasq
from tests.support.dnsmasq import Dnsmasq
from tests.support.netns import PORT, START_TIMEOUT, NetnsNode, Network, stop_nodes, unavailable
from tests.support.waiting import wait_until
from whosthere.admin import node_status
from whosthere.config import PEERS_ENV

FAST = {
    "broadcast_period": 0.05,
    "max_silent_periods": 2,
    "down_period": 0.5,
    "permdown_period": 3.0,
    "clock_sample_periods": 2,
    "fetchers": 1,
    "discovery_period": 0.3,
}
FORGET_AFTER = 10.0  # the cluster actor's: max(permdown_period, 10 hellos)
NAME = f"peers.{dnsmasq.DOMAIN}"
BY_A = f"dns:{NAME}:{PORT}"
SERVICE = f"_whosthere._tcp.{dnsmasq.DOMAIN}"
BY_SRV = f"srv:{SERVICE}"
LATE = f"late.{dnsmasq.DOMAIN}"  # a name DNS does not know at first
BY_LATE = f"dns:{LATE}:{PORT}"


@pytest.fixture(scope="module")
def namespaces_and_dnsmasq() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(f"no network namespaces: {reason}")
    reason = dnsmasq.missing()
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def network_with_dns(
    size: int, tmp_path: Path, hosts: dict[str, list[str]], srv: list[tuple[str, str, int]]
) -> Iterator[tuple[Network, Dnsmasq, dict[int, NetnsNode]]]:
    """`size` namespaces resolving through a dnsmasq with these records; the nodes started
    into the yielded dict are stopped, and everything taken down, however the test ends."""
    network = Network(size)
    server = Dnsmasq(network, tmp_path)
    nodes: dict[int, NetnsNode] = {}
    try:
        network.create()
        server.start(hosts, srv)
        yield network, server, nodes
    finally:
        stop_nodes(list(nodes.values()))
        server.stop()
        network.destroy()


def start(
    network: Network,
    nodes: dict[int, NetnsNode],
    which: list[int],
    peers: list[str],
    logs: Path | None = None,
) -> None:
    """Nodes `which` started side by side, each given only `peers` (their logs in
    `logs`/n<i>.log, if given)."""
    cookie = "discovery-" + network.hub  # the same for every node of the network
    started = []
    for i in which:
        options = {**FAST, "listen": network.endpoint(i), "peers": peers}
        log = None if logs is None else logs / f"n{i}.log"
        nodes[i] = NetnsNode(f"n{i}", network.namespaces[i], options, cookie, log)
        started.append(nodes[i])
    deadline = time.monotonic() + START_TIMEOUT
    for node in started:
        node.wait_ready(deadline)


def kill(node: NetnsNode) -> None:
    """SIGKILL on the node's whole tree (no goodbye), then its runner's pipes closed."""
    node.kill()
    for pipe in (node.proc.stdin, node.proc.stdout):
        if pipe is not None:
            with contextlib.suppress(BrokenPipeError):
                pipe.close()


def up_peers(node: NetnsNode) -> list[str]:
    return sorted(p for p, r in node.status().get("peers", {}).items() if r["status"] == "up")


def all_up(nodes: list[NetnsNode], timeout: float = 20) -> None:
    for node in nodes:
        want = sorted(n.name for n in nodes if n is not node)
        wait_until(
            lambda n=node, w=want: up_peers(n) == w,
            timeout=timeout,
            interval=0.05,
            what=f"{node} up with exactly {want}",
        )


def cluster_stats(node: NetnsNode) -> dict[str, Any]:
    stats: dict[str, Any] = node.status()["cluster"]
    return stats


def named(node: NetnsNode, spelling: str) -> dict[str, Any]:
    """What DNS said of `spelling`, as the node's cluster actor shows it."""
    found: dict[str, Any] = cluster_stats(node)["discovery"][spelling]
    return found


def ips(network: Network, which: list[int]) -> list[str]:
    return [network.ip(i) for i in which]


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces_and_dnsmasq")
def test_a_records_form_the_cluster_and_follow_dns(tmp_path):
    with network_with_dns(4, tmp_path, {NAME: ["10.213.0.1", "10.213.0.2", "10.213.0.3"]}, []) as (
        network,
        server,
        nodes,
    ):
        start(network, nodes, [0, 1, 2], [BY_A])
        all_up([nodes[0], nodes[1], nodes[2]])
        said = named(nodes[0], BY_A)
        assert said["addresses"] == [network.endpoint(i) for i in (0, 1, 2)]
        assert said["error"] is None and said["resolved_age"] < 5
        assert cluster_stats(nodes[0])["dialling"] == [network.endpoint(1), network.endpoint(2)]

        # a node added to DNS joins
        server.set_hosts({NAME: ips(network, [0, 1, 2, 3])})
        start(network, nodes, [3], [BY_A])
        all_up(list(nodes.values()))

        # out of DNS, nothing is dropped while the node answers
        server.set_hosts({NAME: ips(network, [0, 1, 3])})
        gone = network.endpoint(2)
        for i in (0, 1, 3):
            wait_until(
                lambda i=i: gone not in named(nodes[i], BY_A)["addresses"],
                timeout=10,
                what=f"n{i} to see n2 out of DNS",
            )
        all_up(list(nodes.values()), timeout=2)
        assert all(gone in cluster_stats(nodes[i])["dialling"] for i in (0, 1, 3))

        # killed: down, then permdown, then its address is no longer dialled
        kill(nodes.pop(2))
        killed_at = time.monotonic()
        others = [nodes[i] for i in (0, 1, 3)]
        for node in others:
            wait_until(
                lambda n=node: n.status()["peers"].get("n2", {}).get("status") != "up",
                timeout=10,
                what=f"{node} to see n2 down",
            )
        for node in others:
            wait_until(
                lambda n=node: "n2" not in n.status()["peers"],
                timeout=15,
                what=f"{node} to see n2 permdown",
            )
        for node in others:
            wait_until(
                lambda n=node: gone not in cluster_stats(n)["dialling"],
                timeout=FORGET_AFTER + 10,
                interval=0.1,
                what=f"{node} to stop dialling {gone}",
            )
        assert time.monotonic() - killed_at >= FORGET_AFTER - 1  # not dropped at once
        all_up(others, timeout=2)

        # its record back and the node started again: it is back
        server.set_hosts({NAME: ips(network, [0, 1, 2, 3])})
        start(network, nodes, [2], [BY_A])
        all_up(list(nodes.values()))
        assert all(gone in cluster_stats(nodes[i])["dialling"] for i in (0, 1, 3))


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces_and_dnsmasq")
def test_srv_records_an_unresolvable_name_and_gossip(tmp_path):
    hosts = {f"n{i}.{dnsmasq.DOMAIN}": [f"10.213.0.{i + 1}"] for i in range(3)}
    srv = [(SERVICE, f"n{i}.{dnsmasq.DOMAIN}", PORT) for i in (0, 1)]
    with network_with_dns(3, tmp_path, hosts, srv) as (network, server, nodes):
        start(network, nodes, [0, 1], [BY_SRV, BY_LATE], logs=tmp_path)
        all_up([nodes[0], nodes[1]])
        for i in (0, 1):
            assert named(nodes[i], BY_SRV)["addresses"] == [
                network.endpoint(0),
                network.endpoint(1),
            ]

        # a name that does not resolve is tried again and again; the node goes on
        late = named(nodes[0], BY_LATE)
        assert late["addresses"] == [] and LATE in late["error"]
        wait_until(
            lambda: named(nodes[0], BY_LATE)["failures"] >= late["failures"] + 3,
            timeout=10,
            what="the unresolvable name tried again",
        )

        # gossip: n2 is given n0's address alone, DNS names it nowhere, n1 dials it anyway
        start(network, nodes, [2], [network.endpoint(0)])
        all_up(list(nodes.values()))
        assert network.endpoint(2) in cluster_stats(nodes[1])["dialling"]
        assert network.endpoint(2) not in named(nodes[1], BY_SRV)["addresses"]

        # the name appears: it resolves, its failure is over
        server.set_hosts({**hosts, LATE: [network.ip(2)]})
        for i in (0, 1):
            wait_until(
                lambda i=i: named(nodes[i], BY_LATE)["addresses"] == [network.endpoint(2)],
                timeout=10,
                what=f"n{i} to resolve {LATE}",
            )
            assert named(nodes[i], BY_LATE)["error"] is None
        # logged once when it failed and once when it came back, not every period
        log = (tmp_path / "n0.log").read_text()
        assert log.count(f"{BY_LATE} does not resolve") == 1, log
        assert log.count(f"{BY_LATE} resolves again") == 1, log

        # SRV records change: n2 named too
        server.set_srv([*srv, (SERVICE, f"n2.{dnsmasq.DOMAIN}", PORT)])
        for i in (0, 1):
            wait_until(
                lambda i=i: network.endpoint(2) in named(nodes[i], BY_SRV)["addresses"],
                timeout=10,
                what=f"n{i} to see n2 in the SRV records",
            )
        all_up(list(nodes.values()), timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_serve_finds_its_peer_by_dns_from_the_flag_and_the_environment():
    """Two `whosthere serve` on loopback: one given `--peer dns:localhost:PORT`, the other
    `$WHOSTHERE_PEERS`; `localhost` resolves through /etc/hosts, and they meet."""
    ports = [free_port(), free_port()]
    common = ["--discovery-period", "0.2", "--broadcast-period", "0.05", "--fetchers", "1"]

    def serve(i: int, extra: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "whosthere", "serve", "--name", f"d{i}"]
        cmd += ["--listen", f"tcp://127.0.0.1:{ports[i]}", *common, *extra]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})

    procs = [
        serve(0, ["--peer", f"dns:localhost:{ports[1]}"], {}),
        serve(1, [], {PEERS_ENV: f"tcp://127.0.0.1:{ports[0]},dns:localhost"}),
    ]
    try:
        assert procs[1].stdout is not None
        first = procs[1].stdout.readline()
        assert first == "", "a malformed $WHOSTHERE_PEERS entry is refused at once"
        assert procs[1].wait(10) == 2
        procs[1].stdout.close()
        procs[1] = serve(1, [], {PEERS_ENV: f"dns:localhost:{ports[0]}"})
        addresses = []
        for proc in procs:
            assert proc.stdout is not None
            addresses.append(proc.stdout.readline().rsplit(" ", 1)[1].strip())
        for i, address in enumerate(addresses):
            wait_until(
                lambda a=address, i=i: (
                    {p: r["status"] for p, r in node_status(a, 5.0).get("peers", {}).items()}
                    == {f"d{1 - i}": "up"}
                ),
                timeout=20,
                interval=0.05,
                what=f"d{i} up with d{1 - i}",
            )
        status = node_status(addresses[1], 5.0)
        said = status["cluster"]["discovery"][f"dns:localhost:{ports[0]}"]
        assert f"tcp://127.0.0.1:{ports[0]}" in said["addresses"]
        assert status["config"]["cluster"]["discovery_period"] == 0.2
        shown = subprocess.run(
            [sys.executable, "-m", "whosthere", "status", addresses[1]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        line = f"  dns:localhost:{ports[0]}: "  # what DNS said, in `whosthere status`
        assert any(
            text.startswith(line) and f"tcp://127.0.0.1:{ports[0]}" in text and "resolved" in text
            for text in shown.splitlines()
        ), shown
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
