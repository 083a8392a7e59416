"""Clients outlive a node restart at a fixed address (DESIGN section 12).

While the node is gone, calls raise `NodeUnavailable`; a subscription raises it once and can
be read on; when a node serves the address again, the presences the client had tracked for
its own process are tracked again (same metas), and each subscription raises `MessagesLost`
once, then yields the new node's messages. Real nodes, stopped and SIGKILLed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import whosthere
import whosthere.aio
from tests.support.waiting import wait_until, wait_until_async
from whosthere.admin import node_status
from whosthere.client import lookup
from whosthere.revival import probe_period


@pytest.fixture
def address() -> Iterator[str]:
    place = Path(tempfile.mkdtemp(prefix="wr-", dir="/tmp"))
    yield f"ipc://{place}/node.sock"
    shutil.rmtree(place, ignore_errors=True)


def metas(listed: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "phx_ref"} for m in listed[key]["metas"]]


def end(node: whosthere.Node, how: str) -> None:
    if how == "stop":
        node.stop()
    else:
        os.kill(node.pid, signal.SIGKILL)
        wait_until(lambda: not node.alive, what="the supervisor gone")
        node.stop()  # the rest of the tree and the files


@pytest.mark.parametrize("how", ["stop", "sigkill"])
def test_a_sync_client_outlives_a_node_restart(address: str, how: str):
    node = whosthere.Node(address=address).start()
    try:
        presence = whosthere.Presence.connect(address)
        other = whosthere.Presence.connect(address)  # a second client of the same process
        tab = presence.owner()
        presence.track(tab, "room", "alice", {"n": 1})
        presence.update(tab, "room", "alice", {"n": 2})
        presence.track(os.getpid(), "room", "me", {"pid": True})
        presence.track(tab, "gone", "alice", {})
        presence.untrack(tab, "gone", "alice")  # untracked: not tracked again
        sub = presence.subscribe("room")
        end(node, how)
        with pytest.raises(whosthere.NodeUnavailable):
            presence.list("room")
        with pytest.raises(whosthere.NodeUnavailable):  # once, after diffs still queued
            while sub.get(timeout=5) is not None:
                pass
        assert sub.get(timeout=0.2) is None  # then it can be read on

        node = whosthere.Node(address=address).start()
        listed = wait_until(
            lambda: _list_when_back(presence, "room"), timeout=10, what="presences back"
        )
        assert metas(listed, "alice") == [{"n": 2}]  # the meta as it was, a new phx_ref
        assert metas(listed, "me") == [{"pid": True}]
        assert presence.list("gone") == {}
        assert other.list("room").keys() == {"alice", "me"}
        with pytest.raises(whosthere.MessagesLost):
            sub.get(timeout=5)  # once: the node restarted
        presence.track(tab, "room", "bob", {})
        joined: list[str] = []  # the new node's diffs: maybe the presences tracked again, bob
        while "bob" not in joined:
            msg = sub.get(timeout=5)
            assert msg is not None
            joined += msg.payload["joins"]
        assert set(joined) <= {"alice", "me", "bob"}
        with pytest.raises(whosthere.AlreadyTracked):  # tracked again already, as said
            presence.track(tab, "room", "alice", {"n": 3})
        sub.close()
        tab.close()
        assert presence.list("room").keys() == {"me"}
        presence.close()
        other.close()
    finally:
        node.stop()


def _list_when_back(presence: whosthere.Presence, topic: str) -> dict[str, Any] | None:
    try:
        listed = presence.list(topic)
    except whosthere.NodeUnavailable:
        return None
    return listed if len(listed) == 2 else None


def test_an_asyncio_client_outlives_a_node_restart(address: str):
    async def main() -> None:
        node = whosthere.Node(address=address).start()
        try:
            presence = await whosthere.aio.connect(address)
            tab = presence.owner()
            await presence.track(tab, "room", "alice", {"n": 1})
            async with presence.subscribe("room") as sub:
                got: list[Any] = []

                async def read() -> None:
                    while True:
                        try:
                            msg = await sub.get()
                        except (whosthere.NodeUnavailable, whosthere.MessagesLost) as exc:
                            got.append(type(exc).__name__)
                            continue
                        got.append(msg)

                reader = asyncio.create_task(read())
                await asyncio.sleep(0.1)
                got.clear()
                await asyncio.to_thread(node.stop)
                await wait_until_async(lambda: "NodeUnavailable" in got)
                with pytest.raises(whosthere.NodeUnavailable):
                    await presence.list("room")
                node = await asyncio.to_thread(whosthere.Node(address=address).start)
                await wait_until_async(lambda: "MessagesLost" in got)
                listed = await presence.list("room")  # heard once this loop tracked again
                assert listed["alice"]["metas"][0]["n"] == 1
                await presence.track(tab, "room", "bob", {})
                await wait_until_async(
                    lambda: any(not isinstance(g, str) and "bob" in g.payload["joins"] for g in got)
                )
                assert got.count("NodeUnavailable") == 1 and got.count("MessagesLost") == 1
                reader.cancel()
            await tab.close()
            await presence.close()
        finally:
            await asyncio.to_thread(node.stop)

    asyncio.run(main())


def in_child(check: Any) -> bool:
    """Whether `check()` returns True in a forked child of this process."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    try:
        return os.read(r, 1) == b"\x00"
    finally:
        os.close(r)
        os.waitpid(child, 0)


def test_a_client_made_before_fork_connects_anew_in_the_child(address: str):
    with whosthere.Node(address=address):
        presence = whosthere.Presence.connect(address)
        presence.track(os.getpid(), "room", "parent", {})

        def child() -> bool:
            presence.track(os.getpid(), "room", "child", {})
            return presence.list("room").keys() == {"parent", "child"}

        assert in_child(child)
        wait_until(lambda: presence.list("room").keys() == {"parent"}, what="the child's leave")
        presence.close()


def test_threads_are_not_left_behind_by_clients_that_closed(address: str):
    with whosthere.Node(address=address) as node:
        presence = whosthere.Presence.connect(address)
        presence.track(os.getpid(), "room", "me", {})
        presence.close()
        node.stop()
        wait_until(
            lambda: not [t for t in threading.enumerate() if t.name == "whosthere-revival"],
            what="the revival thread gone once nobody listens",
        )


def test_an_asyncio_client_made_before_fork_connects_anew_in_the_child(address: str):
    with whosthere.Node(address=address):
        made = whosthere.aio.AsyncPresence(lookup(address))  # made in the parent, unused

        async def main() -> bool:
            await made.track(os.getpid(), "room", "child", {})
            return (await made.list("room")).keys() == {"child"}

        assert in_child(lambda: asyncio.run(main()))
        asyncio.run(made.close())


def test_links_are_made_again_on_a_node_back_at_the_address(address: str):
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    node = whosthere.Node(address=address).start()
    try:
        links = whosthere.Links(address)
        links.link_many([p.pid for p in sleepers])
        node.stop()
        sleepers[0].kill()  # dies while no node watches it
        sleepers[0].wait()
        node = whosthere.Node(address=address).start()
        got = links.get(timeout=10)  # reported once the links are made again
        assert got is not None and got.pid == sleepers[0].pid
        sleepers[1].kill()  # and the new node watches the others
        sleepers[1].wait()
        got = links.get(timeout=10)
        assert got is not None and got.pid == sleepers[1].pid
        assert links.linked == {sleepers[2].pid}
        links.close()
    finally:
        node.stop()
        for p in sleepers:
            p.kill()
            p.wait()


def test_asyncio_links_are_made_again_on_a_node_back_at_the_address(address: str):
    sleeper = subprocess.Popen(["sleep", "60"])

    async def main() -> None:
        node = whosthere.Node(address=address).start()
        try:
            async with whosthere.aio.links(address) as links:
                await links.link(sleeper.pid)
                await asyncio.to_thread(node.stop)
                node = await asyncio.to_thread(whosthere.Node(address=address).start)
                await wait_until_async(lambda: _linked_on(address, sleeper.pid), 10)
                sleeper.kill()
                got = await links.get(timeout=10)
                assert got is not None and got.pid == sleeper.pid
        finally:
            await asyncio.to_thread(node.stop)

    try:
        asyncio.run(main())
    finally:
        sleeper.kill()
        sleeper.wait()


def _linked_on(address: str, pid: int) -> bool:
    """Whether the node at `address` watches processes for a linker (the relink landed)."""
    try:
        status = node_status(address, timeout=1)
    except whosthere.NodeUnavailable:
        return False
    return bool(status["links"]["processes"] >= 1)


def test_a_node_gone_for_good_is_tried_less_and_less_often():
    assert probe_period(0.0) == probe_period(4.9) == 0.1
    assert probe_period(5.0) == probe_period(59.0) == 0.25
    assert probe_period(60.0) == probe_period(3600.0) == 1.0
