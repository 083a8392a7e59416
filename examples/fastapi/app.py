"""Who is in the room, for a FastAPI app with many workers: plain WebSockets, one node.

Each worker process connects to the node at startup (`$WHOSTHERE_ADDRESS`); each socket is
an `owner()` that tracks itself in its room and forwards the room's diffs. A worker that
dies takes its sockets' presences with it; a node restarted at the same address finds
every live socket tracked again, and each socket gets a fresh `presence_state`.

    whosthere serve --address ipc:///tmp/rooms/whosthere.sock &
    WHOSTHERE_ADDRESS=ipc:///tmp/rooms/whosthere.sock uvicorn app:app --workers 2

Then connect to ws://127.0.0.1:8000/rooms/lobby?user=alice; GET /rooms/lobby lists it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

import whosthere
import whosthere.aio


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # In each worker, after the fork: a client is never shared across processes.
    app.state.presence = await whosthere.aio.connect()  # $WHOSTHERE_ADDRESS
    yield
    await app.state.presence.close()


app = FastAPI(lifespan=lifespan)


@app.get("/rooms/{room}")
async def who_is_there(room: str) -> dict[str, Any]:
    """The room's presences, as `presence.list` gives them."""
    presence: whosthere.aio.AsyncPresence = app.state.presence
    return await presence.list(f"room:{room}")


@app.websocket("/rooms/{room}")
async def join(ws: WebSocket, room: str, user: str) -> None:
    presence: whosthere.aio.AsyncPresence = ws.app.state.presence
    topic = f"room:{room}"
    await ws.accept()
    # Subscribe before you list: nothing between the list and the first diff is missed.
    async with presence.owner() as me, presence.subscribe(topic) as sub:
        await presence.track(me, topic, user, {"worker": os.getpid()})
        await ws.send_json({"event": "presence_state", "payload": await presence.list(topic)})
        forwarding = asyncio.create_task(forward(ws, presence, topic, sub))
        try:
            while True:  # this app only listens; a message from the client is ignored
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            forwarding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarding
    # leaving the `async with`: the owner's presences leave, the subscription closes


async def forward(
    ws: WebSocket,
    presence: whosthere.aio.AsyncPresence,
    topic: str,
    sub: whosthere.aio.AsyncSubscription,
) -> None:
    """The room's diffs to the socket; after a gap, the whole state again."""
    while True:
        try:
            msg = await sub.get()
        except whosthere.NodeUnavailable:
            continue  # the node went: once one serves the address again, MessagesLost
        except whosthere.MessagesLost:
            try:
                state = await presence.list(topic)
            except whosthere.NodeUnavailable:
                continue  # not back yet: the next gap brings it
            await ws.send_json({"event": "presence_state", "payload": state})
            continue
        if msg is not None and msg.event == "presence_diff":
            await ws.send_json({"event": "presence_diff", "payload": msg.payload})
