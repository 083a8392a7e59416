"""asyncio workloads: one process, many owners, concurrent awaits (Phoenix's bench layout).

Phoenix's own presence bench, on this machine type: 1,000 concurrent callers tracking into
100 topics, 39,500 tracks/s; updates 16,400/s. Here, 1,000 `presence.owner()`s in one asyncio
process, each `await presence.track(owner, topic, ...)` into its topics one after the other,
all owners at once (per-call, like-for-like with Phoenix: every track is its own call and
reply). Beside them, in the same run: the raw ceiling of the same pattern (1,000 tasks
awaiting round trips over one `zmq.asyncio` DEALER, matched by reference, to an echo
process) and, for one caller, a raw sequential `zmq.asyncio` round trip.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import Any

import baselines
import msgpack
import zmq
import zmq.asyncio
from common import Row, Sizes, pct, progress

import whosthere
import whosthere.aio

PHOENIX_TRACKS_S = 39_500  # 1,000 concurrent callers, 100 topics (this machine type)
PHOENIX_UPDATES_S = 16_400
OWNERS = 1_000


async def _raw(endpoint: str, concurrency: int, per_task: int) -> tuple[float, list[float]]:
    """(calls/s with `concurrency` tasks, sequential round-trip samples), raw zmq.asyncio."""
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    pending: dict[bytes, asyncio.Future[bytes]] = {}
    refs = itertools.count(1)

    async def reader() -> None:
        while True:
            ref, body = await sock.recv_multipart()
            future = pending.pop(ref, None)
            if future is not None and not future.done():
                future.set_result(body)

    async def call() -> Any:
        ref = next(refs).to_bytes(8, "big")
        future = asyncio.get_running_loop().create_future()
        pending[ref] = future
        await sock.send_multipart((ref, msgpack.packb([30, 1, 2, "t", "k", b"\x80"])))
        return msgpack.unpackb(await asyncio.wait_for(future, 5))

    task = asyncio.create_task(reader())
    try:
        for _ in range(200):
            await call()
        samples = []
        for _ in range(2_000):
            t = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t)

        async def worker() -> None:
            for _ in range(per_task):
                await call()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = concurrency * per_task / (time.perf_counter() - t0)
    finally:
        task.cancel()
        sock.close()
    return rate, samples


async def _whosthere(address: str, topics: int, closing: int) -> dict[str, Any]:
    presence = await whosthere.aio.connect(address, timeout=60)
    try:
        owners = [presence.owner() for _ in range(OWNERS)]
        meta = {"status": "online", "device": "desktop", "note": "x" * 32}

        async def tracks(owner: Any) -> None:
            for t in range(topics):
                await presence.track(owner, f"aio:{t}", "user", meta)

        t0 = time.perf_counter()
        await asyncio.gather(*(tracks(o) for o in owners))
        tracks_s = OWNERS * topics / (time.perf_counter() - t0)

        async def updates(owner: Any) -> None:
            for t in range(min(topics, 10)):
                await presence.update(owner, f"aio:{t}", "user", {**meta, "status": "away"})

        t0 = time.perf_counter()
        await asyncio.gather(*(updates(o) for o in owners))
        updates_s = OWNERS * min(topics, 10) / (time.perf_counter() - t0)
        await asyncio.gather(*(o.close() for o in owners))

        me = presence.owner()
        samples = []
        for i in range(2_200):
            t = time.perf_counter()
            await presence.track(me, "aio:seq", f"k{i}", meta)
            if i >= 200:
                samples.append(time.perf_counter() - t)
        await me.close()

        many = [presence.owner() for _ in range(closing)]
        await presence.track_many([(o, "aio:closing", "k", {}) for o in many])
        t0 = time.perf_counter()
        await asyncio.gather(*(o.close() for o in many))
        close_s = time.perf_counter() - t0
        assert await presence.list("aio:closing") == {}
        return {"tracks": tracks_s, "updates": updates_s, "seq": samples, "close": close_s}
    finally:
        await presence.close()


def bench_aio(sizes: Sizes) -> list[Row]:
    topics = 100 if sizes.owners >= 1_000 else 10
    closing = 100_000 if sizes.owners >= 1_000 else 10_000
    progress("raw zmq.asyncio: sequential and 1,000 concurrent round trips")
    endpoint = baselines._endpoint("aio-echo")
    server = baselines._start(baselines._echo_server, endpoint)
    try:
        raw_rate, raw_seq = asyncio.run(_raw(endpoint, OWNERS, topics))
    finally:
        baselines._stop_server(endpoint, server)
    progress(f"whosthere.aio: {OWNERS:,} owners x {topics} topics, {closing:,} owners closed")
    with whosthere.Node(name="bench-aio") as node:
        got = asyncio.run(_whosthere(node.address, topics, closing))
    raw_p50, p50 = statistics.median(raw_seq) * 1e6, statistics.median(got["seq"]) * 1e6
    p99 = f"p99 {pct(got['seq'], 0.99) * 1e6:.0f}"
    return [
        Row(
            "aio",
            f"{OWNERS:,} owners x {topics} topics: tracks/s",
            got["tracks"],
            "/s",
            "per call",
            "Phoenix 39,500/s",
            got["tracks"] / PHOENIX_TRACKS_S,
        ),
        Row(
            "aio", "  same pattern, raw zmq.asyncio calls/s", raw_rate, "/s", "the asyncio ceiling"
        ),
        Row(
            "aio",
            f"{OWNERS:,} owners x 10 updates: updates/s",
            got["updates"],
            "/s",
            "per call",
            "Phoenix 16,400/s",
            got["updates"] / PHOENIX_UPDATES_S,
        ),
        Row(
            "aio",
            "sequential await track p50",
            p50,
            "us",
            p99,
            "raw zmq.asyncio p50",
            p50 / raw_p50,
        ),
        Row(
            "aio",
            f"{closing:,} owners closed (1 presence each)",
            got["close"] * 1e3,
            "ms",
            "concurrent",
            "2 s",
            got["close"] / 2.0,
        ),
    ]
