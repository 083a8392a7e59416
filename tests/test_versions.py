"""Versions mixed in a rolling upgrade (issue 23, item 6b): a node of another commit, run
from its source extracted from git (same venv, `PYTHONPATH` naming it, which its actors
inherit), beside a node of this tree. Both run by `whosthere serve`, each with an owner
tracking through it with its own version's client; they either converge (each lists
both presences) or refuse each other, both sides saying why and naming both versions.

The commits:
- `BEFORE_VERSIONS` (1f3490a, pinned): the last commit whose greetings carried no version.
  It speaks wire protocol 1 and skips the version in our greetings as a non-address, so it
  and this tree interoperate (without a warning on either side).
- HEAD~1 of the tested tree: the commit a rolling upgrade to this one mixes with. Expected
  to interoperate if it speaks this tree's wire protocol (one without a version: 1), to
  refuse otherwise; so the commit that bumps `WIRE_VERSION` tests the refusal against a
  real older release.
- this tree with `WIRE_VERSION` one higher: a future wire change, refused on both sides.
A checkout without git history (an sdist, a shallow clone) skips the first two, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.served import Served, cleanup, owner
from tests.support.waiting import wait_until
from whosthere.transport.wire_version import WIRE_VERSION

ROOT = Path(__file__).resolve().parent.parent
BEFORE_VERSIONS = "1f3490a01f7737d92eb24c73a56c215f58be14fa"
TOPIC = "room"
LISTEN = "tcp://127.0.0.1:0"


def extract(commit: str, into: Path) -> Path:
    """The `src` of `commit`, extracted under `into`; skips if there is no such history."""
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout: no older commit to run")
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone (shallow?): fetch the history")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", found.stdout.strip(), "src"],
        capture_output=True,
        check=True,
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def wire_of(src: Path) -> int:
    """The wire protocol a tree speaks (a tree from before the versioned greeting: 1)."""
    module = src / "whosthere" / "transport" / "wire_version.py"
    if not module.exists():
        return 1
    found = re.search(r"^WIRE_VERSION = (\d+)", module.read_text(), re.MULTILINE)
    assert found, f"no WIRE_VERSION in {module}"
    return int(found.group(1))


def env_of(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def run_cli(env: dict[str, str], *args: str) -> dict:
    """`whosthere ARGS --json` of the version `env` names, its output read."""
    out = subprocess.run(
        [sys.executable, "-m", "whosthere", *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=30,
    ).stdout
    return json.loads(out)


def meet(other: Path, tmp_path: Path, expect_wire: int) -> None:
    """A node of `other` (the cluster so far) and one of this tree joining it: they
    converge if `expect_wire` is this tree's wire protocol, else refuse each other."""
    ours = env_of(ROOT / "src")
    theirs = env_of(other)
    servers: list[Served] = []
    owners: list[subprocess.Popen[str]] = []
    with cleanup(servers, owners):
        old = Served.start("older", f"ipc://{tmp_path}/older.sock", LISTEN, [], env=theirs)
        servers.append(old)
        new = Served.start("newer", f"ipc://{tmp_path}/newer.sock", LISTEN, [old.cluster], env=ours)
        servers.append(new)
        owners.append(owner(old.address, TOPIC, "on-older", env=theirs))
        owners.append(owner(new.address, TOPIC, "on-newer", env=ours))
        # the older node runs the extracted tree (its Presence class is imported from there)
        assert run_cli(theirs, "status", old.address)["config"]["presence"]["root"] == str(other)
        nodes = ((old, theirs, "newer"), (new, ours, "older"))
        if expect_wire == WIRE_VERSION:
            for served, env, _ in nodes:
                wait_until(
                    lambda s=served, e=env: (
                        set(run_cli(e, "list", TOPIC, s.address)) == {"on-older", "on-newer"}
                    ),
                    timeout=20,
                    interval=0.2,
                    what=f"{served.name} lists both presences",
                )
            for served in servers:  # the version in the greetings is skipped quietly
                alarms = [line for line in served.lines if " WARNING " in line or " ERROR " in line]
                assert alarms == [], f"{served.name}: {alarms}"
            return
        for served, env, peer in nodes:
            wait_until(
                lambda s=served, e=env, p=peer: (
                    p in run_cli(e, "status", s.address)["cluster"]["refused"]
                ),
                timeout=20,
                interval=0.2,
                what=f"{served.name} reports {peer} refused",
            )
            status = run_cli(env, "status", served.address)
            reason = status["cluster"]["refused"][peer]
            assert "wire protocol mismatch" in reason, reason
            for wire in {expect_wire, WIRE_VERSION}:
                assert f"wire protocol {wire}" in reason, reason
            assert status["peers"] == {}
            mine = "on-older" if served is old else "on-newer"
            assert set(run_cli(env, "list", TOPIC, served.address)) == {mine}
            logged = [line for line in served.lines if " ERROR " in line]
            assert any("wire protocol mismatch" in line for line in logged), served.lines


def test_the_last_release_without_versions_and_this_one_interoperate(tmp_path):
    older = extract(BEFORE_VERSIONS, tmp_path / "older")
    assert wire_of(older) == 1
    meet(older, tmp_path, expect_wire=1)


def test_the_previous_commit_interoperates_or_is_refused_by_its_wire_protocol(tmp_path):
    older = extract("HEAD~1", tmp_path / "older")
    meet(older, tmp_path, expect_wire=wire_of(older))


def test_a_future_wire_protocol_is_refused_on_both_sides(tmp_path):
    future = tmp_path / "future" / "src"
    shutil.copytree(
        ROOT / "src", future, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    module = future / "whosthere" / "transport" / "wire_version.py"
    text = module.read_text()
    bumped = text.replace(f"WIRE_VERSION = {WIRE_VERSION}", f"WIRE_VERSION = {WIRE_VERSION + 1}")
    assert bumped != text
    module.write_text(bumped)
    meet(future, tmp_path, expect_wire=WIRE_VERSION + 1)
