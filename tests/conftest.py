"""Fixtures: every test must leave no process, socket file or runtime directory behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import TAG_ENV, reap_children, sleeper, tagged_processes

ROOT = Path(__file__).resolve().parent.parent

# Set before any node starts, so every process of the run inherits them.
TAG = uuid.uuid4().hex
os.environ[TAG_ENV] = TAG
RUNTIME_BASE = Path(tempfile.mkdtemp(prefix="wt-", dir="/tmp"))
os.environ["WHOSTHERE_RUNTIME_DIR"] = str(RUNTIME_BASE)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)


def _leftovers(before_procs: set[int], before_dirs: set[str]) -> tuple[dict[int, str], list[str]]:
    procs = {p: c for p, c in tagged_processes(TAG).items() if p not in before_procs}
    dirs = sorted(set(os.listdir(RUNTIME_BASE)) - before_dirs) if RUNTIME_BASE.exists() else []
    return procs, dirs


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves processes or runtime directories it created."""
    before_procs = set(tagged_processes(TAG))
    before_dirs = set(os.listdir(RUNTIME_BASE))
    yield
    deadline = time.monotonic() + 3.0
    while True:
        reap_children()
        procs, dirs = _leftovers(before_procs, before_dirs)
        if not procs and not dirs:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    for d in dirs:
        shutil.rmtree(RUNTIME_BASE / d, ignore_errors=True)
    pytest.fail(f"test leaked processes {procs} and runtime directories {dirs}")


@pytest.fixture
def owner() -> Iterator[subprocess.Popen[bytes]]:
    """A process to own presences (cheap, exec'd), killed after the test."""
    proc = sleeper()
    yield proc
    proc.kill()
    proc.wait()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leftover = tagged_processes(TAG)
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    shutil.rmtree(RUNTIME_BASE, ignore_errors=True)
    if leftover:
        print(f"\nwhosthere tests: killed leftover processes {leftover}")
        session.exitstatus = 1


@pytest.fixture
def redis_server() -> Iterator[object]:
    """A private redis-server on a unix socket (skips, saying so, where there is none)."""
    from tests.support.redis_server import RedisServer, available

    if not available():
        pytest.skip("redis-server or redis-py not installed (apt-get install redis-server)")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["mesh", "redis"])
def engine(request: pytest.FixtureRequest) -> str | None:
    """Run a cluster test over both engines: None (the ZeroMQ mesh) or a Redis URL."""
    if request.param == "mesh":
        return None
    server = request.getfixturevalue("redis_server")
    url: str = server.url
    return url
