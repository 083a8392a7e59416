"""Clients shared between threads: each thread's socket is closed by that thread only (ZeroMQ
sockets are not thread-safe), and a client made on first use is made once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import whosthere
from tests.support.waiting import wait_until
from whosthere import presence as presence_module
from whosthere.transport.messages import Ping

THREADS = 4


def hammer(call: Callable[[], Any], threads: int = THREADS) -> tuple[list[int], list, Callable]:
    """Threads making `call` until it raises NodeUnavailable. Returns (calls made per
    thread, unexpected errors, join)."""
    counts = [0] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            while True:
                call()
                counts[i] += 1
        except whosthere.NodeUnavailable:
            pass  # closed: what we wait for
        except BaseException as exc:  # e.g. ZMQError from a socket closed under our feet
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()

    def join() -> None:
        for w in workers:
            w.join(10)
        assert not any(w.is_alive() for w in workers), "a thread is still calling"

    return counts, errors, join


def test_closing_a_presence_while_threads_call_it_fails_their_next_call_cleanly():
    with whosthere.Node() as node:
        for _ in range(5):  # each round closes while some threads are mid-call
            presence = whosthere.Presence.connect(node.address, timeout=5)
            counts, errors, join = hammer(lambda p=presence: p.list("room"))
            wait_until(lambda c=counts: all(n >= 3 for n in c), what="every thread calling")
            presence.close()
            join()
            assert errors == []
            presence.close()  # idempotent


def test_closing_a_pubsub_while_threads_call_it_fails_their_next_call_cleanly():
    with whosthere.Node() as node:
        pubsub = whosthere.PubSub.connect(node.address)
        counts, errors, join = hammer(lambda: pubsub._conn.call(Ping()))  # its one channel
        wait_until(lambda: all(n >= 3 for n in counts), what="every thread calling")
        pubsub.close()
        join()
        assert errors == []


def test_sockets_of_threads_that_ended_are_closed():
    with whosthere.Node() as node:
        presence = whosthere.Presence.connect(node.address)
        sockets = []

        def call() -> None:
            presence.list("room")
            sockets.append(presence._shards[0].dealer().socket)

        workers = [threading.Thread(target=call) for _ in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert len(sockets) == THREADS and all(s.closed for s in sockets)
        presence.close()


@pytest.mark.parametrize("client", ["presence", "pubsub"])
def test_threads_asking_a_node_for_its_client_at_once_get_the_same_one(client):
    with whosthere.Node() as node:
        barrier = threading.Barrier(THREADS)
        got: list[Any] = []

        def ask() -> None:
            barrier.wait()
            got.append(getattr(node, client))

        workers = [threading.Thread(target=ask) for _ in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert len(got) == THREADS and len({id(c) for c in got}) == 1


class SlowPubSub(whosthere.PubSub):
    """Made slowly, as over a loaded machine: widens the window two threads could race in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)
        super().__init__(*args, **kwargs)


def test_threads_subscribing_at_once_share_one_pubsub(monkeypatch):
    monkeypatch.setattr(presence_module, "PubSub", SlowPubSub)
    with whosthere.Node() as node:
        presence = node.presence
        barrier = threading.Barrier(THREADS)
        subs: list[Any] = []

        def subscribe(i: int) -> None:
            barrier.wait()
            subs.append(presence.subscribe(f"room:{i}"))

        workers = [threading.Thread(target=subscribe, args=(i,)) for i in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        try:
            assert len(subs) == THREADS and len({id(s._pubsub) for s in subs}) == 1
        finally:
            for sub in subs:
                sub.close()


def test_a_stopped_node_makes_no_new_client():
    node = whosthere.Node().start()
    node.stop()
    for client in ("presence", "pubsub"):
        with pytest.raises(whosthere.NodeUnavailable, match="is stopped"):
            getattr(node, client)
