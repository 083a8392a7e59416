"""The process tree: start, restarts, restart intensity, stop, and nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import whosthere
from tests.support.nodes import actor_pid, alive, node_pids
from tests.support.presences import MetasPresence
from tests.support.processes import sleeper
from tests.support.waiting import wait_until
from whosthere.client import lookup
from whosthere.transport import runtime_dir
from whosthere.transport.messages import Ping
from whosthere.transport.sockets import Dealer

ACTORS = ["pubsub", "shard.0", "fetcher.0", "fetcher.1"]
ALL_KINDS = [*ACTORS, "client"]  # the client actor runs when handle_metas is defined


def test_status_reports_the_tree():
    with whosthere.Node(name="tree") as node:
        status = node.status()
        assert status["name"] == "tree"
        assert status["address"] == node.address
        assert status["supervisor"]["pid"] == node.pid
        assert [a["name"] for a in status["actors"]] == ACTORS
        for actor in status["actors"]:
            assert actor["restarts"] == 0
            assert alive({actor["pid"]})
        assert status["links"]["processes"] == 0


@pytest.mark.parametrize("name", ALL_KINDS)
def test_an_actor_killed_with_sigkill_is_restarted_and_serves_again(name):
    with whosthere.Node(presence=MetasPresence) as node:
        old = actor_pid(node, name)
        os.kill(old, signal.SIGKILL)
        wait_until(
            lambda: (p := actor_pid(node, name)) != old and alive({p}), what=f"{name} restarted"
        )
        entry = next(a for a in node.status()["actors"] if a["name"] == name)
        assert entry["restarts"] == 1
        dealer = Dealer(lookup(node.address).endpoints[name], timeout=5)
        try:
            assert dealer.call(Ping()) == entry["pid"]
        finally:
            dealer.close()
        owner = sleeper()
        try:  # and the node as a whole serves again
            with node.presence.subscribe("metas:after") as reports:
                wait_until(lambda: _tracks(node, owner.pid), what="track after the restart")
                msg = reports.get(timeout=5)
                assert msg is not None and "u" in msg.payload["presences"]
        finally:
            owner.kill()
            owner.wait()


def _tracks(node: whosthere.Node, pid: int) -> bool:
    try:
        node.presence.track(pid, "after", "u", {})
    except whosthere.NodeUnavailable:
        return False  # a request sent to the old incarnation
    return "u" in node.presence.list("after")


def test_exceeding_the_restart_intensity_stops_the_node_with_a_clear_error():
    node = whosthere.Node(name="fragile", max_restarts=2, max_seconds=30).start()
    try:
        pids = node_pids(node)
        for _ in range(3):
            old = actor_pid(node, "pubsub")
            os.kill(old, signal.SIGKILL)
            if _ < 2:
                wait_until(lambda o=old: actor_pid(node, "pubsub") not in (o, None), what="restart")
                pids |= node_pids(node)
        with pytest.raises(
            whosthere.RestartIntensityExceeded,
            match=r"^actor 'pubsub' exited with code -9: 3 restarts within 30 s exceed "
            r"max_restarts=2; node 'fragile' stopped$",
        ):
            node.wait(timeout=5)
        assert not alive(pids)
        assert node.runtime_dir is not None and not node.runtime_dir.exists()
        with pytest.raises(whosthere.NodeUnavailable):
            node.status()
    finally:
        node.stop()


def test_stop_ends_every_process_within_two_seconds():
    node = whosthere.Node().start()
    pids = node_pids(node)
    started = time.monotonic()
    node.stop()
    assert time.monotonic() - started < 2.0
    assert not alive(pids)
    assert node.runtime_dir is not None and not node.runtime_dir.exists()
    node.stop()  # twice is fine


def test_killing_the_supervisor_takes_its_actors_and_a_later_start_cleans_up():
    node = whosthere.Node().start()
    try:
        pids = node_pids(node)
        os.kill(node.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: not alive(pids), timeout=2.0, what="the node's processes to exit")
        assert time.monotonic() - killed < 2.0
        assert node.runtime_dir is not None and node.runtime_dir.exists()  # stale, not leaked:
        # (the kernel drops the lock once the supervisor's last thread is gone, a moment after
        # its main thread shows as a zombie)
        wait_until(lambda: not runtime_dir.is_live(node.runtime_dir), what="the lock released")
        with whosthere.Node():
            assert not node.runtime_dir.exists()  # a later start removed it
    finally:
        node.stop()


def test_the_node_stops_when_the_process_that_started_it_dies():
    code = (
        "import sys, whosthere\n"
        "node = whosthere.Node().start()\n"
        "s = node.status()\n"
        "print(node.runtime_dir, s['supervisor']['pid'], *[a['pid'] for a in s['actors']],"
        " flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as owner:
        assert owner.stdout is not None
        path, *pids = owner.stdout.readline().split()
        owner.kill()
        owner.wait()
        wait_until(
            lambda: not alive({int(p) for p in pids}), timeout=3.0, what="the orphaned node to stop"
        )
        wait_until(lambda: not os.path.exists(path), timeout=3.0, what="its directory removed")


def test_a_node_that_cannot_boot_in_time_raises_and_leaves_nothing():
    before = set(os.listdir(runtime_dir.base_dir()))
    with pytest.raises(whosthere.NodeStartError, match=r"did not report ready in time"):
        whosthere.Node(start_timeout=0.001).start()
    assert set(os.listdir(runtime_dir.base_dir())) == before


def test_calls_on_a_stopped_node_raise_node_unavailable():
    node = whosthere.Node(call_timeout=0.5)
    with pytest.raises(whosthere.NodeUnavailable, match="is not started"):
        node.status()
    node.start()
    address = node.address
    node.stop()
    with pytest.raises(whosthere.NodeUnavailable, match="did not answer Lookup within 0.5 s"):
        lookup(address, timeout=0.5)


def test_tracker_options_are_checked_with_phoenix_rules():
    node = whosthere.Node(broadcast_period=0.1, max_silent_periods=2)
    assert node.tracker_options["down_period"] == pytest.approx(0.4)
    with pytest.raises(
        ValueError,
        match=r"^down_period \(0.1 s\) must be at least twice "
        r"broadcast_period \(1.5 s\)$",
    ):
        whosthere.Node(down_period=0.1)
    with pytest.raises(
        ValueError,
        match=r"^permdown_period \(100 s\) must be greater than "
        r"down_period \(1200 s\)$",
    ):
        whosthere.Node(down_period=1200, permdown_period=100)
    with pytest.raises(TypeError, match=r"^unknown Node option\(s\): bogus$"):
        whosthere.Node(bogus=1)


def test_a_malformed_address_is_node_unavailable():
    with pytest.raises(
        whosthere.NodeUnavailable, match=r"^'foo' is not an ipc:// address: clients"
    ):
        whosthere.Presence.connect("foo")
