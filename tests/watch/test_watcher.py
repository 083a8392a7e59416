"""ProcessWatcher on its own: one suite per mechanism (pidfd, sweep)."""

from __future__ import annotations

import select
import signal
import time

import pytest

from tests.support.processes import sleeper
from whosthere.watch import ProcessWatcher, start_time
from whosthere.watch.watcher import HAVE_PIDFD

MECHANISMS = [pytest.param({"use_pidfd": False}, id="sweep")]
if HAVE_PIDFD:
    MECHANISMS.insert(0, pytest.param({}, id="pidfd"))
    MECHANISMS.append(pytest.param({"max_pidfds": 2}, id="pidfd-overflow"))


def collect_until(watcher: ProcessWatcher, count: int, timeout: float = 5.0) -> list:
    got: list = []
    poller = select.poll()
    poller.register(watcher.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        poller.poll(50)
        got += watcher.collect()
    return got


@pytest.fixture(params=MECHANISMS)
def watcher(request):
    w = ProcessWatcher(**request.param)
    yield w
    w.close()


def test_every_exit_is_reported_once_however_it_exits(watcher):
    procs = [sleeper() for _ in range(6)]
    try:
        keys = [(p.pid, start_time(p.pid)) for p in procs]
        for key in keys:
            watcher.watch(key)
            watcher.watch(key)  # twice is once
        procs[0].kill()
        procs[1].terminate()
        procs[2].send_signal(signal.SIGUSR1)  # (SIGINT may be ignored in the background)
        procs[3].send_signal(signal.SIGKILL)
        for p in procs[:4]:
            p.wait()  # reaped: gone entirely
        procs[4].kill()  # left a zombie until the end
        got = collect_until(watcher, 5)
        assert sorted(got) == sorted(keys[:5])
        assert collect_until(watcher, 1, timeout=0.3) == []
        assert len(watcher) == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_already_dead_and_reused_pids_are_reported_at_once(watcher):
    proc = sleeper()
    key = (proc.pid, start_time(proc.pid))
    proc.kill()
    proc.wait()
    watcher.watch(key)
    alive = sleeper()
    try:
        wrong = (alive.pid, start_time(alive.pid) - 1)  # that pid, another process
        watcher.watch(wrong)
        assert sorted(collect_until(watcher, 2)) == sorted([key, wrong])
    finally:
        alive.kill()
        alive.wait()


def test_unwatched_processes_are_not_reported(watcher):
    procs = [sleeper() for _ in range(3)]
    keys = [(p.pid, start_time(p.pid)) for p in procs]
    for key in keys:
        watcher.watch(key)
    watcher.unwatch(keys[0])
    for p in procs:
        p.kill()
        p.wait()
    assert sorted(collect_until(watcher, 2)) == sorted(keys[1:])
    assert collect_until(watcher, 1, timeout=0.3) == []


@pytest.mark.skipif(not HAVE_PIDFD, reason="pidfd only")
def test_overflow_moves_back_to_pidfds_as_they_free_up():
    w = ProcessWatcher(max_pidfds=2)
    procs = [sleeper() for _ in range(5)]
    try:
        for p in procs:
            w.watch((p.pid, start_time(p.pid)))
        assert w.stats() == {"pidfd": 2, "sweep": 3}
        procs[0].kill()
        procs[0].wait()
        assert len(collect_until(w, 1)) == 1
        assert w.stats() == {"pidfd": 2, "sweep": 2}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        w.close()


@pytest.mark.skipif(not HAVE_PIDFD, reason="pidfds only")
def test_without_sweeping_past_the_budget_processes_are_simply_not_watched():
    """A shard's own watcher (`sweep=False`) holds pidfds up to its budget and nothing
    more: no sweeper thread; the supervisor tells the others' exits."""
    w = ProcessWatcher(max_pidfds=1, sweep=False)
    procs = [sleeper() for _ in range(2)]
    try:
        keys = [(p.pid, start_time(p.pid)) for p in procs]
        for key in keys:
            w.watch(key)
        assert w.stats() == {"pidfd": 1, "sweep": 0} and keys[1] not in w
        for p in procs:
            p.kill()
            p.wait()
        assert collect_until(w, 2, timeout=1.0) == [keys[0]]
    finally:
        for p in procs:
            p.kill()
            p.wait()
        w.close()
