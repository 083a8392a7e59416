"""One WebSocket connection: its frames routed to its joined channels, in order per channel.

As a Phoenix socket process: heartbeats answered whatever is joined, a join per topic (a
second join of a topic ends the first), frames of a stale join_ref ignored, "unmatched topic"
for the rest. Each joined channel (`joined.Joined`) handles its messages one at a time; what
the connection sends goes into its outbox, written in order by the worker's `Writer`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from whosthere.channels import frames
from whosthere.channels.channel import Channel, Hub
from whosthere.channels.joined import Joined, Resources
from whosthere.channels.mailbox import End, In, Join, Leave
from whosthere.channels.writer import Outbox, Writer

if TYPE_CHECKING:
    from whosthere.channels.asgi import Send


class Router(Hub, Protocol):
    """What a connection asks of its endpoint: the channel class of a topic."""

    def route(self, topic: str) -> type[Channel] | None: ...


class Share(Resources, Protocol):
    """What a connection uses of its worker process's share (`endpoint.Worker`): its
    channels' presence client and fan-out, and the writer of every connection's frames."""

    @property
    def writer(self) -> Writer: ...


log = logging.getLogger("whosthere.channels")

HEARTBEAT_TOPIC = "phoenix"
MAX_CHANNELS = 100  # joined topics per connection, as Phoenix's default
CLOSE_GOING_AWAY = 1001  # idle, or a "disconnect" broadcast: the client reconnects
CLOSE_TRY_AGAIN = 1013  # too far behind: the client reconnects
MAX_QUEUED = 10_000  # frames a connection holds unwritten: a client that reads slowly
FLUSH_TIMEOUT_S = 1.0  # a gone client's close (or send) under way gets this long to go out


class Connection:
    """A client's WebSocket, once upgraded."""

    def __init__(
        self,
        endpoint: Router,
        worker: Share,
        send: Send,
        assigns: dict[str, Any],
        socket_id: str | None,
    ) -> None:
        self.endpoint = endpoint
        self.worker = worker
        self.writer = worker.writer
        self.outbox = Outbox(send)  # what waits for the writer
        self.assigns = assigns
        self.socket_id = socket_id
        self.channels: dict[str, Joined] = {}
        self.ending: asyncio.Task[None] | None = None  # channels ended for a slow reader
        self.last_seen = asyncio.get_running_loop().time()

    # -- out ------------------------------------------------------------------------------

    def post(self, frame: str | bytes) -> None:
        """Send `frame` after what is queued before it. A client that falls `MAX_QUEUED`
        frames behind is sent away (1013: it reconnects and gets the state anew) rather
        than held in this process's memory."""
        out = self.outbox
        if out.closing:
            return
        waiting = out.frames
        if len(waiting) < MAX_QUEUED:  # `Writer.put`, inline: this runs per socket
            waiting.append(frame)
            if not out.queued:
                self.writer.enqueue(out)
            return
        log.warning("closing a socket %d frames behind (it reads too slowly)", MAX_QUEUED)
        waiting.clear()
        self.close(CLOSE_TRY_AGAIN)  # goes out once it reads again
        # its channels end now: what it held leaves, whether or not it ever reads again
        self.ending = asyncio.get_running_loop().create_task(self._end_channels())

    def push(self, msg: frames.Frame) -> None:
        self.post(frames.encode(msg))

    def close(self, code: int) -> None:
        """Close the WebSocket with `code` once what is queued before it has gone out."""
        self.writer.close(self.outbox, code)

    # -- in -------------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> None:
        """One frame from the client (`frames.BadFrame` if it is not the protocol's)."""
        self.last_seen = asyncio.get_running_loop().time()
        msg = frames.decode(data)
        topic, event = msg.topic, msg.event
        if event == "heartbeat" and topic == HEARTBEAT_TOPIC:
            self.push(frames.reply(None, msg.ref, topic, "ok", {}))
        elif event == "phx_join":
            self._join(msg)
        elif (joined := self.channels.get(topic)) is not None:
            if msg.join_ref is not None and msg.join_ref != joined.join_ref:
                return  # meant for a channel of this topic that has ended
            joined.submit(Leave(msg) if event == "phx_leave" else In(msg))
        elif event == "phx_leave":
            self.push(frames.reply(msg.join_ref, msg.ref, topic, "ok", {}))
        else:
            self._unmatched(msg)

    def _unmatched(self, msg: frames.Frame) -> None:
        self.push(frames.reply(None, msg.ref, msg.topic, "error", {"reason": "unmatched topic"}))

    def _join(self, msg: frames.Frame) -> None:
        cls = self.endpoint.route(msg.topic)
        if cls is None:
            log.warning("ignoring join of unmatched topic %r", msg.topic)
            self._unmatched(msg)
            return
        old = self.channels.get(msg.topic)
        if old is None and len(self.channels) >= MAX_CHANNELS:
            self.push(
                frames.reply(
                    msg.join_ref,
                    msg.ref,
                    msg.topic,
                    "error",
                    {"reason": "too many channels joined"},
                )
            )
            return
        joined = Joined(self, cls, msg.topic, msg.join_ref or msg.ref)
        self.channels[msg.topic] = joined
        if old is not None:  # the old one closes (the client ignores its stale phx_close)
            old.submit(End("duplicate_join"))
        joined.submit(Join(msg))

    def on_broadcast(self, event: str, payload: Any, frame: str | bytes) -> None:
        """A message to this connection's id: "disconnect" closes it (the client comes back)."""
        if event == "disconnect":
            self.close(CLOSE_GOING_AWAY)

    async def _end_channels(self) -> None:
        ends = [j.end_now("closed") for j in list(self.channels.values())]
        await asyncio.gather(*ends, return_exceptions=True)

    async def disconnected(self) -> None:
        """The client is gone, or is being sent away: every channel ends ("closed"), its
        presences leave; a close under way goes out first. After this the server's `send`
        is not called again."""
        if not self.outbox.closing:
            self.writer.discard(self.outbox)  # nothing more for a client that left
        await self._end_channels()
        await self.writer.flush(self.outbox, FLUSH_TIMEOUT_S)
