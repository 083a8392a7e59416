"""The real Phoenix.Tracker beside whosthere in one sitting: W-P, sequential calls, crashes.

Runs the shared harness's Phoenix side (`phx_bench.exs`, phoenix_pubsub built from source by
its `build.sh`; nothing of Phoenix is in this repository) and this bench's whosthere side,
interleaved rep by rep so the machine's drift hits both alike, then prints the table: the
median of the reps [min-max] of each side, and their ratio.

    python bench/side_by_side.py --harness ../shared/anchors/phoenix --phoenix PHX_BUILD \\
        [--reps 2] [--out DIR]

The raw outputs (every RESULT line, by rep) go to DIR (default: a new temporary directory):
`raw_phoenix.txt` and `raw_whosthere.txt`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT = 900

PHASES = {"track": "tracks", "update": "updates", "untrack4": "untrack/4", "retrack": "re-tracks",
          "untrack2": "untrack/2"}  # fmt: skip
SHAPES = [(1, 1, tuple(PHASES)), (1, 4, ("track",)), (2, 1, ("track",)), (2, 4, tuple(PHASES))]


def wp_rows() -> list[tuple[str, str, str, str, str]]:
    """(Phoenix's run, its figure, whosthere's run, its figure, label): one table row each;
    Phoenix's wp has 1,000 caller processes whatever whosthere's client processes are."""
    rows = []
    for pool, procs, phases in SHAPES:
        for phase in phases:
            label = f"W-P pool {pool}, {procs} client process(es): {PHASES[phase]}/s"
            wt = (f"wp {pool} --procs {procs}", f"{phase}_per_s_to_last_diff")
            rows.append((f"wp {pool}", f"{phase}_per_s", *wt, label))
    return rows


WP = wp_rows()
SEQ = [  # (figure, label): whosthere's sequential calls and their floors, and Phoenix's seqc
    ("seq_aio_p50_us", "sequential await track p50 us"),
    ("seq_raw_aio_p50_us", "  raw zmq.asyncio round trip p50 us (same run)"),
    ("seq_sync_p50_us", "sequential sync track p50 us"),
    ("seq_raw_sync_p50_us", "  raw sync zmq round trip p50 us (same run)"),
    ("seq_raw_pipe_p50_us", "  a byte to a child process and back over pipes, p50 us"),
    ("kill_leave_p50_us", "SIGKILL -> leave at a subscriber p50 us (paired)"),
    ("kill_pidfd_floor_p50_us", "  pidfd floor p50 us (paired trials)"),
]


def parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            _, name, value = line.split()
            out[name] = float(value)
    return out


def run(cmd: list[str], raw: Path, title: str) -> dict[str, float]:
    print(f"  ... {title}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    with raw.open("a") as f:
        f.write(f"## {title} (rc={done.returncode})\n{done.stdout}")
        if done.returncode:
            f.write(done.stderr[-4000:])
    return parse(done.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--harness", required=True, type=Path, help="the shared Phoenix harness")
    ap.add_argument("--phoenix", required=True, type=Path, help="phoenix_pubsub built (ebin/)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="side-by-side-"))
    out.mkdir(parents=True, exist_ok=True)
    raw_phx, raw_wt = out / "raw_phoenix.txt", out / "raw_whosthere.txt"
    phx = ["elixir", "-pa", str(a.phoenix / "ebin"), str(a.harness / "phx_bench.exs")]
    py = [sys.executable]
    phoenix: dict[tuple[str, str], list[float]] = defaultdict(list)
    mine: dict[tuple[str, str], list[float]] = defaultdict(list)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for raw in (raw_phx, raw_wt):
        with raw.open("a") as f:
            f.write(f"### {stamp} {commit()}\n")
    for rep in range(1, a.reps + 1):
        for phx_run in [*sorted({row[0] for row in WP}), "seqc 1"]:
            got = run([*phx, *phx_run.split()], raw_phx, f"rep {rep} phoenix {phx_run}")
            for name, value in got.items():
                phoenix[(phx_run, name)].append(value)
        for wt_run in sorted({row[2] for row in WP}):
            args = wt_run.split()[1:]
            got = run([*py, str(HERE / "wp_workload.py"), *args], raw_wt, f"rep {rep} {wt_run}")
            for name, value in got.items():
                mine[(wt_run, name)].append(value)
        got = run([*py, str(HERE / "latency_workload.py")], raw_wt, f"rep {rep} latency")
        for name, value in got.items():
            mine[("latency", name)].append(value)
    print(f"whosthere {commit()} beside phoenix_pubsub, {a.reps} reps interleaved, {stamp}")
    print(f"raw outputs: {out}\n")
    print("| figure | Phoenix | whosthere | whosthere / Phoenix |\n|---|---|---|---|")
    for phx_run, phx_name, wt_run, wt_name, label in WP:
        p, w = phoenix.get((phx_run, phx_name), []), mine.get((wt_run, wt_name), [])
        ratio = f"{statistics.median(w) / statistics.median(p):.2f}x" if p and w else "-"
        print(f"| {label} | {cell(p)} | {cell(w)} | {ratio} |")
    for name, label in SEQ:
        print(f"| {label} | | {cell(mine.get(('latency', name), []), 0)} | |")
    for name in ("seq_track_p50_us", "seq_track_p99_us"):
        print(f"| Phoenix seqc {name} | {cell(phoenix.get(('seqc 1', name), []), 1)} | | |")
    return 0


def cell(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:,.{digits}f} [{min(values):,.{digits}f}-{max(values):,.{digits}f}]"


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=False,
    )
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
