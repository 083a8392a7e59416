"""`Endpoint`: the Channels protocol as an ASGI application (DESIGN section 7).

Each worker process (each event loop) that serves it connects once to the node: one
`AsyncPresence`, one PubSub subscription fanned out to its sockets, one sweep for idle
sockets. Mount it anywhere; it answers WebSocket upgrades whose path ends in `/websocket`
(the client adds it to the endpoint URL it is given) and 404 to the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Mapping
from typing import Any

import whosthere.aio
from whosthere.aio.presence import AsyncPresence
from whosthere.aio.pubsub import AsyncPubSub
from whosthere.channels import frames, handshake
from whosthere.channels.asgi import Receive, Scope, Send
from whosthere.channels.channel import Channel, Refuse, Socket
from whosthere.channels.connection import CLOSE_GOING_AWAY, Connection
from whosthere.channels.fanout import Fanout
from whosthere.channels.joined import Joined
from whosthere.channels.writer import Writer

log = logging.getLogger("whosthere.channels")

IDLE_TIMEOUT_S = 60.0  # a socket the client has sent nothing on for this long is closed
MAX_FRAME_BYTES = 10_000_000  # as Phoenix's adapter: a larger frame closes the socket (1009)
CLOSE_BAD_DATA = 1007
CLOSE_TOO_BIG = 1009


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """404 to an HTTP request; a WebSocket upgrade of no endpoint is turned away (403)."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1000})
    else:
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"not found"})


class Endpoint:
    """An ASGI app serving `socket` and its `channels` ({"room:*": RoomChannel, ...}) on the
    node at `address` (default `$WHOSTHERE_ADDRESS`), with the `fetch` of `presence` (a
    `whosthere.Presence` subclass) for `presence_state`."""

    def __init__(
        self,
        *,
        socket: type[Socket] = Socket,
        channels: Mapping[str, type[Channel]],
        presence: type | None = None,
        address: str | None = None,
        check_origin: bool | list[str] = True,
        idle_timeout: float = IDLE_TIMEOUT_S,
        max_frame_size: int = MAX_FRAME_BYTES,
        timeout: float = 5.0,
    ) -> None:
        for pattern, cls in channels.items():
            if not (isinstance(cls, type) and issubclass(cls, Channel)):
                raise TypeError(f"channel for {pattern!r} must be a Channel subclass")
        self.socket = socket
        self.channels = dict(channels)
        self.presence = presence
        self.address = address
        self.check_origin = check_origin
        self.idle_timeout = idle_timeout
        self.max_frame_size = max_frame_size
        self.timeout = timeout
        self._workers: dict[asyncio.AbstractEventLoop, Worker] = {}

    def route(self, topic: str) -> type[Channel] | None:
        """The channel class for `topic`: an exact pattern, else the first `*` pattern."""
        cls = self.channels.get(topic)
        if cls is not None:
            return cls
        for pattern, cls in self.channels.items():
            if "*" in pattern and fnmatch.fnmatchcase(topic, pattern):
                return cls
        return None

    def presence_client(self) -> AsyncPresence:
        return self._worker_now().presence

    async def broadcast(self, topic: str, event: str, payload: Any, *, exclude: Any = None) -> None:
        """To every subscriber of `topic` on every node (but `exclude`, a channel socket)."""
        worker = await self.worker()
        if exclude is not None and exclude.joined is not None:
            worker.fanout.exclude_next(topic, event, payload, exclude.joined)
        await worker.pubsub.broadcast(topic, event, payload)

    # -- per worker -----------------------------------------------------------------------

    async def worker(self) -> Worker:
        loop = asyncio.get_running_loop()
        worker = self._workers.get(loop)
        if worker is None:
            worker = self._workers[loop] = Worker(self)
        await worker.started()
        return worker

    def _worker_now(self) -> Worker:
        worker = self._workers.get(asyncio.get_running_loop())
        if worker is None:
            raise NotStarted("the endpoint is not started in this event loop")
        return worker

    async def close(self) -> None:
        """Close this loop's connection to the node (the ASGI lifespan shutdown does it)."""
        worker = self._workers.pop(asyncio.get_running_loop(), None)
        if worker is not None:
            await worker.close()

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and scope.get("path", "").endswith("/websocket"):
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await not_found(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.worker()
                except Exception as exc:  # each socket tries again, and is refused till then
                    log.warning("channels: the node is not reachable yet: %s", exc)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            worker = await self.worker()
            conn = await self._upgrade(scope, headers, worker, send)
        except (handshake.Refused, Refuse) as exc:
            log.warning("refused a socket from %s: %s", scope.get("client"), exc)
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        except Exception:  # the node unreachable, or `connect` broken: refused, and said
            log.exception("could not take a socket from %s", scope.get("client"))
            await send({"type": "websocket.close", "code": 1011})  # before accept: HTTP 403
            return
        worker.connections.add(conn)
        try:
            await self._serve(conn, receive)
        finally:
            worker.connections.discard(conn)
            if conn.socket_id is not None:
                worker.fanout.remove(conn.socket_id, conn)
            await conn.disconnected()

    async def _upgrade(
        self, scope: Scope, headers: dict[str, str], worker: Worker, send: Send
    ) -> Connection:
        if not handshake.origin_allowed(
            headers.get("origin"), headers.get("host"), self.check_origin
        ):
            raise handshake.Refused(f"origin {headers.get('origin')!r} is not allowed")
        upgrade = handshake.parse(scope.get("query_string", b""), scope.get("subprotocols", []))
        user = self.socket()
        info = {
            "auth_token": upgrade.auth_token,
            "headers": headers,
            "peer": scope.get("client"),
            "origin": headers.get("origin"),
        }
        assigns = await user.connect(upgrade.params, info)
        if assigns is not None and not isinstance(assigns, dict):
            raise TypeError(f"{type(user).__name__}.connect must return a dict or None")
        user.assigns = dict(assigns or {})
        socket_id = user.id()
        await send({"type": "websocket.accept", "subprotocol": upgrade.subprotocol})
        conn = Connection(self, worker, send, user.assigns, socket_id)
        if socket_id is not None:
            await worker.fanout.add(socket_id, conn)
        return conn

    async def _serve(self, conn: Connection, receive: Receive) -> None:
        while True:
            msg = await receive()
            kind = msg["type"]
            if kind == "websocket.disconnect":
                return
            if kind != "websocket.receive":
                continue
            data = msg.get("text")
            if data is None:
                data = msg.get("bytes") or b""
            if len(data) > self.max_frame_size:
                conn.close(CLOSE_TOO_BIG)
                return
            try:
                conn.receive(data)
            except frames.BadFrame as exc:
                log.warning("closing a socket that sent a bad frame: %s", exc)
                conn.close(CLOSE_BAD_DATA)
                return


class NotStarted(RuntimeError):
    """The endpoint's connection to the node is not (yet) made in this event loop."""


class Worker:
    """What one worker process (one event loop) holds for an endpoint: made in that loop,
    connected to the node by `started`."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.writer = Writer()  # every connection's frames
        self.connections: set[Connection] = set()
        self._presence: AsyncPresence | None = None
        self._pubsub: AsyncPubSub | None = None
        self._fanout: Fanout | None = None
        self._starting: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def presence(self) -> AsyncPresence:
        if self._presence is None:
            raise NotStarted("the endpoint is not started in this event loop")
        return self._presence

    @property
    def pubsub(self) -> AsyncPubSub:
        if self._pubsub is None:
            raise NotStarted("the endpoint is not started in this event loop")
        return self._pubsub

    @property
    def fanout(self) -> Fanout:
        if self._fanout is None:
            raise NotStarted("the endpoint is not started in this event loop")
        return self._fanout

    async def started(self) -> None:
        """Connected to the node (a failed start is tried again by the next caller)."""
        starting = self._starting
        if starting is None or (
            starting.done() and (starting.cancelled() or starting.exception() is not None)
        ):
            starting = self._starting = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(starting)

    async def _start(self) -> None:
        endpoint = self.endpoint
        info = await whosthere.aio.lookup(endpoint.address, endpoint.timeout)
        self._presence = AsyncPresence(info, presence=endpoint.presence, timeout=endpoint.timeout)
        self._pubsub = AsyncPubSub(info, timeout=endpoint.timeout)
        self._fanout = Fanout(self._pubsub)
        self._fanout.on_lost = self._resync
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def _resync(self, topic: str) -> None:
        """After a gap on `topic`, channels that show presences get the state anew."""
        for member in list(self.fanout.members.get(topic, ())):
            if isinstance(member, Joined):
                member.resend_state()

    async def _sweep(self) -> None:
        timeout = self.endpoint.idle_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, timeout / 4))
            now = loop.time()
            for conn in list(self.connections):
                if now - conn.last_seen > timeout:
                    conn.close(CLOSE_GOING_AWAY)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close(CLOSE_GOING_AWAY)
        with contextlib.suppress(Exception):
            if self._fanout is not None:
                await self._fanout.close()
            if self._pubsub is not None:
                await self._pubsub.close()
            if self._presence is not None:
                await self._presence.close()
