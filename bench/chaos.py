"""Chaos soak: a random actor SIGKILLed every few hundred ms while owners track, update,
untrack and die; nothing may be lost and nothing may be left behind.

    python bench/chaos.py --minutes 10      # the soak recorded in bench/README.md
    python bench/run.py --only chaos        # a short one (20 s quick, 10 min --full)

After each kill the owners pause and the checker times how long until `list` equals the
live owners' presences and a subscriber's view (diffs, resynced after MessagesLost) equals
`list` (tests/support/chaos.py). Printed: kills survived per actor, presences lost and
phantom (both must be 0), time to converge (p50/p99), and each actor slot's memory at the
start and the end (RSS; a slot's process changes with each restart).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import Row, Sizes, pct, progress  # noqa: E402

import whosthere  # noqa: E402
from tests.support.chaos import Chaos, ChaosPresence  # noqa: E402

KINDS = ["shard.0", "shard.1", "pubsub", "fetcher.0", "fetcher.1", "client"]
OWNERS = 8


def soak(seconds: float, seed: int = 1) -> tuple[list[Row], list[str]]:
    node = whosthere.Node(
        name="chaos", presence=ChaosPresence, pool_size=2, max_restarts=1000, max_seconds=1
    )
    memory: dict[str, list[tuple[float, int]]] = {}
    with node, Chaos(node, owners=OWNERS, seed=seed) as chaos:
        rng = chaos.rng
        started = time.monotonic()
        chaos.check(started)
        _sample(node, memory, 0.0)
        next_owner_kill = started + 2.0
        while (now := time.monotonic()) - started < seconds:
            time.sleep(rng.uniform(0.2, 0.6))  # owners at work
            if now > next_owner_kill:
                chaos.kill_owner()
                next_owner_kill = now + rng.uniform(1.0, 3.0)
            name = rng.choice(KINDS)
            at = time.monotonic()
            chaos.kill_actor(name)
            chaos.check(at)
            _sample(node, memory, time.monotonic() - started)
            r = chaos.report
            progress(
                f"{time.monotonic() - started:5.0f}/{seconds:.0f} s: {r.survived} kills, "
                f"{r.owner_kills} owner deaths, lost {r.lost}, phantom {r.phantom}"
            )
        report = chaos.report
    print(file=sys.stderr)
    conv = [s * 1e3 for s in report.converge_s[1:]] or [0.0]
    rows = [
        Row("chaos", f"soak length ({OWNERS} owners, pool 2)", seconds, "s"),
        Row(
            "chaos",
            "actor kills survived",
            report.survived,
            "kills",
            " ".join(f"{k}:{n}" for k, n in sorted(report.kills.items())),
        ),
        Row("chaos", "owner processes SIGKILLed", report.owner_kills, "owners"),
        Row("chaos", "presences lost (must be 0)", report.lost, "presences"),
        Row("chaos", "phantom presences (must be 0)", report.phantom, "presences"),
        Row(
            "chaos", "subscriber views that never matched (must be 0)", report.view_wrong, "checks"
        ),
        Row("chaos", "MessagesLost resyncs by the subscriber", report.resyncs, "resyncs"),
        Row(
            "chaos",
            "time to converge after a kill, p50",
            pct(conv, 0.5),
            "ms",
            f"p99 {pct(conv, 0.99):,.0f}",
        ),
    ]
    rows += _memory_rows(memory, seconds)
    return rows, report.failures


def _sample(node: whosthere.Node, memory: dict[str, list[tuple[float, int]]], t: float) -> None:
    status = node.status()
    slots = [("supervisor", status["supervisor"]["pid"])]
    slots += [(a["name"], a["pid"]) for a in status["actors"]]
    for name, pid in slots:
        try:
            rss = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
        memory.setdefault(name, []).append((t, rss))


def _memory_rows(memory: dict[str, list[tuple[float, int]]], seconds: float) -> list[Row]:
    """Each slot's median RSS over the first and the last tenth of the soak (at least 10 s)."""
    window = max(10.0, seconds / 10)
    rows = []
    for name, samples in sorted(memory.items()):
        first = [r for t, r in samples if t <= window]
        last = [r for t, r in samples if t >= seconds - window]
        if not first or not last:
            continue
        a, b = statistics.median(first) / 2**20, statistics.median(last) / 2**20
        rows.append(
            Row("chaos", f"RSS {name}: start -> end", b, "MiB", f"from {a:.1f}", "start", b / a)
        )
    return rows


def bench_chaos(sizes: Sizes) -> list[Row]:
    rows, failures = soak(sizes.chaos_seconds)
    for line in failures[:10]:
        print(f"  chaos failure: {line}", file=sys.stderr)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rows, failures = soak(args.minutes * 60, args.seed)
    print(f"{'figure':52} {'value':>10} unit      spread / baseline")
    for row in rows:
        ratio = f"  {row.ratio:.2f}x {row.baseline}" if row.ratio is not None else ""
        print(f"{row.figure:52} {row.value:>10,.1f} {row.unit:9} {row.spread}{ratio}")
    for line in failures:
        print(f"FAILURE: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
