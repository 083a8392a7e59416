"""One WebSocket connection: its frames routed to its joined channels, in order per channel.

As a Phoenix socket process: heartbeats answered whatever is joined, a join per topic (a
second join of a topic ends the first), frames of a stale join_ref ignored, "unmatched topic"
for the rest. Each joined channel handles its messages one at a time in a task that lives
while it has work; what the connection sends goes through one writer, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from whosthere.channels import frames
from whosthere.channels.channel import Channel, ChannelSocket, Hub, Refuse, Reply, Stop

if TYPE_CHECKING:
    from whosthere.aio.presence import AsyncPresence
    from whosthere.channels.fanout import Fanout


class Router(Hub, Protocol):
    """What a connection asks of its endpoint: the channel class of a topic."""

    def route(self, topic: str) -> type[Channel] | None: ...


class Resources(Protocol):
    """What a connection uses of its worker process's share (`endpoint.Worker`)."""

    presence: AsyncPresence
    fanout: Fanout


log = logging.getLogger("whosthere.channels")

HEARTBEAT_TOPIC = "phoenix"
MAX_CHANNELS = 100  # joined topics per connection, as Phoenix's default
CLOSE_GOING_AWAY = 1001  # idle, or a "disconnect" broadcast: the client reconnects
CLOSE_TRY_AGAIN = 1013  # too far behind: the client reconnects
MAX_QUEUED = 10_000  # frames waiting for a client that reads slowly
_CLOSE = object()  # in the outbox: close the WebSocket (the code follows)


def _message(frame: str | bytes) -> dict[str, Any]:
    if isinstance(frame, str):
        return {"type": "websocket.send", "text": frame}
    return {"type": "websocket.send", "bytes": frame}


async def _resume(coro: Any, waiting_on: Any) -> None:
    """Drive a coroutine that was started by hand to its end, as a task would have: wait
    for what it waits on, then let it go on (it reads that outcome itself)."""
    try:
        while True:
            if waiting_on is None:
                await asyncio.sleep(0)  # a bare yield
            else:
                waiting_on._asyncio_future_blocking = False
                with contextlib.suppress(Exception):
                    await waiting_on
            try:
                waiting_on = coro.send(None)
            except StopIteration:
                return
    except asyncio.CancelledError:
        coro.close()
        raise


class Connection:
    """A client's WebSocket, once upgraded."""

    def __init__(
        self,
        endpoint: Router,
        worker: Resources,
        send: Any,
        assigns: dict[str, Any],
        socket_id: str | None,
    ) -> None:
        self.endpoint = endpoint
        self.worker = worker
        self._send = send
        self.assigns = assigns
        self.socket_id = socket_id
        self.channels: dict[str, Joined] = {}
        self.outbox: deque[Any] = deque()  # what waits for the send under way
        self.writing = False  # a send waits on the client: the rest queues behind it
        self.flusher: asyncio.Task[None] | None = None
        self.ending: asyncio.Task[None] | None = None  # channels ended for a slow reader
        self.closed = False  # nothing more goes out
        self.closing = False  # a close is queued
        self.last_seen = asyncio.get_running_loop().time()

    # -- out ------------------------------------------------------------------------------

    def post(self, frame: str | bytes) -> None:
        """Send `frame` now if nothing is being sent, else after what is (in order). A
        client that falls `MAX_QUEUED` frames behind is sent away (1013: it reconnects and
        gets the state anew) rather than held in this process's memory."""
        if self.closed or self.closing:
            return
        if not self.writing:
            self._send_now(_message(frame))
        elif len(self.outbox) < MAX_QUEUED:
            self.outbox.append(frame)
        else:
            log.warning("closing a socket %d frames behind (it reads too slowly)", MAX_QUEUED)
            self.outbox.clear()
            self.close(CLOSE_TRY_AGAIN)  # goes out once it reads again
            # its channels end now: what it held leaves, whether or not it ever reads again
            self.ending = asyncio.get_running_loop().create_task(self._end_channels())

    def push(self, msg: frames.Message) -> None:
        self.post(frames.encode(msg))

    def close(self, code: int) -> None:
        """Close the WebSocket with `code` once what is queued before it has gone out."""
        if self.closed or self.closing:
            return
        self.closing = True
        if self.writing:
            self.outbox.append(_CLOSE)
            self.outbox.append(code)
        else:
            self._send_now({"type": "websocket.close", "code": code})

    def _send_now(self, message: dict[str, Any]) -> None:
        """Run the server's `send` in the caller's turn: it rarely waits (only when the
        client reads slower than it is written to), and a broadcast to ten thousand sockets
        then costs no task switch per socket. If it does wait, a task finishes it, then
        sends what queued meanwhile."""
        if message["type"] == "websocket.close":
            self.closed = True
        coro = self._send(message)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:
            self._broken(exc)
            return
        self.writing = True
        self.flusher = asyncio.get_running_loop().create_task(self._finish(coro, waiting_on))

    async def _finish(self, coro: Any, waiting_on: Any) -> None:
        try:
            await _resume(coro, waiting_on)
            while self.outbox and not self.closed:
                frame = self.outbox.popleft()
                if frame is _CLOSE:
                    self.closed = True
                    await self._send({"type": "websocket.close", "code": self.outbox.popleft()})
                    return
                await self._send(_message(frame))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._broken(exc)
        finally:
            self.writing = False

    def _broken(self, exc: BaseException) -> None:
        log.debug("websocket send failed: %s", exc)  # the client went away under us
        self.closed = True
        self.outbox.clear()

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
            joined.submit(("leave" if event == "phx_leave" else "in", msg))
        elif event == "phx_leave":
            self.push(frames.reply(msg.join_ref, msg.ref, topic, "ok", {}))
        else:
            self._unmatched(msg)

    def _unmatched(self, msg: frames.Message) -> None:
        self.push(frames.reply(None, msg.ref, msg.topic, "error", {"reason": "unmatched topic"}))

    def _join(self, msg: frames.Message) -> None:
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
            old.submit(("end", "duplicate_join"))
        joined.submit(("join", msg))

    def on_broadcast(self, event: str, payload: Any, frame: str | bytes) -> None:
        """A message to this connection's id: "disconnect" closes it (the client comes back)."""
        if event == "disconnect":
            self.close(CLOSE_GOING_AWAY)

    async def _end_channels(self) -> None:
        ends = [j.end_now("closed") for j in list(self.channels.values())]
        await asyncio.gather(*ends, return_exceptions=True)

    async def disconnected(self) -> None:
        """The client is gone, or is being sent away: every channel ends ("closed"), its
        presences leave; a close under way goes out first."""
        if not self.closing:
            self.closed = True
        await self._end_channels()
        flusher = self.flusher
        if self.writing and flusher is not None:  # a close under way goes out first
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(flusher), 1.0)
            flusher.cancel()
        self.closed = True


class Joined:
    """A channel joined on a connection: a Phoenix channel process in small."""

    def __init__(self, conn: Connection, cls: type[Channel], topic: str, join_ref: str | None):
        self.conn = conn
        self.cls = cls
        self.topic = topic
        self.join_ref = join_ref
        self.intercept = frozenset(cls.intercept)
        self.channel: Channel | None = None
        self.socket: ChannelSocket | None = None
        self.queue: deque[tuple[Any, ...]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.held: list[str | bytes] | None = []  # what is sent before the join's reply
        self.ended = False

    # -- what reaches it ------------------------------------------------------------------

    def submit(self, item: tuple[Any, ...]) -> None:
        if self.ended:
            return
        self.queue.append(item)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def deliver(self, frame: str | bytes) -> None:
        """A frame for the client: held until the join is answered, then in order."""
        if self.held is not None:
            self.held.append(frame)
        elif not self.ended:
            self.conn.post(frame)

    def on_broadcast(self, event: str, payload: Any, frame: str | bytes) -> None:
        if event in self.intercept:
            self.submit(("out", event, payload))
        else:
            self.deliver(frame)

    def _push(self, msg: frames.Message) -> None:
        self.deliver(frames.encode(msg))

    # -- its loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.queue and not self.ended:
                item = self.queue.popleft()
                try:
                    await self._handle(item)
                except Refuse as refused:  # a push refused: an error reply, nothing ends
                    if item[0] == "in":
                        self._reply(item[1], Reply("error", refused.response))
                except Stop as stop:
                    if stop.reply is not None and item[0] == "in":
                        self._reply(item[1], stop.reply)
                    await self._end("stop")
                except Exception:
                    log.exception("channel %s on %r crashed", self.cls.__name__, self.topic)
                    await self._end("crash")
        finally:
            self.task = None

    async def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "join":
            await self._join(item[1])
        elif kind == "in":
            msg = item[1]
            assert self.channel is not None and self.socket is not None
            result = await self.channel.handle_in(msg.event, msg.payload, self.socket)
            if result is not None:
                self._reply(msg, result)
        elif kind == "leave":
            self.conn.push(frames.reply(self.join_ref, item[1].ref, self.topic, "ok", {}))
            await self._end("left")
        elif kind == "out":
            assert self.channel is not None and self.socket is not None
            await self.channel.handle_out(item[1], item[2], self.socket)
        elif kind == "end":
            await self._end(item[1])
        elif kind == "state":  # after a gap in what this worker heard of the topic
            assert self.channel is not None and self.socket is not None
            await self.channel.push_presence_state(self.socket)

    def _reply(self, msg: frames.Message, result: Any) -> None:
        status, response = (
            (result.status, result.response) if isinstance(result, Reply) else ("ok", result)
        )
        self._push(frames.reply(self.join_ref, msg.ref, self.topic, status, response))

    async def _join(self, msg: frames.Message) -> None:
        worker = self.conn.worker
        owner = worker.presence.owner()
        socket = ChannelSocket(
            self.conn.endpoint,
            self.topic,
            join_ref=self.join_ref,
            assigns=dict(self.conn.assigns),
            owner=owner,
            joined=self,
        )
        self.socket = socket
        channel = self.channel = self.cls(self.conn.endpoint)
        socket.channel = channel
        try:
            await worker.fanout.add(self.topic, self)  # in place before the join tracks
            response = await channel.join(self.topic, msg.payload, socket)
        except Refuse as refused:
            await self._refused(msg, "error", refused.response)
            return
        except Exception:
            log.exception("join of %r by %s crashed", self.topic, self.cls.__name__)
            await self._refused(msg, "error", {"reason": "join crashed"})
            return
        if self.ended:
            return
        self.conn.push(
            frames.reply(
                self.join_ref, msg.ref, self.topic, "ok", {} if response is None else response
            )
        )
        held, self.held = self.held or [], None
        for frame in held:
            self.conn.post(frame)

    async def _refused(self, msg: frames.Message, status: str, response: Any) -> None:
        self.held = None
        self.conn.push(frames.reply(self.join_ref, msg.ref, self.topic, status, response))
        self._forget()
        self.ended = True
        self.queue.clear()
        await self._release()  # what the join tracked before it refused

    async def end_now(self, reason: str) -> None:
        """End from outside its loop (the connection closed): its presences leave."""
        if self.task is not None and self.task is not asyncio.current_task():
            self.queue.clear()
            self.submit(("end", reason))
            task = self.task
            if task is not None:
                await asyncio.shield(task)
            return
        await self._end(reason)

    async def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.queue.clear()
        self._forget()
        if self.channel is not None and self.socket is not None and self.held is None:
            try:
                await self.channel.terminate(reason, self.socket)
            except Exception:
                log.exception("terminate of %s on %r failed", self.cls.__name__, self.topic)
        await self._release()
        if reason in ("left", "stop", "duplicate_join"):
            self.conn.push(
                frames.Message(self.join_ref, self.join_ref, self.topic, "phx_close", {})
            )
        elif reason == "crash":
            self.conn.push(
                frames.Message(
                    self.join_ref,
                    self.join_ref,
                    self.topic,
                    "phx_error",
                    {"reason": "channel_crash"},
                )
            )

    def _forget(self) -> None:
        if self.conn.channels.get(self.topic) is self:
            del self.conn.channels[self.topic]
        self.conn.worker.fanout.remove(self.topic, self)

    async def _release(self) -> None:
        """Its presences leave (one message per shard for all of them)."""
        if self.socket is not None:
            try:
                await self.socket.owner.close()
            except Exception as exc:
                log.warning(
                    "presences of %r on %r not untracked: %s (they leave when this process exits)",
                    self.cls.__name__,
                    self.topic,
                    exc,
                )
