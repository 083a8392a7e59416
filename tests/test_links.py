"""Links: the supervisor tells a linker when a watched OS process exits, however it exits."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

import whosthere
from tests.support.processes import python, sleeper
from tests.support.waiting import wait_until
from whosthere.watch import start_time
from whosthere.watch.watcher import HAVE_PIDFD

WATCHERS = [pytest.param(None, id="pidfd" if HAVE_PIDFD else "sweep")]
if HAVE_PIDFD:
    WATCHERS.append(pytest.param(0, id="sweep"))


@pytest.fixture(scope="module", params=WATCHERS)
def node(request):
    with whosthere.Node(max_pidfds=request.param) as node:
        yield node


@pytest.fixture
def links(node):
    with node.links() as links:
        yield links


def expect_exits(links: whosthere.Links, pids: list[int], timeout: float = 5.0) -> None:
    """Each pid is reported exactly once, and nothing else."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < len(pids) and time.monotonic() < deadline:
        exit_ = links.get(timeout=max(0.0, deadline - time.monotonic()))
        if exit_ is not None:
            got.append(exit_.pid)
    assert sorted(got) == sorted(pids)
    assert links.get(timeout=0.3) is None, "an exit was reported twice"


def grandchild() -> int:
    """A process that is not this test's child (its parent exited; init adopted it)."""
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess; p = subprocess.Popen(['sleep', '60']); print(p.pid)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
    return pid


@pytest.mark.parametrize("how", ["sigkill", "sigterm", "normal exit"])
def test_a_linked_child_is_reported_once_however_it_exits(links, how):
    code = "import sys, time; sys.stdin.read(); time.sleep(0.01)"
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE) as proc:
        links.link(proc.pid)
        if how == "sigkill":
            proc.kill()
        elif how == "sigterm":
            proc.terminate()
        else:
            assert proc.stdin is not None
            proc.stdin.close()
        expect_exits(links, [proc.pid])


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_linked_non_child_is_reported_once(links, how):
    pid = grandchild()
    try:
        links.link(pid)
        os.kill(pid, how)
        expect_exits(links, [pid])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_an_already_dead_pid_is_reported_at_once(links):
    proc = sleeper()
    proc.kill()
    proc.wait()
    links.link(proc.pid)
    expect_exits(links, [proc.pid])


def test_a_zombie_counts_as_exited(links):
    proc = sleeper()
    proc.kill()
    wait_until(lambda: start_time(proc.pid) is None, what="zombie")
    try:
        links.link(proc.pid)
        expect_exits(links, [proc.pid])
    finally:
        proc.wait()


def test_a_pid_now_held_by_another_process_is_not_mistaken_for_the_linked_one(links):
    proc = sleeper()
    try:
        real = start_time(proc.pid)
        assert real is not None
        links.link(proc.pid, real - 1)  # the process we meant started earlier: it is gone
        expect_exits(links, [proc.pid])
        links.link(proc.pid)  # the process that holds the pid now is watched on its own
        assert links.get(timeout=0.3) is None
        proc.kill()
        expect_exits(links, [proc.pid])
    finally:
        proc.kill()
        proc.wait()


NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs a writable ns_last_pid")
def test_a_reused_pid_is_not_mistaken_for_the_process_that_died(links):
    first = sleeper()
    pid, first_start = first.pid, start_time(first.pid)
    links.link(pid)
    first.kill()
    first.wait()
    expect_exits(links, [pid])
    for _ in range(20):  # another process may take the pid first; try again
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        second = sleeper()
        if second.pid == pid:
            break
        second.kill()
        second.wait()
    else:
        pytest.skip("could not get the pid reused")
    try:
        assert start_time(pid) != first_start
        links.link(pid, first_start)  # the dead one: reported, the new one untouched
        expect_exits(links, [pid])
        links.link(pid)
        assert links.get(timeout=0.3) is None
    finally:
        second.kill()
        second.wait()
    expect_exits(links, [pid])


def test_unlinked_processes_are_not_reported(links):
    procs = [sleeper() for _ in range(3)]
    for p in procs:
        links.link(p.pid)
    links.unlink(procs[0].pid)
    links.unlink(12345678)  # never linked: no-op
    for p in procs:
        p.kill()
        p.wait()
    expect_exits(links, [p.pid for p in procs[1:]])


def test_every_linker_of_a_process_hears_of_its_exit(node):
    proc = sleeper()
    with node.links() as a, node.links() as b:
        a.link(proc.pid)
        b.link(proc.pid)
        proc.kill()
        proc.wait()
        expect_exits(a, [proc.pid])
        expect_exits(b, [proc.pid])


def test_many_processes_beyond_the_pidfd_budget_are_never_missed():
    with whosthere.Node(max_pidfds=5) as node, node.links() as links:
        procs = [sleeper() for _ in range(40)]
        try:
            links.link_many([p.pid for p in procs])
            assert node.status()["links"]["processes"] == 40
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
            expect_exits(links, [p.pid for p in procs], timeout=10)
            wait_until(lambda: node.status()["links"]["processes"] == 0, what="links dropped")
        finally:
            for p in procs:
                p.kill()
                p.wait()


def test_links_of_a_linker_that_died_are_dropped(node):
    target = sleeper()
    code = (
        "import sys, whosthere\n"
        f"links = whosthere.Links({node.address!r})\n"
        f"links.link({target.pid})\n"
        "print('linked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    before = node.status()["links"]["processes"]
    with python(code, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as linker:
        assert linker.stdout is not None
        assert linker.stdout.readline().strip() == "linked"
        assert node.status()["links"]["processes"] == before + 1
        linker.kill()
    target.kill()
    target.wait()
    wait_until(lambda: node.status()["links"]["processes"] == before, what="links dropped")
    assert node.status()["links"]["linkers"] == 0


def test_bad_link_requests_get_a_typed_error_and_the_supervisor_serves_on(node, links):
    from whosthere.transport.messages import Link

    with pytest.raises(
        whosthere.MalformedFrame, match=r"^a linked process is \[pid in 1\.\.4194304, start_time\]"
    ):
        links._dealer.call(Link([["not a pid", 1]]))
    with pytest.raises(TypeError, match="pid must be a positive int"):
        links.link("123")  # type: ignore[arg-type]
    assert node.status()["name"] == node.name


def test_sigkill_to_notice_latency_smoke(links):
    """A wide-margin smoke check; the real figures come from bench/."""
    samples = []
    for _ in range(20):
        proc = sleeper()
        links.link(proc.pid)
        started = time.perf_counter()
        proc.kill()
        exit_ = links.get(timeout=5)
        samples.append(time.perf_counter() - started)
        assert exit_ is not None and exit_.pid == proc.pid
        proc.wait()
    assert statistics.median(samples) < 0.5


def test_closing_links_unlinks_everything_at_once(node):
    procs = [sleeper() for _ in range(50)]
    try:
        before = node.status()["links"]["processes"]
        links = node.links()
        links.link_many([p.pid for p in procs])
        assert node.status()["links"]["processes"] == before + 50
        links.close()
        assert node.status()["links"]["processes"] == before
    finally:
        for p in procs:
            p.kill()
            p.wait()
