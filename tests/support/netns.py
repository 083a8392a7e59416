"""Nodes on real network stacks: one Linux network namespace per node, all cabled to a
bridge in a hub namespace.

```
  hub namespace: br0 ── v0 ═══ eth0  node namespace n0   10.213.0.1/24
                     ├─ v1 ═══ eth0  node namespace n1   10.213.0.2/24
                     └─ v2 ═══ eth0  node namespace n2   10.213.0.3/24      (═══ a veth pair)
```
Pulling node i's cable is `ip link set v<i> down` at the hub: it hears nobody and nobody hears
it, both ways, on the real tcp stack (retransmissions and all). Every name carries a run id,
so runs side by side never meet, and nothing is created in the host's own namespace.

Each node runs `tests/support/netns_node.py` under `ip netns exec`. Its client address is
an ipc:// path on the shared filesystem, which every namespace can reach: the tests, in the
host's namespace, track, list and subscribe through it as on any node.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

import whosthere
from whosthere.admin import node_status
from whosthere.transport.cookie import COOKIE_ENV

SUBNET = "10.213.0"
PORT = 7100  # the same in every namespace: each has its own ports
START_TIMEOUT = 30.0  # seconds for a node to report ready, on a slow, busy machine


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can), found by making one: a
    namespace with lo up, a bridge and a veth pair, entered with `ip netns exec`."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` binary (iproute2)"
    probe = f"wtprobe-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
        _ip("-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0")
        _ip("netns", "exec", probe, "ip", "link", "set", "lo", "up")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces are limited here: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class Network:
    """A hub namespace with a bridge, and `size` node namespaces, each on its own cable."""

    def __init__(self, size: int) -> None:
        run = uuid.uuid4().hex[:8]
        self.hub = f"wt-{run}-hub"
        self.namespaces = [f"wt-{run}-n{i}" for i in range(size)]
        self.made: list[str] = []  # namespaces to delete, even if creating the rest fails

    def create(self) -> Network:
        for ns in (self.hub, *self.namespaces):
            _ip("netns", "add", ns)
            self.made.append(ns)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.namespaces):
            _ip(
                "-n",
                self.hub,
                "link",
                "add",
                f"v{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def ip(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def endpoint(self, i: int) -> str:
        return f"tcp://{self.ip(i)}:{PORT}"

    def hub_address(self, ip: str) -> None:
        """Give the hub's bridge an address on the nodes' subnet (for a server run there)."""
        _ip("-n", self.hub, "addr", "add", f"{ip}/24", "dev", "br0")

    def cut(self, i: int) -> None:
        """A netsplit: node i's cable is pulled (its port on the hub set down)."""
        _ip("-n", self.hub, "link", "set", f"v{i}", "down")

    def mend(self, i: int) -> None:
        """The netsplit heals: node i's cable is back."""
        _ip("-n", self.hub, "link", "set", f"v{i}", "up")

    def mend_all(self) -> None:
        for i in range(len(self.namespaces)):
            self.mend(i)

    def destroy(self) -> None:
        """Kill whatever still runs in the namespaces (only ours), then delete them; deleting
        a namespace deletes its links too."""
        for ns in reversed(self.made):
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", ns, check=False)
        self.made.clear()


class NetnsNode:
    """A node running in its own namespace; the test reaches it over ipc."""

    def __init__(
        self,
        name: str,
        namespace: str,
        options: dict[str, Any],
        cookie: str,
        log: Path | None = None,
    ) -> None:
        """`log`: a file for the node's log (its processes' stderr); default: the test's."""
        self.name = name
        self.namespace = namespace
        runner = [
            sys.executable,
            "-m",
            "tests.support.netns_node",
            json.dumps({"name": name, **options}),
        ]
        stderr = log.open("ab") if log is not None else None  # the child keeps its copy
        try:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *runner],  # it execs: proc.pid is the runner's
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, COOKIE_ENV: cookie},
            )
        finally:
            if stderr is not None:
                stderr.close()
        self.address = self.runtime_dir = ""
        self.supervisor = 0
        self._presence: whosthere.Presence | None = None

    def __repr__(self) -> str:
        return f"<NetnsNode {self.name} in {self.namespace} runner={self.proc.pid}>"

    def wait_ready(self, deadline: float) -> NetnsNode:
        """Read the runner's ready line (fail if it exits or the deadline passes)."""
        assert self.proc.stdout is not None
        readable, _, _ = select.select(
            [self.proc.stdout], [], [], max(0, deadline - time.monotonic())
        )
        line = self.proc.stdout.readline() if readable else b""
        if not line:
            raise AssertionError(f"{self} did not start (exit code {self.proc.poll()})")
        ready = json.loads(line)
        self.address, self.runtime_dir, self.supervisor = (
            ready["address"],
            ready["runtime_dir"],
            ready["pid"],
        )
        return self

    @property
    def presence(self) -> whosthere.Presence:
        if self._presence is None:
            self._presence = whosthere.Presence.connect(self.address, timeout=5.0)
        return self._presence

    def status(self) -> dict[str, Any]:
        return node_status(self.address, 5.0)

    def kill(self) -> None:
        """The node's death: SIGKILL its whole process tree at once (the supervisor's process
        group: the supervisor and its actors), and the runner."""
        procs: list[psutil.Process] = []
        if self.proc.poll() is None:  # not reaped yet: its pid is still its own
            with contextlib.suppress(psutil.Error):
                runner = psutil.Process(self.proc.pid)
                procs = [runner, *runner.children(recursive=True)]
        if self.supervisor in {p.pid for p in procs}:  # still ours: its group is the tree
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.supervisor, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.proc.wait()
        self.close_client()
        if self.runtime_dir:  # what a dead supervisor leaves behind
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def close_client(self) -> None:
        if self._presence is not None:
            self._presence.close()
            self._presence = None


@contextlib.contextmanager
def running_nodes(
    network: Network, options: dict[str, Any], cookie: str
) -> Iterator[list[NetnsNode]]:
    """A node in each namespace, listening on its own address and given every other's;
    started side by side, yielded once all are ready, stopped together afterwards."""
    size = len(network.namespaces)
    nodes: list[NetnsNode] = []
    try:
        for i, ns in enumerate(network.namespaces):
            peers = [network.endpoint(k) for k in range(size) if k != i]
            opts = {**options, "listen": network.endpoint(i), "peers": peers}
            nodes.append(NetnsNode(f"n{i}", ns, opts, cookie))
        deadline = time.monotonic() + START_TIMEOUT
        for node in nodes:
            node.wait_ready(deadline)
        yield nodes
    finally:
        stop_nodes(nodes)


def stop_nodes(nodes: list[NetnsNode], timeout: float = 5.0) -> None:
    """Stop the nodes side by side (each runner's stdin closed); kill what lingers."""
    for node in nodes:
        node.close_client()
        if node.proc.stdin is not None and not node.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                node.proc.stdin.close()
    deadline = time.monotonic() + timeout
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(max(0.0, deadline - time.monotonic()))
        node.kill()  # anything left (nothing, normally)
        if node.proc.stdout is not None:
            node.proc.stdout.close()
