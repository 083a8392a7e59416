"""Redis as a presence server, the usual way, beside whosthere doing the same in the same run.

A hash per topic (HSET topic key meta), a set of each owner's presences (to remove them when
it dies), a heartbeat key with a TTL per owner (SET hb:<pid> 1 PX ttl, refreshed by the owner),
PUBLISH topic on join. A leave is noticed when the heartbeat expires: the keyspace notification
`__keyevent@0__:expired` on a subscriber connection, then HDEL. Skipped (a note row) when
redis-server is not installed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from typing import Any

import msgpack
import resp
from common import META, Row, Sizes, median_spread, pct, progress, reap, sleepers, track_all
from presence_workloads import kill_to_leave_samples

import whosthere

TTL_MS = 1_000  # heartbeat key lifetime
BEAT = 0.25  # seconds between heartbeats
BATCH = 100  # tracks per pipelined round trip
SEQUENTIAL = 10_000  # at most this many one-at-a-time tracks (a rate: more adds only time)
Entry = tuple[int, str, str, dict[str, Any]]


def track_commands(pid: int, topic: str, key: str, meta: dict[str, Any]) -> list[list[Any]]:
    """What one track writes: the meta (with a phx_ref, as whosthere stores it), the owner's
    index, its heartbeat, the join diff."""
    packed = msgpack.packb({**meta, "phx_ref": f"{random.getrandbits(64):016x}"})
    diff = msgpack.packb({"joins": {key: {"metas": [packed]}}, "leaves": {}})
    return [
        ["HSET", topic, key, packed],
        ["SADD", f"owner:{pid}", f"{topic}\0{key}"],
        ["SET", f"hb:{pid}", 1, "PX", TTL_MS],
        ["PUBLISH", topic, diff],
    ]


def redis_list(conn: resp.Resp, topic: str) -> dict[str, dict[str, Any]]:
    """`list(topic)` in the shape whosthere returns: {key: {"metas": [meta]}}."""
    pairs = iter(conn.call("HGETALL", topic))
    unpack = msgpack.unpackb
    return {key.decode(): {"metas": [unpack(meta)]} for key, meta in zip(pairs, pairs, strict=True)}


def bench_redis(sizes: Sizes) -> list[Row]:
    if resp.available() is None:
        return [Row("redis", "redis-server not installed: skipped", 0, "")]
    rows: list[Row] = []
    owners = sleepers(sizes.owners)
    try:
        with resp.redis_server() as path, whosthere.Node(name="bench") as node:
            conn = resp.Resp(path)
            try:
                rows += _track(conn, node.presence, [p.pid for p in owners], sizes)
                rows += _list(conn, node.presence, owners[0].pid, sizes.list_sizes)
                rows += _kill_to_leave(conn, path, node.presence, sizes.kills)
            finally:
                conn.close()
    finally:
        reap(owners)
    return rows


def _shape(pids: list[int], topics: int, prefix: str) -> list[Entry]:
    """The track workload's shape: each owner, one key, in `topics` topics."""
    return [(pid, f"{prefix}:{t}", f"user-{pid}", META) for pid in pids for t in range(topics)]


def _rate(count: int, run: Any) -> float:
    t = time.perf_counter()
    run()
    return count / (time.perf_counter() - t)


def _track(conn: resp.Resp, presence: Any, pids: list[int], sizes: Sizes) -> list[Row]:
    rates: dict[str, list[float]] = {k: [] for k in ("rseq", "rpipe", "wseq", "wmany")}
    many = getattr(presence, "track_many", None)
    total = len(pids) * sizes.topics
    seq = min(total, SEQUENTIAL)
    for rep in range(sizes.reps):
        progress(f"redis vs whosthere: track {total:,} presences, rep {rep + 1}")
        shape = {k: _shape(pids, sizes.topics, f"{k}{rep}") for k in rates}
        rates["rseq"].append(_rate(seq, lambda s=shape["rseq"][:seq]: _redis_seq(conn, s)))
        rates["rpipe"].append(_rate(total, lambda s=shape["rpipe"]: _redis_pipe(conn, s)))
        rates["wseq"].append(_rate(seq, lambda s=shape["wseq"][:seq]: _seq(presence, s)))
        if many is not None:
            rates["wmany"].append(_rate(total, lambda s=shape["wmany"]: _batched(many, s)))
    rseq, rseq_spread = median_spread(rates["rseq"])
    rpipe, rpipe_spread = median_spread(rates["rpipe"])
    wseq, wseq_spread = median_spread(rates["wseq"])
    rows = [
        Row("redis", "redis track/s, sequential round trips", rseq, "op/s", rseq_spread),
        Row(
            "redis",
            "whosthere track/s, sequential calls",
            wseq,
            "op/s",
            wseq_spread,
            "redis seq.",
            wseq / rseq,
        ),
        Row("redis", f"redis track/s, pipelined x{BATCH}", rpipe, "op/s", rpipe_spread),
    ]
    if rates["wmany"]:
        wmany, wmany_spread = median_spread(rates["wmany"])
        rows.append(
            Row(
                "redis",
                f"whosthere track_many/s, x{BATCH} per call",
                wmany,
                "op/s",
                wmany_spread,
                "redis pipelined",
                wmany / rpipe,
            )
        )
    return rows


def _redis_seq(conn: resp.Resp, entries: Iterable[Entry]) -> None:
    for entry in entries:
        conn.pipeline(track_commands(*entry))  # one round trip per track


def _redis_pipe(conn: resp.Resp, entries: list[Entry]) -> None:
    for i in range(0, len(entries), BATCH):
        conn.pipeline([c for e in entries[i : i + BATCH] for c in track_commands(*e)])


def _seq(presence: Any, entries: Iterable[Entry]) -> None:
    for entry in entries:
        presence.track(*entry)


def _batched(many: Any, entries: list[Entry]) -> None:
    for i in range(0, len(entries), BATCH):
        many(entries[i : i + BATCH])


def _list(conn: resp.Resp, presence: Any, pid: int, list_sizes: Iterable[int]) -> list[Row]:
    rows = []
    for size in list_sizes:
        topic = f"rlist:{size}"
        progress(f"redis vs whosthere: list of {size:,}")
        entries = [(pid, topic, f"user-{i}", META) for i in range(size)]
        _redis_pipe(conn, entries)
        track_all(presence, entries, f"list of {size:,}")
        reps = max(20, min(200, 20_000 // size))
        redis = _timed(reps, lambda t=topic: redis_list(conn, t), size)
        mine = _timed(reps, lambda t=topic: presence.list(t), size)
        r50, m50 = pct(redis, 0.5) * 1e3, pct(mine, 0.5) * 1e3
        rows += [
            Row(
                "redis",
                f"redis list p50 (HGETALL+unpack), {size:,}",
                r50,
                "ms",
                f"p99 {pct(redis, 0.99) * 1e3:.3f}",
            ),
            Row(
                "redis",
                f"whosthere list p50, {size:,}",
                m50,
                "ms",
                f"p99 {pct(mine, 0.99) * 1e3:.3f}",
                "redis p50",
                m50 / r50,
            ),
        ]
    return rows


def _timed(reps: int, listing: Any, size: int) -> list[float]:
    """Seconds per call of `listing`, after 3 untimed, checking it returns `size` keys."""
    samples = []
    for i in range(reps + 3):
        t = time.perf_counter()
        listed = listing()
        if i >= 3:
            samples.append(time.perf_counter() - t)
    assert len(listed) == size, (len(listed), size)
    return samples


def _kill_to_leave(conn: resp.Resp, path: str, presence: Any, kills: int) -> list[Row]:
    kills = min(kills, 200)
    progress(f"redis kill -> expired notice: {kills} owners, TTL {TTL_MS} ms")
    redis = _redis_kill_to_leave(conn, path, kills)
    progress(f"whosthere kill -> leave diff: {kills} owners")
    mine = kill_to_leave_samples(presence, kills, "rvictims")
    r50, r99 = pct(redis, 0.5) * 1e3, pct(redis, 0.99) * 1e3
    m50, m99 = pct(mine, 0.5) * 1e3, pct(mine, 0.99) * 1e3
    return [
        Row("redis", f"redis kill->expired p50 (TTL {TTL_MS:,} ms)", r50, "ms", f"p99 {r99:.1f}"),
        Row(
            "redis",
            "whosthere kill->leave diff p50",
            m50,
            "ms",
            f"p99 {m99:.3f}",
            "redis p50",
            m50 / r50,
        ),
        Row("redis", "whosthere kill->leave diff p99", m99, "ms", "", "redis p99", m99 / r99),
    ]


def _redis_kill_to_leave(conn: resp.Resp, path: str, kills: int) -> list[float]:
    """Seconds from SIGKILL of a heartbeating owner to its heartbeat's expired notification.

    A thread stands in for the owners' own heartbeats (sleep processes cannot send them); an
    owner's beats stop when it is killed. Kills are spread over one beat period, so they fall
    at every phase of the heartbeat; each then waits out what was left of its TTL.
    """
    victims = sleepers(kills)
    listener = resp.Resp(path)
    stop = threading.Event()
    alive = {v.pid for v in victims}
    lock = threading.Lock()
    beater = threading.Thread(target=_heartbeats, args=(path, alive, lock, stop), daemon=True)
    try:
        listener.call("SUBSCRIBE", "__keyevent@0__:expired")
        _redis_pipe(conn, [(v.pid, "rvictims", f"v{v.pid}", META) for v in victims])
        beater.start()
        killed: dict[bytes, float] = {}
        for v in victims:
            time.sleep(random.uniform(0, 2 * BEAT / kills))
            with lock:
                alive.discard(v.pid)
            killed[f"hb:{v.pid}".encode()] = time.perf_counter()
            v.kill()
        samples = []
        listener.sock.settimeout(TTL_MS / 1e3 * 5)
        while len(samples) < kills:
            _, _, key = listener.read()  # ["message", channel, expired key]
            if key in killed:
                samples.append(time.perf_counter() - killed.pop(key))
                _leave(conn, int(key[3:]))
        return samples
    finally:
        stop.set()
        if beater.is_alive():
            beater.join(5)
        listener.close()
        reap(victims)


def _heartbeats(path: str, alive: set[int], lock: threading.Lock, stop: threading.Event) -> None:
    beats = resp.Resp(path)
    try:
        while not stop.wait(BEAT):
            with lock:  # held while beating: a killed owner never beats again
                if alive:
                    beats.pipeline([["SET", f"hb:{pid}", 1, "PX", TTL_MS] for pid in alive])
    finally:
        beats.close()


def _leave(conn: resp.Resp, pid: int) -> None:
    """What the leave handler does on an expired heartbeat: HDEL each presence, PUBLISH."""
    owned = conn.call("SMEMBERS", f"owner:{pid}")
    commands: list[list[Any]] = [["DEL", f"owner:{pid}"]]
    for item in owned:
        topic, key = item.decode().split("\0")
        commands += [
            ["HDEL", topic, key],
            ["PUBLISH", topic, msgpack.packb({"joins": {}, "leaves": {key: {"metas": []}}})],
        ]
    conn.pipeline(commands)
