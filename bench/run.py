"""whosthere benchmarks: each figure beside a baseline measured in the same run.

    python bench/run.py --quick          # CI size, well under a minute
    python bench/run.py --full           # the sizes quoted in the issues
    python bench/run.py --json out.json  # save; --compare old.json prints the change

This machine is shared and noisy: absolute times drift, ratios to a baseline measured in the
same run hold. Every throughput is a median over repetitions with its spread (min-max);
latencies are p50/p99 over all samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aio_workload
import channels_workload
import chaos
import cluster_workload
import crash_workloads
import diff_workload
import durability_workload
import idle_workload
import memory_workload
import presence_workloads
import redis_baseline
import runtime_workloads
import simulate_cluster
import wp_workload
from common import FULL, QUICK, Row, Sizes

WORKLOADS: dict[str, Callable[[Sizes], list[Row]]] = {
    "call": runtime_workloads.bench_call,
    "cast": runtime_workloads.bench_cast,
    "fanout": runtime_workloads.bench_fanout,
    "links": runtime_workloads.bench_links,
    "track": presence_workloads.bench_track,
    "list": presence_workloads.bench_list,
    "leave": presence_workloads.bench_kill_to_leave,
    "diff": diff_workload.bench_diff,
    "crash": crash_workloads.bench_crash,
    "durable": durability_workload.bench_durability,
    "memory": memory_workload.bench_memory,
    "redis": redis_baseline.bench_redis,
    "cluster": cluster_workload.bench_cluster,
    "chaos": chaos.bench_chaos,
    "aio": aio_workload.bench_aio,
    "wp": wp_workload.bench_wp,
    "channels": channels_workload.bench_channels,
    "idle": idle_workload.bench_idle,
    "simulate": simulate_cluster.bench_simulate,
}


# -- output ----------------------------------------------------------------------------------


def fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def print_table(rows: list[Row], previous: dict[str, float] | None = None) -> None:
    print(
        f"\n{'figure':<46} {'value':>12} {'unit':<7} {'spread':<20} {'vs baseline'}"
        + ("  change" if previous else "")
    )
    print("-" * (116 + (9 if previous else 0)))
    for r in rows:
        ratio = f"{ratio_text(r.ratio)} {r.baseline}" if r.ratio is not None else ""
        line = f"{r.figure:<46} {fmt(r.value):>12} {r.unit:<7} {r.spread:<20} {ratio:<28}"
        if previous and r.figure in previous and previous[r.figure]:
            line += f"  {(r.value / previous[r.figure] - 1) * 100:+6.1f}%"
        print(line.rstrip() if not previous else line)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI sizes (default)")
    size.add_argument("--full", action="store_true", help="the sizes quoted in the issues")
    p.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), help="run these workloads")
    p.add_argument("--reps", type=int, help="repetitions of each throughput (default by size)")
    p.add_argument("--json", metavar="FILE", help="save the results")
    p.add_argument("--compare", metavar="FILE", help="show the change against a saved run")
    args = p.parse_args(argv)
    sizes = FULL if args.full else QUICK
    if args.reps:
        sizes = replace(sizes, reps=args.reps)
    names = args.only or list(WORKLOADS)
    rows: list[Row] = []
    started = time.time()
    for name in names:
        rows += WORKLOADS[name](sizes)
    print("\r\033[K", end="", file=sys.stderr)
    previous = None
    if args.compare:
        saved = json.loads(Path(args.compare).read_text())
        previous = {r["figure"]: r["value"] for r in saved["rows"]}
    print(
        f"whosthere bench ({'full' if args.full else 'quick'}) on {platform.node()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.time() - started:.0f} s"
    )
    print_table(rows, previous)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "machine": platform.node(),
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "commit": _commit(),
                    "sizes": asdict(sizes),
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
    return 0


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
