"""The calls users make one at a time, each beside its floor, in the same run.

- sequential `await track` (one owner, new keys) beside a raw `zmq.asyncio` round trip of a
  small msgpack message to an echo process; a sync `track` beside a raw sync round trip;
  and a byte to a child process and back over pipes (a hop without ZeroMQ's I/O threads);
  blocks of each alternate, so all sample the same moments of a noisy machine;
- SIGKILL of a freshly tracked owner -> its leave diff at a subscriber of this process, each
  trial paired with a floor trial: a `sleep` SIGKILLed while a pidfd on it waits in an epoll
  of this process (the `links` baseline), the node idle.

    python bench/latency_workload.py [--calls N] [--kills K]    # RESULT lines
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

import aio_workload
import baselines
from presence_workloads import paired_kills

import whosthere
import whosthere.aio

META = {"status": "online", "device": "desktop", "note": "x" * 32}
BLOCK = 500  # sequential calls per block; blocks alternate between whosthere and its floor


async def _aio_tracks(address: str, count: int, start: int) -> list[float]:
    presence = await whosthere.aio.connect(address, timeout=30)
    try:
        me = presence.owner()
        samples = []
        for i in range(count + 50):
            t = time.perf_counter()
            await presence.track(me, "seq:aio", f"k{start + i}", META)
            if i >= 50:
                samples.append(time.perf_counter() - t)
        await me.close()
        return samples
    finally:
        await presence.close()


def _sync_tracks(presence: whosthere.Presence, count: int, start: int) -> list[float]:
    samples = []
    owner = presence.owner()
    for i in range(count + 50):
        t = time.perf_counter()
        presence.track(owner, "seq:sync", f"k{start + i}", META)
        if i >= 50:
            samples.append(time.perf_counter() - t)
    owner.close()
    return samples


def sequential(calls: int) -> dict[str, list[float]]:
    """Each kind of call and its raw floor, in alternating blocks of `BLOCK`."""
    got: dict[str, list[float]] = {
        "aio": [],
        "raw_aio": [],
        "sync": [],
        "raw_sync": [],
        "raw_pipe": [],
    }
    endpoint = baselines._endpoint("seq-echo")
    server = baselines._start(baselines._echo_server, endpoint)
    try:
        with whosthere.Node(name="bench-seq") as node:
            presence = node.presence
            for block in range(max(1, calls // BLOCK)):
                start = block * (BLOCK + 50)
                got["aio"] += asyncio.run(_aio_tracks(node.address, BLOCK, start))
                got["raw_aio"] += asyncio.run(aio_workload._raw(endpoint, 1, 0, BLOCK))[1]
                got["sync"] += _sync_tracks(presence, BLOCK, start)
                got["raw_sync"] += _raw_sync(endpoint, BLOCK)
                got["raw_pipe"] += pipe_round_trips(BLOCK)
    finally:
        baselines._stop_server(endpoint, server)
    return got


def _raw_sync(endpoint: str, count: int) -> list[float]:
    sock = baselines._dealer(endpoint)
    try:
        samples = []
        body = aio_workload.RAW_BODY
        for i in range(count + 50):
            t = time.perf_counter()
            sock.send_multipart((i.to_bytes(8, "big"), body))
            sock.recv_multipart()
            if i >= 50:
                samples.append(time.perf_counter() - t)
        return samples
    finally:
        sock.close()


PIPE_ECHO = "import os\nwhile (b := os.read(0, 1)) and b != b'q':\n    os.write(1, b)\n"


def pipe_round_trips(count: int) -> list[float]:
    """One byte to a child process and back over two pipes: what a hop costs without
    ZeroMQ's I/O threads (a ZeroMQ ipc hop crosses two of them besides the two ends)."""
    child = subprocess.Popen(
        [sys.executable, "-c", PIPE_ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    out, back = child.stdin.fileno(), child.stdout.fileno()
    try:
        samples = []
        for i in range(count + 50):
            t = time.perf_counter()
            os.write(out, b"x")
            os.read(back, 1)
            if i >= 50:
                samples.append(time.perf_counter() - t)
        return samples
    finally:
        os.write(out, b"q")
        child.stdin.close()
        child.stdout.close()
        child.wait(10)


def kill_to_leave(kills: int) -> tuple[list[float], list[float]]:
    """(kill -> leave at a subscriber, kill -> pidfd readable), trial by trial, paired."""
    with whosthere.Node(name="bench-kill") as node:
        return paired_kills(node.presence, kills)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=4_000, help="sequential calls of each kind")
    ap.add_argument("--kills", type=int, default=300, help="paired kill trials")
    a = ap.parse_args()
    for name, samples in sequential(a.calls).items():
        print(f"RESULT seq_{name}_p50_us {statistics.median(samples) * 1e6:.3f}", flush=True)
    leaves, floor = kill_to_leave(a.kills)
    print(f"RESULT kill_leave_p50_us {statistics.median(leaves) * 1e6:.3f}")
    print(f"RESULT kill_pidfd_floor_p50_us {statistics.median(floor) * 1e6:.3f}", flush=True)


if __name__ == "__main__":
    main()
