"""The apps `channels_workload` serves: whosthere's Channels, and a raw broadcast baseline.

`raw_app` is the same protocol through the same ASGI server without whosthere: a join is
answered, and a presence_diff naming the joiner is sent by the worker itself to the sockets
already on the topic, from a dict in memory (no node, no tracking, no PubSub, no fetch).
"""

from __future__ import annotations

import json
from typing import Any

from whosthere.channels import Channel, ChannelSocket, Endpoint


class LoadChannel(Channel):
    async def join(self, topic: str, params: Any, socket: ChannelSocket) -> Any:
        if params.get("watch"):
            return {}  # hears the topic, holds no presence
        await self.presence.track(socket, params["user"], {"device": "bench"})
        if not params.get("nostate"):
            await self.push_presence_state(socket)
        return {}


app = Endpoint(channels={"load:*": LoadChannel}, check_origin=False)

_rooms: dict[str, set[Any]] = {}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))  # as whosthere's frames


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    joined: list[str] = []
    try:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            join_ref, ref, topic, event, payload = json.loads(msg["text"])
            if event != "phx_join":
                continue
            reply = {"status": "ok", "response": {}}
            await send(
                {
                    "type": "websocket.send",
                    "text": _dumps([join_ref, ref, topic, "phx_reply", reply]),
                }
            )
            user = payload.get("user")
            if user and not payload.get("nostate"):
                state = [join_ref, None, topic, "presence_state", {}]
                await send({"type": "websocket.send", "text": _dumps(state)})
            room = _rooms.setdefault(topic, set())
            if user:
                diff = {
                    "joins": {user: {"metas": [{"device": "bench", "phx_ref": "r"}]}},
                    "leaves": {},
                }
                frame = _dumps([None, None, topic, "presence_diff", diff])
                for other in list(room):
                    await other({"type": "websocket.send", "text": frame})
            room.add(send)
            joined.append(topic)
    finally:
        for topic in joined:
            _rooms.get(topic, set()).discard(send)
