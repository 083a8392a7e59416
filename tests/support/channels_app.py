"""The Channels app the phoenix.js tests run under uvicorn (`tests.support.channels_app:app`)."""

from __future__ import annotations

import os
from typing import Any

from whosthere.channels import Channel, ChannelSocket, Endpoint, Refuse, Reply, Socket, Stop
from whosthere.errors import InvalidMeta


class UserSocket(Socket):
    async def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> Any:
        if params.get("token") == "bad":
            raise Refuse("bad token")
        self.user = params.get("user", "anon")
        return {"user": self.user, "token": connect_info["auth_token"]}

    def id(self) -> str | None:
        return f"user_socket:{self.user}"


class RoomChannel(Channel):
    intercept = ("edited",)

    async def join(self, topic: str, params: Any, socket: ChannelSocket) -> Any:
        if params.get("refuse"):
            raise Refuse("not allowed")
        if params.get("crash_join"):
            raise RuntimeError("join went wrong")
        meta = {"tab": params.get("tab"), "worker": os.getpid()}
        await self.presence.track(socket, socket.assigns["user"], meta)
        await self.push_presence_state(socket)
        return {"joined": topic, "worker": os.getpid()}

    async def handle_in(self, event: str, payload: Any, socket: ChannelSocket) -> Any:
        if event == "crash":
            raise RuntimeError("a handler that raises")
        if event == "ping":
            return {"pong": payload}
        if event == "shout":
            await self.broadcast(socket, "shout", payload)
            return {}
        if event == "shout_from":
            await self.broadcast_from(socket, "shout", payload)
            return {}
        if event == "edit":
            await self.broadcast(socket, "edited", payload)
            return {}
        if event == "away":
            await self.presence.update(
                socket, socket.assigns["user"], lambda meta: {**meta, "away": True}
            )
            return {}
        if event == "meta":  # made here: what a client sends is JSON, it cannot be wrong
            return await self._try_meta(socket, payload["how"], METAS[payload["meta"]])
        if event == "upload":
            return bytes(reversed(payload))  # binary in, binary reply
        if event == "whoami":
            return {"worker": os.getpid(), "token": socket.assigns["token"]}
        if event == "stop":
            raise Stop({"bye": True})
        if event == "nope":
            return Reply.error({"reason": "asked for it"})
        if event == "silent":
            return None
        raise Refuse(f"unknown event {event}")

    async def handle_out(self, event: str, payload: Any, socket: ChannelSocket) -> None:
        socket.push(event, {**payload, "intercepted": True})

    async def _try_meta(self, socket: ChannelSocket, how: str, meta: Any) -> Any:
        """Track a second key with `meta`, or update the joined one to it (`update_fn`: by a
        function); the error reply names what the channel's presence refused."""
        user = socket.assigns["user"]
        try:
            if how == "track":
                await self.presence.track(socket, f"{user}:second", meta)
            elif how == "update":
                await self.presence.update(socket, user, meta)
            else:
                await self.presence.update(socket, user, lambda current: {**current, **meta})
        except InvalidMeta as exc:
            return Reply.error({"refused": type(exc).__name__, "reason": str(exc)})
        return {}


# metas that are msgpack but not JSON, and one that is both (`meta` events)
METAS: dict[str, Any] = {
    "bytes": {"avatar": b"\x89PNG"},
    "int_key": {"scores": [{"ok": 1}, {7: "seven"}]},
    "nan": {"load": float("nan")},
    "set": {"tags": {"a"}},
    "good": {"tags": ("a", "b"), "load": 0.5, "more": {"seen": None, "n": [1, True]}},
}


app = Endpoint(socket=UserSocket, channels={"room:*": RoomChannel}, check_origin=False)

# a node that is not there: sockets are refused, the server stays up
unreachable_app = Endpoint(
    channels={"room:*": RoomChannel},
    address="ipc:///tmp/whosthere-no-such-node.sock",
    timeout=0.5,
)

# strict limits, for the protocol tests
strict_app = Endpoint(
    socket=UserSocket,
    channels={"room:*": RoomChannel},
    check_origin=["https://good.example", "//*.trusted.example"],
    idle_timeout=1.0,
    max_frame_size=2_000,
)


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("a Starlette app, with Channels under /socket")

    return Starlette(routes=[Route("/", home), Mount("/socket", app=app)])


starlette_app = _starlette_app()  # the Endpoint mounted in a framework
