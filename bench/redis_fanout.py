"""What one redis-server spends carrying a cluster's replication: measured here, then scaled.

Over the Redis engine a heartbeat is one PUBLISH on the cluster-wide channel, which the
server writes to every other node's subscriber connection; a transfer is one PUBLISH on the
asking node's own channel. So the server handles, per broadcast period, as many deliveries as
the mesh sends messages (`simulate_cluster`'s figures), from N-1 times fewer publishes. Its
cost is measured on this machine with a private server: its own CPU time (psutil) while a
publisher pipelines PUBLISH and subscribers drain their connections, for a small message
(an idle heartbeat) and a big one (a burst's), with one subscriber and with many; fitted as
a cost per PUBLISH, per delivery and per KB delivered.

    python bench/redis_fanout.py
"""

from __future__ import annotations

import contextlib
import selectors
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import resp

CHANNEL = b"whosthere:all"
BATCH = 50  # PUBLISH pipelined per round trip: the subscribers keep up, no buffer limit is hit


@dataclass(frozen=True)
class RedisCost:
    """redis-server's CPU, in microseconds, for what the engine asks of it."""

    per_publish_us: float
    per_delivery_us: float
    per_kb_us: float  # per KB delivered, beyond a small message's delivery

    def cpu_share(self, publishes_s: float, deliveries_s: float, kb_s: float) -> float:
        """The share of one core the server needs for these rates (1.0: a whole core)."""
        us = publishes_s * self.per_publish_us + deliveries_s * self.per_delivery_us
        return (us + kb_s * self.per_kb_us) / 1e6


class _Drain(threading.Thread):
    """Reads every subscriber connection, throwing the bytes away, until stopped."""

    def __init__(self, conns: list[resp.Resp]) -> None:
        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        for conn in conns:
            conn.sock.setblocking(False)
            self.selector.register(conn.sock, selectors.EVENT_READ)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for key, _ in self.selector.select(0.05):
                with contextlib.suppress(BlockingIOError):
                    key.fileobj.recv(1 << 20)  # type: ignore[union-attr]


def _server_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _publish_cost(path: str, pid: int, subscribers: int, size: int, seconds: float) -> float:
    """redis-server's CPU seconds per PUBLISH of `size` bytes with `subscribers` reading."""
    conns = [resp.Resp(path) for _ in range(subscribers)]
    publisher = resp.Resp(path)
    try:
        for conn in conns:
            conn.call("SUBSCRIBE", CHANNEL)
        drain = _Drain(conns)
        drain.start()
        body = b"x" * size
        batch = [("PUBLISH", CHANNEL, body)] * BATCH
        publisher.pipeline(batch)  # warm
        published = 0
        cpu0, t0 = _server_cpu(pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            replies = publisher.pipeline(batch)
            assert all(r == subscribers for r in replies), replies[:3]
            published += BATCH
        cpu = _server_cpu(pid) - cpu0
        drain.stopping.set()
        drain.join()
        return cpu / published
    finally:
        publisher.close()
        for conn in conns:
            conn.close()


def measure(seconds: float = 1.5, many: int = 16) -> RedisCost:
    """Fit the server's costs from four runs: small and big messages, 1 and `many`
    subscribers (small: 100 B, an idle heartbeat; big: 16 KB, a burst's heartbeat piece)."""
    with resp.redis_server() as path:
        info = resp.Resp(path)
        try:
            pid = int(
                next(
                    line.split(":")[1]
                    for line in info.call("INFO", "server").decode().splitlines()
                    if line.startswith("process_id:")
                )
            )
        finally:
            info.close()
        small1 = _publish_cost(path, pid, 1, 100, seconds)
        small_n = _publish_cost(path, pid, many, 100, seconds)
        big_n = _publish_cost(path, pid, many, 16_384, seconds)
    per_delivery = max(0.0, (small_n - small1) / (many - 1))
    per_publish = max(0.0, small1 - per_delivery)
    per_kb = max(0.0, (big_n - small_n) / many / (16_384 - 100) * 1024)
    return RedisCost(per_publish * 1e6, per_delivery * 1e6, per_kb * 1e6)


def main() -> int:
    cost = measure()
    print(
        f"redis-server CPU: {cost.per_publish_us:.2f} us per PUBLISH, "
        f"{cost.per_delivery_us:.2f} us per delivery, {cost.per_kb_us:.2f} us per KB delivered"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
