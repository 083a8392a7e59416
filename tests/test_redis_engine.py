"""What only the Redis engine has: node names held by a lease, frames signed with the
cookie, and Redis itself going away. (The cluster behaviour both engines share is tested
over each in tests/test_cluster.py and tests/test_cluster_pubsub.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

import whosthere
from tests.support.waiting import wait_until
from tests.test_cluster import FAST, cluster, converged, listed, up_peers
from whosthere import NodeNameTaken, NodeStartError
from whosthere.transport import codec, engine_url
from whosthere.transport.messages import (
    PUBSUB_INDEX,
    EngineFrame,
    GracefulPermdown,
    PeerCast,
    PeerHello,
)
from whosthere.transport.signing import seal, signing_key


def test_engine_and_listen_are_exclusive_and_the_url_is_checked():
    with pytest.raises(ValueError, match="exclusive"):
        whosthere.Node(engine="redis://127.0.0.1:6379/0", listen="tcp://127.0.0.1:0")
    with pytest.raises(ValueError, match="exclusive"):
        whosthere.Node(engine="redis://127.0.0.1:6379/0", peers=["tcp://127.0.0.1:7000"])
    with pytest.raises(ValueError, match="engine"):
        whosthere.Node(engine="tcp://127.0.0.1:6379")
    node = whosthere.Node(engine="redis://:hunter2@127.0.0.1:6379/1")
    assert "hunter2" not in repr(node.config) and node.engine == "redis://:***@127.0.0.1:6379/1"
    assert node.clustered and node.listen is None


def test_the_url_may_come_from_the_environment_and_listen_wins(monkeypatch):
    monkeypatch.setenv("WHOSTHERE_ENGINE_URL", "redis://:pw@10.0.0.5:6379/2")
    assert whosthere.Node().engine == "redis://:***@10.0.0.5:6379/2"
    node = whosthere.Node(listen="tcp://127.0.0.1:0")  # the mesh asked for: no engine
    assert node.engine is None and node.listen == "tcp://127.0.0.1:0"


def test_auth_from_the_url_and_the_password_on_no_command_line(owner):
    from tests.support.redis_server import RedisServer, available

    if not available():
        pytest.skip("redis-server or redis-py not installed (apt-get install redis-server)")
    server = RedisServer(password="s3cret-pw").start()
    try:
        with cluster(2, engine=server.url) as (a, b):
            a.presence.track(owner.pid, "room", "alice", {"v": 1})
            converged([a, b], {"room": {"alice": [1]}})
            assert "s3cret-pw" not in str(a.status())
            assert a.engine is not None and a.engine.startswith("unix://:***@")
            tree = [*psutil.Process(a.pid).children(recursive=True), psutil.Process(a.pid)]
            assert not any("s3cret-pw" in " ".join(p.cmdline()) for p in tree)
        wrong = server.url.replace("s3cret-pw", "wrong")
        with whosthere.Node(name="w", engine=wrong, **FAST) as lone:  # a netsplit: serves
            assert lone.status()["cluster"]["engine"]["lease"] == "alone"
            lone.presence.track(owner.pid, "room", "w", {"v": 0})
            assert listed(lone, "room") == {"w": [0]}
    finally:
        server.close()


def test_tls_from_a_rediss_url_with_a_cookie(owner):
    import shutil

    from tests.support.redis_server import RedisServer, available

    if not available() or shutil.which("openssl") is None:
        pytest.skip("redis-server, redis-py or openssl not installed")
    server = RedisServer(tls=True).start()
    try:
        with cluster(2, engine=server.url, cookie="secret") as (a, b):
            a.presence.track(owner.pid, "room", "alice", {"v": 1})
            b.presence.track(owner.pid, "room", "bob", {"v": 2})
            converged([a, b], {"room": {"alice": [1], "bob": [2]}})
            assert a.engine is not None and a.engine.startswith("rediss://127.0.0.1:")
    finally:
        server.close()


def test_a_second_node_under_a_taken_name_is_refused(redis_server, owner):
    with whosthere.Node(name="dup", engine=redis_server.url, **FAST) as first:
        first.presence.track(owner.pid, "room", "k", {"v": 1})
        started = time.monotonic()
        with pytest.raises(NodeNameTaken, match="taken on the Redis engine") as caught:
            whosthere.Node(name="dup", engine=redis_server.url, **FAST).start()
        assert isinstance(caught.value, NodeStartError)  # catchable as any start failure
        assert time.monotonic() - started >= FAST["down_period"]  # it waited for the lease
        assert listed(first, "room") == {"k": [1]}  # the first one serves on, unharmed
        assert first.status()["cluster"]["engine"]["lease"] == "held"


def test_a_node_restarted_under_its_name_waits_for_its_old_lease_then_starts(redis_server, owner):
    periods = {**FAST, "down_period": 2.0, "permdown_period": 6.0}
    with cluster(2, engine=redis_server.url, **periods) as nodes:
        nodes[1].presence.track(owner.pid, "room", "b", {"v": 2})
        converged(nodes, {"room": {"b": [2]}})
        os.killpg(nodes[0].pid, signal.SIGKILL)  # its lease stays live for down_period
        nodes[0].stop()
        started = time.monotonic()
        nodes[0] = whosthere.Node(name="n0", engine=redis_server.url, **periods).start()
        assert time.monotonic() - started > 1.0  # waited for the lease to lapse
        nodes[0].presence.track(owner.pid, "room", "a", {"v": 1})
        converged(nodes, {"room": {"a": [1], "b": [2]}})


def test_forged_or_unsigned_frames_are_dropped_logged_and_kill_nothing(redis_server, owner, capfd):
    with cluster(2, engine=redis_server.url, cookie="secret") as nodes:
        a, b = nodes
        a.presence.track(owner.pid, "room", "alice", {"v": 1})
        converged(nodes, {"room": {"alice": [1]}})
        goodbye = codec.encode(GracefulPermdown([a.name, 0]))  # would drop a's presences
        cast = codec.encode(PeerCast(a.name, 0, goodbye))
        channel = engine_url.node_channel(0, b.name)
        frames = [
            b"\x00not msgpack at all",
            cast,  # no envelope
            seal(None, a.name, cast),  # unsigned
            seal(signing_key("guessed"), a.name, cast),  # signed with another cookie
            codec.encode(EngineFrame(a.name, cast, b"\x00" * 32)),  # a made-up signature
            seal(signing_key("guessed"), "x", codec.encode(PeerHello("x", 1, "", []))),
            seal(signing_key("guessed"), a.name, codec.encode(PeerCast(a.name, PUBSUB_INDEX, b""))),
        ]
        client = redis_server.client()
        for frame in frames:
            client.publish(channel, frame)
            client.publish(engine_url.broadcast_channel(0), frame)
        engine = lambda: b.status()["cluster"]["engine"]  # noqa: E731
        wait_until(lambda: engine()["rejected"] == 2 * len(frames))
        a.presence.track(owner.pid, "room", "after", {"v": 2})  # both still replicate
        converged(nodes, {"room": {"after": [2], "alice": [1]}})
        assert all(x["restarts"] == 0 for n in nodes for x in n.status()["actors"])
        assert list(b.status()["cluster"]["peers"]) == ["n0"]  # no "x" joined
        assert "dropped a frame from Redis" in capfd.readouterr().err


def _load(node: whosthere.Node, index: int, stop: threading.Event, live: set, errors: list):
    """Owners tracking and untracking on `node` until stopped; `live` is what it holds."""
    owners = [os.getpid(), os.getppid(), 1]  # live processes: no presence leaves on an exit
    n = 0
    while not stop.is_set():
        pid = owners[n % len(owners)]
        key = f"u{index}-{n % 20}"
        try:
            if (pid, key) in live:
                node.presence.untrack(pid, "room", key)
                live.discard((pid, key))
            else:
                node.presence.track(pid, "room", key, {"v": index})
                live.add((pid, key))
        except Exception as exc:  # the test reports every failure
            errors.append(f"node {index}: {exc!r}")
        n += 1
        time.sleep(0.005)


def test_redis_killed_for_ten_seconds_is_a_netsplit_that_heals(redis_server):
    """Every node serves its own presences throughout; peers go down after down_period and
    come back; once healed every node lists exactly the live presences."""
    periods = {**FAST, "down_period": 1.0, "permdown_period": 30.0}
    with cluster(3, engine=redis_server.url, **periods) as nodes:
        stop = threading.Event()
        lives: list[set] = [set() for _ in nodes]
        errors: list[str] = []
        threads = [
            threading.Thread(target=_load, args=(node, i, stop, lives[i], errors))
            for i, node in enumerate(nodes)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)  # the load runs: tracks replicate through Redis
            redis_server.kill()
            killed = time.monotonic()
            for node in nodes:  # peers go down after down_period; each serves its own
                wait_until(lambda node=node: up_peers(node) == [], timeout=10)
            for i, node in enumerate(nodes):
                mine = {k for k in listed(node, "room") if k.startswith(f"u{i}-")}
                assert mine  # its own presences listed (the load goes on beside)
            wait_until(lambda: time.monotonic() - killed >= 10, timeout=15)
            redis_server.start()
            for node in nodes:  # and come back by themselves
                wait_until(lambda node=node: len(up_peers(node)) == 2, timeout=20)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert errors == []
        want: dict[str, list[int]] = {}
        for i, live in enumerate(lives):
            for _, key in sorted(live):
                want.setdefault(key, []).append(i)  # a key may be tracked by several owners
        converged(nodes, {"room": want}, timeout=20)
