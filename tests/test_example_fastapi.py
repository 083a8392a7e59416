"""examples/fastapi: a FastAPI app under `uvicorn --workers 2` (and gunicorn `--preload`)
beside one node keeps "who is there" true through closed sockets, a SIGKILLed worker and a
node restart (DESIGN 12).

Real processes: the node (at a fixed address), uvicorn and its two workers, and real
WebSocket clients. After each step, the node's list must equal the sockets still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

import whosthere
from tests.support.js import free_port, process_group, wait_for_port
from tests.support.waiting import wait_until_async

APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "fastapi"
SOCKETS = 16

pytest.importorskip("fastapi")


@pytest.fixture
def address() -> Iterator[str]:
    place = Path(tempfile.mkdtemp(prefix="wf-", dir="/tmp"))
    yield f"ipc://{place}/whosthere.sock"
    shutil.rmtree(place, ignore_errors=True)


class Client:
    """One browser tab: its socket and everything the app sent it."""

    def __init__(self, user: str, ws: Any) -> None:
        self.user = user
        self.ws = ws
        self.got: list[dict[str, Any]] = []
        self.worker = 0  # the worker process serving it, from its own meta
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                self.got.append(json.loads(text))


def listed(presence: whosthere.Presence) -> dict[str, Any]:
    return presence.list("room:lobby")


SERVERS = {
    "uvicorn": ["uvicorn", "app:app", "--workers", "2", "--port"],
    # the app imported once in the master, then the workers forked (the lifespan, where
    # each worker connects, runs in each of them)
    "gunicorn --preload": [
        "gunicorn",
        "app:app",
        "--preload",
        "-w",
        "2",
        "-k",
        "uvicorn.workers.UvicornWorker",
        "--bind",
    ],
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_the_fastapi_example_keeps_who_is_there_true(address: str, server: str):
    if server.startswith("gunicorn"):
        pytest.importorskip("gunicorn")
    node = whosthere.Node(address=address).start()
    port = free_port()
    env = {**os.environ, "WHOSTHERE_ADDRESS": address}
    where = str(port) if server == "uvicorn" else f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", *SERVERS[server], where]
    try:
        with process_group(cmd, cwd=APP_DIR, env=env) as proc:
            wait_for_port(port, proc, timeout=30)
            asyncio.run(_drive(node, address, port))
    finally:
        node.stop()


async def _drive(node: whosthere.Node, address: str, port: int) -> None:
    presence = whosthere.Presence.connect(address)
    clients: list[Client] = []
    try:
        # the kernel hands each connection to one worker: open sockets until both have some
        while len({c.worker for c in clients}) < 2 and len(clients) < 4 * SOCKETS:
            for i in range(len(clients), len(clients) + SOCKETS):
                ws = await websockets.connect(f"ws://127.0.0.1:{port}/rooms/lobby?user=u{i}")
                client = Client(f"u{i}", ws)
                client.reader = asyncio.create_task(client.read())
                clients.append(client)
            await wait_until_async(
                lambda: all(c.got for c in clients), what="every socket's presence_state"
            )
            assert all(c.got[0]["event"] == "presence_state" for c in clients)
            await wait_until_async(
                lambda: len(listed(presence)) == len(clients), what="every socket tracked"
            )
            for key, entry in listed(presence).items():
                next(c for c in clients if c.user == key).worker = entry["metas"][0]["worker"]
        assert len({c.worker for c in clients}) == 2, "both workers serve sockets"

        # a few sockets close: their presences leave
        for client in clients[:4]:
            await client.ws.close()
        open_ = clients[4:]
        await wait_until_async(
            lambda: set(listed(presence)) == {c.user for c in open_}, what="closed ones left"
        )

        # a worker is SIGKILLed: its sockets' presences leave with it
        victim = open_[0].worker
        os.kill(victim, signal.SIGKILL)
        alive = [c for c in open_ if c.worker != victim]
        await wait_until_async(
            lambda: set(listed(presence)) == {c.user for c in alive}, what="the dead's left"
        )

        # the node restarts at its address: the live worker tracks its sockets again
        seen = {id(c): len(c.got) for c in alive}
        await asyncio.to_thread(node.stop)
        node2 = await asyncio.to_thread(whosthere.Node(address=address).start)
        try:
            await wait_until_async(
                lambda: _list_or_none(presence) == {c.user for c in alive},
                timeout=20,
                what="tracked again",
            )
            await wait_until_async(
                lambda: all(
                    any(m["event"] == "presence_state" for m in c.got[seen[id(c)] :]) for c in alive
                ),
                what="a fresh presence_state on every live socket",
            )
            url = f"http://127.0.0.1:{port}/rooms/lobby"
            served = await asyncio.to_thread(_get_json, url)
            assert set(served) == {c.user for c in alive}  # the app's own list agrees
            for client in alive:
                await client.ws.close()
            await wait_until_async(
                lambda: listed(presence) == {}, what="every socket closed, none left"
            )
        finally:
            await asyncio.to_thread(node2.stop)
    finally:
        for client in clients:
            await client.ws.close()
            if client.reader is not None:
                client.reader.cancel()
        presence.close()


def _list_or_none(presence: whosthere.Presence) -> set[str] | None:
    try:
        return set(listed(presence))
    except whosthere.NodeUnavailable:
        return None


def _get_json(url: str) -> Any:
    for _ in range(50):  # the worker that answers may be one uvicorn is restarting
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return json.loads(reply.read())
        except OSError:
            continue
    raise AssertionError(f"{url} did not answer")
