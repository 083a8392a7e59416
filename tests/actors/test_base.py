"""The actor base: calls, casts, failures, bad frames, timers, clean stop."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from tests.support.actors import Boom, Count, Echo, Later, Nap, Trace, Work, start_echo_actor
from tests.support.waiting import wait_until
from whosthere.errors import ActorError, MalformedFrame, NodeUnavailable, NotTracked
from whosthere.transport import codec
from whosthere.transport.messages import Failed, Ok, Ping, Subscribe
from whosthere.transport.sockets import Dealer, DealerPerThread, bind, socket, tcp_endpoint


def free_tcp_endpoint() -> str:
    probe = socket(zmq.ROUTER)
    try:
        return bind(probe, tcp_endpoint("127.0.0.1"))
    finally:
        probe.close()


@pytest.fixture(params=["ipc", "tcp"])
def echo(request):
    """An EchoActor; every test runs over each transport."""
    with tempfile.TemporaryDirectory(prefix="wt-a-", dir="/tmp") as tmp:
        marker = Path(tmp) / "stopped"
        endpoint = free_tcp_endpoint() if request.param == "tcp" else ""
        proc, endpoint = start_echo_actor(Path(tmp), endpoint, stop_marker=str(marker))
        dealer = Dealer(endpoint, timeout=5)
        try:
            wait_until(lambda: _pings(dealer), timeout=10, what="echo actor")
            yield proc, dealer, marker
        finally:
            dealer.close()
            proc.kill()
            proc.wait()


def tmp_of(proc) -> str:
    return json.loads(proc.args[-1])["runtime_dir"]


def _pings(dealer: Dealer) -> bool:
    try:
        return bool(dealer.call(Ping(), timeout=0.2))
    except NodeUnavailable:
        return False


def test_call_returns_the_reply_and_casts_are_handled_in_order(echo):
    _, dealer, _ = echo
    assert dealer.call(Echo({"a": [1, "x"]})) == {"a": [1, "x"]}
    for i in range(100):
        dealer.cast(Echo(i))
    assert dealer.call(Count()) == 101


def test_a_handler_that_raises_is_logged_and_the_actor_keeps_serving(echo):
    proc, dealer, _ = echo
    with pytest.raises(ActorError, match=r"^ZeroDivisionError: division by zero$") as info:
        dealer.call(Boom("bug"))
    assert "ZeroDivisionError" in (info.value.remote_traceback or "")
    assert dealer.call(Echo(1)) == 1
    log = Path(tmp_of(proc)) / "echo.log"
    text = wait_until(
        lambda: "ZeroDivisionError" in (t := log.read_text()) and t,
        what="traceback in the actor's log",
    )
    assert "echo: handler for Boom raised\nTraceback (most recent call last)" in text


def test_an_expected_error_reaches_the_caller_as_its_own_class(echo):
    _, dealer, _ = echo
    with pytest.raises(NotTracked, match="^nothing tracked here$"):
        dealer.call(Boom("refuse"))


def test_a_call_that_times_out_raises_and_its_late_reply_is_ignored(echo):
    _, dealer, _ = echo
    with pytest.raises(NodeUnavailable, match=r"did not answer Nap within 0.2 s"):
        dealer.call(Nap(0.6), timeout=0.2)
    assert dealer.call(Echo("after")) == "after"


def test_a_deferred_reply_from_a_timer(echo):
    _, dealer, _ = echo
    assert dealer.call(Later(0.05)) == "later"


def test_long_work_lets_timers_and_messages_in_between_its_slices(echo):
    """Long work (a merge of a peer's whole state) must starve neither timers (heartbeats)
    nor calls: both are served between its slices."""
    _, dealer, _ = echo
    dealer.cast(Work(10, 0.03))
    wait_until(lambda: dealer.call(Trace()), what="work started")
    assert dealer.call(Echo("meanwhile")) == "meanwhile"
    trace = wait_until(
        lambda: (t := dealer.call(Trace())) and t[-1] == ["slice", 9] and t, what="work done"
    )
    kinds = [t[0] for t in trace]
    assert [t for t in trace if t[0] == "slice"] == [["slice", i] for i in range(10)]
    assert trace.index(["echo", "meanwhile"]) < trace.index(["slice", 9]), "served mid-work"
    assert kinds.count("tick") >= 5, "timers ran between the slices"


def test_malformed_frames_are_rejected_and_the_actor_lives_on(echo):
    _, dealer, _ = echo
    raw = socket(zmq.DEALER)
    raw.connect(dealer.endpoint)
    try:
        raw.send_multipart([b"r1", b"\xc1garbage"])
        ref, body = raw.recv_multipart()
        reply = codec.decode(body)
        assert ref == b"r1"
        assert isinstance(reply, Failed)
        assert reply.kind == "MalformedFrame"
        raw.send_multipart([b"", b"not msgpack either \xc1"])  # a cast: dropped quietly
        raw.send_multipart([b"a", b"b", b"c", b"d"])  # wrong frame count: dropped
        raw.send(b"single")
        with pytest.raises(MalformedFrame, match="^echo does not handle Subscribe$"):
            dealer.call(Subscribe(["t"], "i"))
        raw.send_multipart([b"r2", codec.encode(Ping())])
        ref, body = raw.recv_multipart()
        assert ref == b"r2"
        assert isinstance(codec.decode(body), Ok)
    finally:
        raw.close()


def test_sigterm_stops_the_actor_cleanly(echo):
    proc, _, marker = echo
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert marker.read_text() == "stopped"


def test_nobody_at_the_endpoint_is_node_unavailable():
    conn = DealerPerThread("ipc:///tmp/whosthere-nobody-here.sock", timeout=0.1, what="nobody")
    with pytest.raises(NodeUnavailable, match="^nobody at ipc:///tmp/whosthere-nobody-here.sock"):
        conn.call(Ping())
    conn.close()
    with pytest.raises(NodeUnavailable, match="closed"):
        conn.call(Ping())


def test_a_call_in_flight_to_an_actor_that_dies_fails_at_once(echo):
    """As an Erlang call whose callee dies: not after the timeout, while a restarted actor
    has long been serving. A call made after the death waits for the next actor."""
    proc, dealer, _ = echo
    ref = dealer.request(Nap(30), time.monotonic() + 30, 30)
    started = time.monotonic()
    proc.kill()
    with pytest.raises(NodeUnavailable, match="went away with Nap in flight"):
        dealer.result(ref, Nap(30), time.monotonic() + 30, 30)
    assert time.monotonic() - started < 2.0  # a smoke check: the timeout is 30 s
    proc.wait()
    with pytest.raises(NodeUnavailable, match="did not answer Echo within 0.3 s"):
        dealer.call(Echo(1), timeout=0.3)  # nobody serves: this one waits out its timeout


def test_replies_that_came_before_the_actor_died_are_still_read(echo):
    proc, dealer, _ = echo
    deadline = time.monotonic() + 10
    first = dealer.request(Echo("a"), deadline, 10)
    wait_until(lambda: dealer.socket.poll(0), what="the first reply queued")
    second = dealer.request(Nap(30), deadline, 10)
    proc.kill()
    proc.wait()
    assert dealer.result(first, Echo("a"), deadline, 10) == "a"
    with pytest.raises(NodeUnavailable):
        dealer.result(second, Nap(30), deadline, 10)


def test_an_asyncio_call_in_flight_to_an_actor_that_dies_fails_at_once(echo):
    import asyncio

    from whosthere.aio.dealer import AsyncDealer

    proc, sync_dealer, _ = echo

    async def main() -> float:
        dealer = AsyncDealer(sync_dealer.endpoint, timeout=30, what="echo")
        try:
            assert await dealer.call(Echo("up")) == "up"
            napping = asyncio.ensure_future(dealer.call(Nap(30)))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            proc.kill()
            with pytest.raises(NodeUnavailable, match="went away with calls in flight"):
                await napping
            return time.monotonic() - started
        finally:
            await dealer.aclose()

    assert asyncio.run(main()) < 2.0  # a smoke check: the timeout is 30 s
    proc.wait()


def test_a_call_after_the_actor_restarted_reaches_the_new_one(echo):
    """A drop heard while the dealer was idle is not taken for the next call's."""
    proc, dealer, marker = echo
    assert dealer.call(Echo(1)) == 1
    proc.kill()
    proc.wait()
    tmp = Path(tmp_of(proc))
    again, _ = start_echo_actor(tmp, dealer.endpoint, stop_marker=str(marker))
    try:
        time.sleep(0.1)  # idle past PEER_READ_AFTER_S while the new actor starts
        assert dealer.call(Echo("again"), timeout=10) == "again"
    finally:
        again.kill()
        again.wait()
