"""What a user writes: `Socket` (one per connection) and `Channel` (one per joined topic).

A joined channel is a Phoenix channel process in small: its own `ChannelSocket` (topic,
join_ref, assigns), its own presence owner, its messages handled one at a time in order. A
handler that raises ends that channel only (the client gets `phx_error` and rejoins).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from whosthere.channels import frames
from whosthere.errors import InvalidMeta

if TYPE_CHECKING:
    from whosthere.aio.presence import AsyncOwner, AsyncPresence


class Hub(Protocol):
    """What a channel asks of the endpoint serving it (`endpoint.Endpoint`)."""

    def presence_client(self) -> AsyncPresence: ...

    async def broadcast(
        self, topic: str, event: str, payload: Any, *, exclude: Any = None
    ) -> None: ...


class Refuse(Exception):
    """From `Socket.connect`: no upgrade (HTTP 403). From `Channel.join`: the join's error
    reply, `{"reason": reason}` (or `response` as given). From `handle_in`: that push's
    error reply (the channel goes on)."""

    def __init__(self, reason: str = "refused", response: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.response = {"reason": reason} if response is None else response


class Reply:
    """What `handle_in` returns for a reply with a status other than "ok" (a plain value is
    the "ok" reply's response; None replies nothing)."""

    __slots__ = ("response", "status")

    def __init__(self, status: str, response: Any = None) -> None:
        self.status = status
        self.response = {} if response is None else response

    @classmethod
    def ok(cls, response: Any = None) -> Reply:
        return cls("ok", response)

    @classmethod
    def error(cls, response: Any = None) -> Reply:
        return cls("error", response)


class Stop(Exception):
    """Raised by a handler to end its channel normally: `reply` (if any) goes first, then
    `phx_close`; the client does not rejoin."""

    def __init__(self, reply: Any = None) -> None:
        super().__init__("stop")
        self.reply = reply


class Socket:
    """One client connection. Subclass it: `connect` authenticates and returns the assigns
    every channel of the connection starts from; `id` names the connection (or None)."""

    def __init__(self) -> None:
        self.assigns: dict[str, Any] = {}

    async def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> Any:
        """`params`: the query (vsn included); `connect_info`: `auth_token`, `headers`,
        `peer`, `origin`. Return the assigns (a dict, or None for none); raise `Refuse` to
        turn the connection away (HTTP 403)."""
        return {}

    def id(self) -> str | None:
        """A name for this connection (its sockets all close on a "disconnect" broadcast to
        it), or None."""
        return None


class ChannelSocket:
    """A joined channel's view of its connection (Phoenix's `socket` argument)."""

    __slots__ = (
        "assigns",
        "channel",
        "endpoint",
        "join_ref",
        "joined",
        "owner",
        "topic",
        "wants_presence",
    )

    def __init__(
        self,
        endpoint: Hub,
        topic: str,
        *,
        join_ref: str | None,
        assigns: dict[str, Any],
        owner: AsyncOwner,
        joined: Any,
    ) -> None:
        self.endpoint = endpoint
        self.topic = topic
        self.join_ref = join_ref
        self.assigns = assigns
        self.owner = owner  # the channel's presences are this owner's
        self.channel: Channel | None = None
        self.joined = joined  # the connection's record of this channel (`connection.Joined`)
        self.wants_presence = False  # it was sent a presence_state: a gap sends another

    def push(self, event: str, payload: Any) -> None:
        """Send `event` to this client only (`[join_ref, null, topic, event, payload]`)."""
        self.joined.deliver(
            frames.encode(frames.Frame(self.join_ref, None, self.topic, event, payload))
        )


class ChannelPresence:
    """The presence calls a channel makes, its topic and owner filled in."""

    def __init__(self, endpoint: Hub) -> None:
        self._endpoint = endpoint

    @property
    def client(self) -> AsyncPresence:
        return self._endpoint.presence_client()

    async def track(self, socket: ChannelSocket, key: str | int, meta: dict[str, Any]) -> str:
        """As `AsyncPresence.track`; `InvalidMeta` also if the meta is not JSON (`json_meta`)."""
        return await self.client.track(socket.owner, socket.topic, key, json_meta(meta))

    async def update(self, socket: ChannelSocket, key: str | int, meta: Any) -> str:
        """As `AsyncPresence.update`; `InvalidMeta` also if the new meta is not JSON."""
        if callable(meta):
            meta = _json_change(meta)
        else:
            json_meta(meta)
        return await self.client.update(socket.owner, socket.topic, key, meta)

    async def untrack(self, socket: ChannelSocket, key: str | int) -> None:
        await self.client.untrack(socket.owner, socket.topic, key)

    async def list(self, socket_or_topic: ChannelSocket | str) -> dict[str, Any]:
        topic = socket_or_topic if isinstance(socket_or_topic, str) else socket_or_topic.topic
        return await self.client.list(topic)

    async def get_by_key(self, socket_or_topic: ChannelSocket | str, key: str | int) -> Any:
        topic = socket_or_topic if isinstance(socket_or_topic, str) else socket_or_topic.topic
        return await self.client.get_by_key(topic, key)


class Channel:
    """One joined topic of one connection. Override `join` (return the reply's response,
    raise `Refuse`), `handle_in` (return the reply's response, a `Reply`, or None for no
    reply), `handle_out` for the events named in `intercept`, and `terminate`."""

    intercept: ClassVar[tuple[str, ...]] = ()  # broadcast events that go through handle_out

    def __init__(self, endpoint: Hub) -> None:
        self.endpoint = endpoint
        self.presence = ChannelPresence(endpoint)

    async def join(self, topic: str, params: Any, socket: ChannelSocket) -> Any:
        return {}

    async def handle_in(self, event: str, payload: Any, socket: ChannelSocket) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not handle {event!r}")

    async def handle_out(self, event: str, payload: Any, socket: ChannelSocket) -> None:
        socket.push(event, payload)

    async def terminate(self, reason: str, socket: ChannelSocket) -> None:
        """The channel ends: "left", "closed" (the connection), "duplicate_join", "stop",
        "crash". Its presences leave after this, whatever it does."""

    # -- helpers -------------------------------------------------------------------------

    def push(self, socket: ChannelSocket, event: str, payload: Any) -> None:
        socket.push(event, payload)

    async def broadcast(self, socket: ChannelSocket | str, event: str, payload: Any) -> None:
        """To every subscriber of the topic, on every node of the cluster."""
        await self.endpoint.broadcast(_topic(socket), event, payload)

    async def broadcast_from(self, socket: ChannelSocket, event: str, payload: Any) -> None:
        """As `broadcast`, but not to `socket` itself."""
        await self.endpoint.broadcast(socket.topic, event, payload, exclude=socket)

    async def push_presence_state(self, socket: ChannelSocket) -> None:
        """Push the topic's presences as `presence_state` (after every join: the client's
        `Presence` holds its diffs until one arrives)."""
        socket.wants_presence = True
        socket.push("presence_state", await self.presence.list(socket))


def json_meta(meta: Any) -> Any:
    """`meta`, if phoenix.js can read it: every presence of a channel's topic reaches its
    clients as JSON (`presence_state`, `presence_diff`), so what JSON cannot carry is refused
    at `track` with `InvalidMeta` naming where it is, not found out when a push fails."""
    problem = frames.json_problem(meta)
    if problem is not None:
        raise InvalidMeta(f"{problem} (a Channels meta reaches phoenix.js as JSON)")
    return meta


def _json_change(change: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
    """An update's function of the current meta, its result checked by `json_meta`."""

    async def checked(current: Any) -> Any:
        new = change(current)
        return json_meta(await new if inspect.isawaitable(new) else new)

    return checked


def _topic(socket: ChannelSocket | str) -> str:
    return socket if isinstance(socket, str) else socket.topic
