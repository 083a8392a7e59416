"""asyncio workloads: Phoenix's W-P shape from one process, beside the raw asyncio ceiling.

Phoenix's own presence bench shape (`wp_workload`): 100,000 owners with one presence each,
1,000 concurrent callers (asyncio tasks here, `presence.owner()`s as owners) each making its
100 owners' calls one after the other; rates counted to the last diff at a subscriber
process. Beside it, in the same run: the raw ceiling of the same pattern (1,000 tasks
awaiting round trips over one `zmq.asyncio` DEALER, matched by reference, to an echo
process) and, for one caller, a raw sequential `zmq.asyncio` round trip. No figure from
another day is a baseline here: Phoenix's side is measured with the shared harness
(`side_by_side.py`).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import Any

import baselines
import msgpack
import wp_workload
import zmq
import zmq.asyncio
from common import Row, Sizes, pct, progress

import whosthere
import whosthere.aio

SEQ_META = {"status": "online", "device": "desktop", "note": "x" * 32}


RAW_BODY = msgpack.packb([30, 1, 2, "t", "k", b"\x80"])  # a Track's shape, small


async def _raw(
    endpoint: str, concurrency: int, per_task: int, sequential: int = 2_000
) -> tuple[float, list[float]]:
    """(calls/s with `concurrency` tasks, `sequential` round-trip samples), raw zmq.asyncio."""
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
        await sock.send_multipart((ref, RAW_BODY))
        return msgpack.unpackb(await asyncio.wait_for(future, 5))

    task = asyncio.create_task(reader())
    try:
        for _ in range(200):
            await call()
        samples = []
        for _ in range(sequential):
            t = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t)
        if not per_task:
            return 0.0, samples

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


async def _whosthere(address: str, closing: int) -> dict[str, Any]:
    """Sequential `await track` samples, then `closing` owners closed at once."""
    presence = await whosthere.aio.connect(address, timeout=60)
    try:
        me = presence.owner()
        samples = []
        for i in range(2_200):
            t = time.perf_counter()
            await presence.track(me, "aio:seq", f"k{i}", SEQ_META)
            if i >= 200:
                samples.append(time.perf_counter() - t)
        await me.close()

        many = [presence.owner() for _ in range(closing)]
        await presence.track_many([(o, "aio:closing", "k", {}) for o in many])
        t0 = time.perf_counter()
        await asyncio.gather(*(o.close() for o in many))
        close_s = time.perf_counter() - t0
        assert await presence.list("aio:closing") == {}
        return {"seq": samples, "close": close_s}
    finally:
        await presence.close()


def bench_aio(sizes: Sizes) -> list[Row]:
    owners, callers = (100_000, 1_000) if sizes.owners >= 1_000 else (10_000, 100)
    closing = 100_000 if sizes.owners >= 1_000 else 10_000
    progress(f"raw zmq.asyncio: sequential and {callers:,} concurrent round trips")
    endpoint = baselines._endpoint("aio-echo")
    server = baselines._start(baselines._echo_server, endpoint)
    try:
        raw_rate, raw_seq = asyncio.run(_raw(endpoint, callers, owners // callers))
    finally:
        baselines._stop_server(endpoint, server)
    progress(f"whosthere.aio, W-P: {owners:,} owners, {callers:,} tasks")
    phases = {phase.name: phase for phase in wp_workload.run(1, 1, owners, callers)}
    progress(f"whosthere.aio: sequential tracks, {closing:,} owners closed")
    with whosthere.Node(name="bench-aio") as node:
        got = asyncio.run(_whosthere(node.address, closing))
    raw_p50, p50 = statistics.median(raw_seq) * 1e6, statistics.median(got["seq"]) * 1e6
    p99 = f"p99 {pct(got['seq'], 0.99) * 1e6:.0f}"
    shape = f"W-P {owners:,} owners, {callers:,} tasks"
    rows = []
    for name, label in (("track", "tracks"), ("update", "updates"), ("untrack4", "untracks")):
        phase = phases[name]
        cpu = phase.cpu_us
        rows.append(
            Row(
                "aio",
                f"{shape}: {label}/s to the last diff",
                phase.rate_to_last_diff,
                "/s",
                f"CPU us/call: client {cpu['client']:.1f}, shard {cpu['shard']:.1f}",
                "raw zmq.asyncio calls/s",
                phase.rate_to_last_diff / raw_rate,
            )
        )
    return [
        *rows,
        Row(
            "aio",
            "  same concurrency, raw zmq.asyncio calls/s",
            raw_rate,
            "/s",
            "the asyncio ceiling",
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
