"""Channels: the Phoenix protocol through uvicorn, driven by a load generator (js/load.mjs).

The issue's layout: 10,000 sockets, each joined with presence to one of 100 topics (quick:
1,000 and 10), in one uvicorn worker on this 2-core machine. Figures: the join rate
(connect + join + presence_state), the worker's RSS per socket, the time from a join's frame
to the presence_diff at each of the topic's other sockets (p50, p99), and a presence_diff
fanned out to 10,000 sockets of one topic (quick: 1,000). Beside them, in the same run, the
same load against `channels_app.raw_app`: the same server and protocol without whosthere.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from common import Row, Sizes, pct, progress

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")) if p
)

import whosthere  # noqa: E402
from tests.support.js import JS_DIR, channels_server, node_missing  # noqa: E402

RSS_TARGET_KB = 30
FANOUT_TARGET_MS = 200
PROBES = 20


def _load(url: str, config: dict[str, Any], server_pid: int) -> dict[str, Any]:
    """Run the generator: joined, RSS measured, then the probes."""
    server = psutil.Process(server_pid)
    rss_before = server.memory_info().rss
    gen = subprocess.Popen(
        ["node", str(JS_DIR / "load.mjs"), url, json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert gen.stdout is not None and gen.stdin is not None
    try:
        joined = json.loads(gen.stdout.readline() or '{"phase": "failed"}')
        if joined["phase"] != "joined":
            raise RuntimeError(f"load generator: {joined}")
        rss_after = server.memory_info().rss
        gen.stdin.write("go\n")
        gen.stdin.flush()
        probed = json.loads(gen.stdout.readline() or '{"phase": "failed"}')
        if probed["phase"] != "probed":
            raise RuntimeError(f"load generator: {probed}")
    finally:
        gen.kill()
        gen.wait()
        gen.stdout.close()
        gen.stdin.close()
    samples = probed["samples"]
    return {
        "join_rate": config["sockets"] / joined["seconds"],
        "rss_per_socket": (rss_after - rss_before) / config["sockets"],
        "latencies": [t for s in samples for t in s[1:]],
        "complete": [len(s) - 1 for s in samples],
        "members": joined["members"],
        "last": [max(s[1:]) if len(s) > 1 else float("nan") for s in samples],
    }


WS = os.environ.get("WHOSTHERE_BENCH_WS", "wsproto")  # uvicorn --ws: wsproto or websockets


def _run(app: str, config: dict[str, Any]) -> dict[str, Any]:
    with (
        whosthere.Node(name="bench-channels") as node,
        channels_server(node.address, app=app, ws=WS) as (url, proc),
    ):
        return _load(url, config, proc.pid)


def bench_channels(sizes: Sizes) -> list[Row]:
    missing = node_missing()
    if missing is not None:
        return [Row("channels", f"skipped: {missing}", 0, "")]
    full = sizes.owners >= 1_000
    sockets, topics = (10_000, 100) if full else (1_000, 10)
    spread = {
        "sockets": sockets,
        "topics": topics,
        "concurrency": 100,
        "probes": PROBES,
        "watch": False,
    }
    big = {**spread, "watch": True}
    got: dict[str, dict[str, Any]] = {}
    for name, app, config in (
        ("spread", "channels_app:app", spread),
        ("raw spread", "channels_app:raw_app", spread),
        ("big", "channels_app:app", big),
        ("raw big", "channels_app:raw_app", big),
    ):
        progress(f"channels: {name}, {config['sockets']:,} sockets")
        got[name] = _run(app, config)
    s, r = got["spread"], got["raw spread"]
    b, rb = got["big"], got["raw big"]
    p50, p99 = statistics.median(s["latencies"]), pct(s["latencies"], 0.99)
    raw50, raw99 = statistics.median(r["latencies"]), pct(r["latencies"], 0.99)
    heard = f"{sum(s['complete'])}/{PROBES * (s['members'])} heard"
    last, raw_last = statistics.median(b["last"]), statistics.median(rb["last"])
    fan_p50 = statistics.median(b["latencies"])
    return [
        Row(
            "channels",
            f"{sockets:,} sockets x {topics} topics: joins/s",
            s["join_rate"],
            "/s",
            "connect+join+state",
            "raw server",
            s["join_rate"] / r["join_rate"],
        ),
        Row(
            "channels",
            "worker RSS per joined socket",
            s["rss_per_socket"] / 1024,
            "KB",
            f"raw {r['rss_per_socket'] / 1024:.1f} KB",
            f"{RSS_TARGET_KB} KB asked",
            s["rss_per_socket"] / 1024 / RSS_TARGET_KB,
        ),
        Row(
            "channels",
            f"join -> the topic's {s['members'] - 1} others: p50",
            p50,
            "ms",
            f"p99 {p99:.1f}; {heard}",
            "raw broadcast p50",
            p50 / raw50,
        ),
        Row(
            "channels", "  the same: p99", p99, "ms", f"raw p99 {raw99:.1f}", "raw p99", p99 / raw99
        ),
        Row(
            "channels",
            f"presence_diff to {b['members']:,} sockets: the last",
            last,
            "ms",
            f"p50 {fan_p50:.1f}; raw {raw_last:.1f}",
            f"{FANOUT_TARGET_MS} ms asked",
            last / FANOUT_TARGET_MS,
        ),
    ]
