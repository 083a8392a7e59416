"""The repository's promises: public surface, lint, the README's commands, CI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import whosthere

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_pinned():
    assert sorted(whosthere.__all__) == [
        "ActorError",
        "AlreadyTracked",
        "Channel",
        "InvalidMeta",
        "Links",
        "MalformedFrame",
        "Message",
        "MessagesLost",
        "Node",
        "NodeNameTaken",
        "NodeStartError",
        "NodeUnavailable",
        "NotTracked",
        "Owner",
        "Presence",
        "ProcessExit",
        "PubSub",
        "RestartIntensityExceeded",
        "Subscription",
        "WhosthereError",
    ]
    for name in whosthere.__all__:
        assert getattr(whosthere, name).__module__.startswith("whosthere.")
    kinds = ("Error", "Tracked", "Unavailable", "Taken")
    errors = [n for n in whosthere.__all__ if n.endswith(kinds)]
    assert all(issubclass(getattr(whosthere, n), whosthere.WhosthereError) for n in errors)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("\n## ")[0]
    commands = re.findall(r"^(python3 -m venv .*)$", first_screen, re.M)
    assert len(commands) == 2, "the README's first screen has the demo and the test command"
    assert "whosthere demo" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_package_ships_py_typed():
    assert (Path(whosthere.__file__).parent / "py.typed").exists()


# -- public asyncio only -------------------------------------------------------------------

# A coroutine's or generator's own state: reading it is how one drives a coroutine by hand.
_FRAME_STATE = {"cr_await", "cr_frame", "cr_running", "gi_frame", "gi_running", "gi_yieldfrom"}


# Generators, not coroutines: `steps.run` / `run_async` drive the client core's own calls
# (sans-I/O, each a generator of steps named `steps`) with send and throw, as h11's users do.
SANS_IO_GENERATORS = {"steps"}


def _private_asyncio(source: str) -> list[str]:
    """Where `source` leans on asyncio's private protocol or steps a coroutine by hand: a
    private asyncio name (`_asyncio_future_blocking`, `asyncio._x`, `loop._ready`, the
    `_asyncio` module), `x.send(None)`, `x.throw(...)`, an explicit `__await__()`, a
    coroutine's frame state. Each as "line: what"."""
    import ast

    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute):
            base = node.value
            base_name = base.id if isinstance(base, ast.Name) else None
            if base_name is None and isinstance(base, ast.Call):
                func = base.func
                base_name = func.attr if isinstance(func, ast.Attribute) else None
            loopish = base_name in ("asyncio", "loop", "get_running_loop", "get_event_loop")
            if node.attr.startswith("_asyncio") or node.attr in _FRAME_STATE | {"__await__"}:
                found.append(f"{line}: .{node.attr}")
            elif loopish and node.attr.startswith("_"):
                found.append(f"{line}: {base_name}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            args = node.args
            receiver = node.func.value
            own_steps = isinstance(receiver, ast.Name) and receiver.id in SANS_IO_GENERATORS
            if not own_steps and (
                node.func.attr == "throw"
                or (
                    node.func.attr == "send"
                    and len(args) == 1
                    and isinstance(args[0], ast.Constant)
                    and args[0].value is None
                )
            ):
                found.append(f"{line}: .{node.func.attr}(...)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            ("asyncio", "_asyncio")
        ):
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private or (node.module or "").startswith("_asyncio"):
                found.append(f"{line}: from {node.module} import {', '.join(private) or '...'}")
        elif isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name == "_asyncio"]
    return found


def test_the_scan_for_private_asyncio_sees_what_it_looks_for():
    driven_by_hand = """
import asyncio
from asyncio import _get_running_loop
waiting_on = coro.send(None)
waiting_on._asyncio_future_blocking = False
coro.throw(exc)
step = coro.__await__()
loop = asyncio.get_running_loop()
loop._ready.append(handle)
asyncio.get_running_loop()._selector
asyncio._enter_task(loop, task)
if coro.cr_await is None: pass
"""
    lines = sorted(int(f.split(":")[0]) for f in _private_asyncio(driven_by_hand))
    assert lines == [3, 4, 5, 6, 7, 9, 10, 11, 12]
    public = "sock.send(frame)\nawait send(msg)\nself._ready = 1\nloop.call_soon(f)\n"
    assert _private_asyncio(public) == []


def test_src_uses_only_public_asyncio_and_steps_no_coroutine_by_hand():
    """A Python release may change asyncio's private protocol silently (issue 21): src/
    runs on public asyncio only."""
    found = [
        f"{path.relative_to(ROOT)}:{where}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for where in _private_asyncio(path.read_text())
    ]
    assert found == []


RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff not installed")
def test_ruff_is_clean():
    assert RUFF is not None
    result = subprocess.run(
        [RUFF, "check", "src", "tests", "bench", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(RUFF is None, reason="ruff not installed")
def test_ruff_format_is_clean():
    assert RUFF is not None
    result = subprocess.run(
        [RUFF, "format", "--check", "src", "tests", "bench", "examples"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


MYPY = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")


@pytest.mark.skipif(MYPY is None, reason="mypy not installed")
def test_mypy_strict_passes():
    """`mypy --strict` over src/ (settings in pyproject.toml): what users' type checkers see
    of the public API is what it does."""
    assert MYPY is not None
    result = subprocess.run(
        [MYPY], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(MYPY is None, reason="mypy not installed")
def test_a_users_type_checker_knows_each_call_form():
    """`track`, `untrack` and `update` take (pid, topic, key, ...) or (channel, key, ...):
    `@overload`s tell a user's type checker, which then flags a wrong form."""
    assert MYPY is not None
    forms = ROOT / "tests" / "typing_checks" / "call_forms.py"
    result = subprocess.run(
        [MYPY, "--strict", "--no-incremental", str(forms)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    flagged = sorted({int(m) for m in re.findall(r"call_forms\.py:(\d+): error", result.stdout)})
    lines = forms.read_text().splitlines()
    wrong = [i for i, line in enumerate(lines, 1) if "# wrong" in line]
    assert flagged == wrong, result.stdout


def test_the_readme_presence_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(import os, signal, whosthere.*?)```", readme, re.S)
    assert code is not None
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = out.splitlines()
    assert len(lines) == 5
    assert "'user': {'name': 'user1'}" in lines[0]
    assert "'leaves': {}" in lines[1]
    assert "'status': 'away'" in lines[2] and "'status': 'online'" in lines[2]
    assert "user2" in lines[3] and "'leaves': {}" in lines[3]
    assert lines[4].startswith("{'joins': {}, 'leaves': {'user2'")


def test_bench_runs_and_prints_its_table(tmp_path):
    """A smoke test: the benchmark runs (some workloads, CI size); no speed is asserted."""
    out_json = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--only",
            "call",
            "leave",
            "diff",
            "--json",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "actor call (Ping) p50" in result.stdout
    assert "kill->leave diff" in result.stdout
    assert "track returned -> join at subscriber p50" in result.stdout
    import json

    saved = json.loads(out_json.read_text())
    assert {r["workload"] for r in saved["rows"]} == {"call", "leave", "diff"}
    again = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--only",
            "call",
            "--compare",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "change" in again.stdout


TINY_BENCH = """
import dataclasses, sys
sys.path.insert(0, sys.argv[1])
import cluster_workload, common, crash_workloads, memory_workload, redis_baseline
tiny = dataclasses.replace(common.QUICK, reps=1, owners=5, topics=4, list_sizes=(10,), kills=3,
                           crash=((5, 2), (20, 1)), memory=(1_000,))
benches = (crash_workloads.bench_crash, memory_workload.bench_memory, redis_baseline.bench_redis,
           cluster_workload.bench_cluster)
for bench in benches:
    for row in bench(tiny):
        print(row.workload, row.figure, row.value, sep="|")
"""


def bench_script(script: str, timeout: float) -> list[list[str]]:
    """Run `script` with bench/ on its path; its output lines, split at `|`."""
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "bench")],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return [line.split("|") for line in result.stdout.splitlines()]


def test_crash_memory_redis_and_cluster_benches_run_at_a_tiny_size():
    """The slower workloads, at a size no figure means anything: they run and clean up."""
    rows = bench_script(TINY_BENCH, timeout=120)
    figures = {figure for _, figure, _ in rows}
    assert "mass crash 20 owners x 1: all leaves in" in figures
    assert "node RSS per presence, 1,000" in figures
    assert "A killed (1,000) -> all leaves on B" in figures
    assert {w for w, _, _ in rows} == {"crash", "memory", "redis", "cluster"}
    if shutil.which("redis-server"):
        assert "redis kill->expired p50 (TTL 1,000 ms)" in figures
    else:
        assert "redis-server not installed: skipped" in figures


def test_redis_bench_is_skipped_without_redis_server(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import common
    import redis_baseline
    import resp

    monkeypatch.setattr(resp, "available", lambda: None)
    rows = redis_baseline.bench_redis(common.QUICK)
    assert [r.figure for r in rows] == ["redis-server not installed: skipped"]


# -- layers ------------------------------------------------------------------------------------

# Lowest first: a module imports only from its own layer and those below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("whosthere.errors",)),
    ("wire and processes", ("whosthere.transport", "whosthere.watch")),
    ("pure tracker", ("whosthere.tracker",)),
    ("node description", ("whosthere.config", "whosthere.topology", "whosthere.loading")),
    ("actors", ("whosthere.actors",)),
    ("client API", ("whosthere",)),  # the rest: node, supervisor, presence, pubsub, aio...
    (
        "web and commands",
        ("whosthere.channels", "whosthere.cli", "whosthere.serve_flags", "whosthere.__main__"),
    ),
]
CLIENT_API = 5


def _layer(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if i != CLIENT_API and any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    assert module.partition(".")[0] == "whosthere", module
    return CLIENT_API


def _package(module: str) -> str:
    """A subpackage (whosthere.tracker) or a top-level module (whosthere.node)."""
    return ".".join(module.split(".")[:2])


def _imports() -> dict[str, set[str]]:
    """Module -> the whosthere modules it imports (anywhere in it, lazy imports too)."""
    import ast
    import importlib.util

    src = ROOT / "src"
    found: dict[str, set[str]] = {}
    for path in sorted((src / "whosthere").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
        names = found.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("whosthere"))
            elif isinstance(node, ast.ImportFrom):
                relative = "." * node.level + (node.module or "")
                base = importlib.util.resolve_name(relative, package) if node.level else relative
                if base.startswith("whosthere"):
                    names.add(base)
    return found


def test_no_import_runs_up_a_layer():
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in _imports().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_package_imports_itself_through_another():
    graph: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        graph.setdefault(_package(module), set()).update(
            _package(t) for t in targets if _package(t) != _package(module)
        )

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            here = todo.pop()
            if here == goal:
                return True
            if here not in seen:
                seen.add(here)
                todo.extend(graph.get(here, ()))
        return False

    cycles = sorted(p for p in graph if reaches(p, p))
    assert cycles == []


# -- names -------------------------------------------------------------------------------------

# Two public names DESIGN gives to two things: `whosthere.Channel(pid, topic)` is the `socket`
# argument of Phoenix's `track(socket, key, meta)`, `whosthere.channels.Channel` is
# Phoenix.Channel. Everything else has one name for one thing.
SHARED_BY_DESIGN = {"Channel": {"whosthere.arguments", "whosthere.channels.channel"}}


def _module_names() -> dict[str, str]:
    """Module path -> its file's name, for every module of the package."""
    src = ROOT / "src"
    return {
        ".".join(p.relative_to(src).with_suffix("").parts): p.stem
        for p in sorted((src / "whosthere").rglob("*.py"))
        if p.stem != "__init__"
    }


def test_no_two_modules_share_a_name():
    """A module's name says what it is, wherever it is imported from; only the asyncio
    client repeats the synchronous one's (`whosthere.aio.presence` is `whosthere.presence`
    as coroutines)."""
    by_name: dict[str, list[str]] = {}
    for module, name in _module_names().items():
        by_name.setdefault(name, []).append(module)
    shared = {
        name: modules
        for name, modules in by_name.items()
        if len(modules) > 1 and sorted(modules) != [f"whosthere.aio.{name}", f"whosthere.{name}"]
    }
    assert shared == {}


def test_no_two_classes_or_type_names_share_a_name():
    """Classes and type aliases (CamelCase names bound at a module's top level)."""
    import ast

    src = ROOT / "src"
    where: dict[str, set[str]] = {}
    for path in sorted((src / "whosthere").rglob("*.py")):
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                continue
            for name in names:
                if re.fullmatch(r"_?[A-Z][a-z0-9]+[A-Za-z0-9]*", name):
                    where.setdefault(name.lstrip("_"), set()).add(module)
    shared = {n: m for n, m in where.items() if len(m) > 1 and SHARED_BY_DESIGN.get(n) != m}
    assert shared == {}


PHOENIX_SHAPE_BENCH = """
import sys
sys.path.insert(0, sys.argv[1])
import latency_workload, side_by_side, wp_workload
phases = wp_workload.run(1, procs=2, n=400, callers=20)
for p in phases:
    print("wp", p.name, p.calls, p.rate_to_last_diff > 0, sorted(p.cpu_us), sep="|")
got = latency_workload.sequential(1)
print("seq", *sorted((k, len(v)) for k, v in got.items()), sep="|")
leaves, floor = latency_workload.kill_to_leave(3)
print("kill", len(leaves), len(floor), sep="|")
assert side_by_side.parse("x\\nRESULT a_b 1.5\\n") == {"a_b": 1.5}
print("rows", len(side_by_side.WP), sep="|")
"""


def test_the_phoenix_shape_benches_run_at_a_tiny_size():
    """W-P from two client processes, the sequential calls and paired kills beside their
    floors, the side-by-side table's rows: they run, count every call, and clean up."""
    lines = bench_script(PHOENIX_SHAPE_BENCH, timeout=180)
    wp = [line for line in lines if line[0] == "wp"]
    assert [line[1] for line in wp] == ["track", "update", "untrack4", "retrack", "untrack2"]
    assert all(line[2] == "400" and line[3] == "True" for line in wp)
    assert "client" in wp[0][4] and "shard" in wp[0][4] and "subscriber" in wp[0][4]
    (seq,) = [line for line in lines if line[0] == "seq"]
    assert seq[1:] == [
        "('aio', 500)", "('raw_aio', 500)", "('raw_pipe', 500)", "('raw_sync', 500)",
        "('sync', 500)",
    ]  # fmt: skip
    assert ["kill", "3", "3"] in lines
    assert ["rows", "12"] in lines
