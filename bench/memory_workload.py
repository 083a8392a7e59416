"""Memory per presence: the node's RSS growth per tracked presence, beside what a presence
carries (topic + key + packed meta) and, when redis-server is installed, what Redis needs
for the same presences as a hash per topic."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import psutil
import resp
from common import META, Row, Sizes, median_spread, progress, reap, sleepers, track_all

import whosthere

MAX_OWNERS = 1_000  # more presences: more topics per owner (fewer processes to start)


def bench_memory(sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    owners = sleepers(max(_owners(n) for n in sizes.memory))
    pids = [p.pid for p in owners]
    try:
        for n in sizes.memory:
            count = _owners(n)
            shape = f"{count:,} owners x {n // count:,} topics"
            payload = _payload(pids[:count], n)
            rss = []
            for rep in range(sizes.reps):
                progress(f"node RSS with {shape}, rep {rep + 1}")
                rss.append(_node_bytes(pids[:count], n))
            value, spread = median_spread(rss)
            rows += [
                Row("memory", f"payload per presence, {n:,}", payload, "B"),
                Row(
                    "memory",
                    f"node RSS per presence, {n:,}",
                    value,
                    "B",
                    spread,
                    "payload",
                    value / payload,
                ),
            ]
            if resp.available() is not None:
                used = [_redis_bytes(pids[:count], n, rep) for rep in range(sizes.reps)]
                value, spread = median_spread(used)
                rows.append(
                    Row(
                        "memory",
                        f"redis used_memory per presence, {n:,}",
                        value,
                        "B",
                        spread,
                        "payload",
                        value / payload,
                    )
                )
    finally:
        reap(owners)
    return rows


def _owners(n: int) -> int:
    return max(1, min(MAX_OWNERS, n // 100))


def _presences(pids: list[int], n: int) -> Iterator[tuple[int, str, str, dict]]:
    """`n` presences: every owner, one key, in `n // len(pids)` topics."""
    for t in range(n // len(pids)):
        for pid in pids:
            yield pid, f"mem:{t}", f"user-{pid}", META


def _payload(pids: list[int], n: int) -> float:
    """Bytes a presence carries, on average: topic + key + packed meta."""
    sizes = (len(t) + len(k) + len(msgpack.packb(m)) for _, t, k, m in _presences(pids, n))
    return sum(sizes) / n


def _node_bytes(pids: list[int], n: int) -> float:
    """RSS growth of a fresh node's processes (supervisor and actors) per presence tracked."""
    with whosthere.Node(name="bench") as node:
        before = _rss(node)
        track_all(node.presence, _presences(pids, n), f"{n:,} presences")
        after = _rss(node)
    return (after - before) / n


def _rss(node: whosthere.Node) -> int:
    pids = [node.pid, *(a["pid"] for a in node.status()["actors"] if a["pid"])]
    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


def _redis_bytes(pids: list[int], n: int, rep: int) -> float:
    """Redis `used_memory` growth per presence: HSET topic key meta, a heartbeat per owner."""
    progress(f"redis used_memory with {n:,} presences, rep {rep + 1}")
    with resp.redis_server() as path:
        conn = resp.Resp(path)
        try:
            before = _used_memory(conn)
            batch: list[list[object]] = [["SET", f"hb:{pid}", 1, "PX", 60_000] for pid in pids]
            for _, topic, key, meta in _presences(pids, n):
                batch.append(["HSET", topic, key, msgpack.packb({**meta, "phx_ref": "0" * 16})])
                if len(batch) >= 10_000:
                    conn.pipeline(batch)
                    batch = []
            conn.pipeline(batch)
            return (_used_memory(conn) - before) / n
        finally:
            conn.close()


def _used_memory(conn: resp.Resp) -> int:
    info = conn.call("INFO", "memory").decode()
    return int(next(line for line in info.splitlines() if line.startswith("used_memory:"))[12:])
