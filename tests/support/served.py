"""Nodes run as `whosthere serve` processes, and owners that track through them: what an
operator deploys, stopped with the signals an orchestrator sends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import whosthere
from whosthere.errors import MessagesLost, WhosthereError
from whosthere.node import node_status

# the periods tests/test_cluster.py uses: broadcast 50 ms, down 0.5 s, permdown 2 s
FAST_FLAGS = (
    "--broadcast-period=0.05",
    "--max-silent-periods=2",
    "--down-period=0.5",
    "--permdown-period=2",
    "--clock-sample-periods=2",
    "--fetchers=1",
)
DOWN_PERIOD = 0.5
PERMDOWN_PERIOD = 2.0

# An owner: a process that tracks itself through the node at its address, then lives on.
# The client tracks it again by itself on a node that serves the same address later.
_OWNER = """
import os, sys, time
import whosthere
presence = whosthere.Presence.connect(sys.argv[1])
presence.track(os.getpid(), sys.argv[2], sys.argv[3], {"owner": sys.argv[3]})
print("tracked", flush=True)
while True:
    time.sleep(60)  # its presence lives as long as it does
"""


@dataclass
class Served:
    """One `whosthere serve` process: a node of the cluster."""

    proc: subprocess.Popen[str]
    name: str
    address: str  # the client door
    cluster: str  # the listen address peers dial
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(
        cls,
        name: str,
        address: str,
        listen: str,
        seeds: list[str],
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        flags: tuple[str, ...] = FAST_FLAGS,
    ) -> Served:
        """Start a node and return once it serves (its banner printed)."""
        cmd = [python, "-m", "whosthere", "serve", "--name", name, "--address", address]
        cmd += ["--listen", listen, *flags]
        for seed in seeds:  # a `dns:NAME:PORT` would do as well (DESIGN section 9)
            cmd += ["--peer", seed]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        served = cls(proc, name, address, "")
        assert proc.stdout is not None
        for line in proc.stdout:
            served.lines.append(line)
            if "peers join with --peer " in line:
                served.cluster = line.rsplit(" ", 1)[1].strip()
            if "Ctrl-C stops it" in line:
                served.reader = threading.Thread(target=served._read_on, daemon=True)
                served.reader.start()
                return served
        proc.wait()
        proc.stdout.close()
        raise AssertionError(f"serve {name} exited ({proc.returncode}): {''.join(served.lines)}")

    def _read_on(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # its log, for the assertion messages
            self.lines.append(line)

    def supervisor_pid(self) -> int:
        return int(node_status(self.address)["supervisor"]["pid"])

    def terminate(self, timeout: float = 10.0, signum: int = signal.SIGTERM) -> float:
        """SIGTERM, as an orchestrator stops a pod (or `signum`: SIGINT is a Ctrl-C);
        returns how long it took to exit."""
        begun = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        assert code == 0, f"serve {self.name} exited {code}: {''.join(self.lines)}"
        return time.monotonic() - begun

    def kill(self) -> None:
        """SIGKILL to serve and to its node's process group: a pod killed, nothing said."""
        group = self.supervisor_pid()  # the node runs in a session of its own
        self.proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.proc.wait()

    def stop_quietly(self) -> None:
        """Cleanup: whatever is left of it, gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(5)  # it reads to the end, then the pipe can close
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def owner(
    address: str, topic: str, key: str, *, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """A process that tracks itself as `key` on `topic` through the node at `address`."""
    (proc,) = owners([(address, key)], topic, env=env)
    return proc


def owners(
    where: list[tuple[str, str]], topic: str, *, env: dict[str, str] | None = None
) -> list[subprocess.Popen[str]]:
    """An owner per (address, key), started together; returns once each has tracked."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OWNER, address, topic, key],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for address, key in where
    ]
    for proc, (_, key) in zip(procs, where, strict=True):
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "tracked\n", f"owner {key} did not track: {line!r}"
    return procs


class Recorder:
    """Every `presence_diff` of a topic one node publishes, from a thread of the test."""

    def __init__(self, served: Served, topic: str) -> None:
        self.name = served.name
        self.presence = whosthere.Presence.connect(served.address)
        self.sub = self.presence.subscribe(topic)
        self.diffs: list[dict[str, Any]] = []
        self.last_at = time.monotonic()  # when the last diff came (or it subscribed)
        self.lost = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._record, daemon=True)
        self._thread.start()

    def _record(self) -> None:
        while not self._done.is_set():
            try:
                msg = self.sub.get(timeout=0.05)
            except MessagesLost:
                self.lost += 1
                continue
            except WhosthereError:
                return  # its node went away
            if msg is not None and msg.event == "presence_diff":
                self.diffs.append(msg.payload)
                self.last_at = time.monotonic()

    def quiet(self, seconds: float) -> bool:
        """No diff for `seconds`: what `list` showed has reached it too (a diff may come a
        moment after `list` shows its change)."""
        return time.monotonic() - self.last_at > seconds

    def refs(self, side: str) -> list[str]:
        """Every phx_ref in the diffs' `side` ("joins" or "leaves"), as often as it came."""
        return [
            meta["phx_ref"]
            for diff in self.diffs
            for entry in diff[side].values()
            for meta in entry["metas"]
        ]

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self.sub.close()
        self.presence.close()


def listed_refs(address: str, topic: str) -> dict[str, list[str]]:
    """{key: [phx_ref, ...]} as the node at `address` lists `topic`."""
    presence = whosthere.Presence.connect(address)
    try:
        return {
            key: sorted(m["phx_ref"] for m in entry["metas"])
            for key, entry in presence.list(topic).items()
        }
    finally:
        presence.close()


@contextlib.contextmanager
def cleanup(servers: list[Served], owners: list[subprocess.Popen[str]]) -> Iterator[None]:
    """Every node and owner the test started is gone at the end, whatever happened."""
    try:
        yield
    finally:
        for proc in owners:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for served in servers:
            served.stop_quietly()
