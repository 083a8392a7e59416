"""`Joined`: a channel joined on a connection, a Phoenix channel process in small.

Its mailbox takes typed records (`mailbox`): the join first, then the client's frames,
intercepted broadcasts, a state to send again, an end. A task that lives while there is
mail handles them one at a time, in order, so a handler never runs beside another of the
same channel. What it sends before its join is answered is held, and goes out after the
reply (the client drops a channel's frames until it knows the join_ref).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, assert_never

from whosthere.channels import frames
from whosthere.channels.channel import Channel, ChannelSocket, Hub, Refuse, Reply, Stop
from whosthere.channels.mailbox import End, EndReason, In, Join, Leave, Mail, Out, ResendState

if TYPE_CHECKING:
    from whosthere.aio.presence import AsyncPresence
    from whosthere.channels.fanout import Fanout

log = logging.getLogger("whosthere.channels")


class Resources(Protocol):
    """What a joined channel uses of its worker process's share (`endpoint.Worker`)."""

    @property
    def presence(self) -> AsyncPresence: ...

    @property
    def fanout(self) -> Fanout: ...


class Host(Protocol):
    """What a joined channel asks of its connection (`connection.Connection`)."""

    @property
    def endpoint(self) -> Hub: ...

    @property
    def worker(self) -> Resources: ...

    @property
    def assigns(self) -> dict[str, Any]: ...

    @property
    def channels(self) -> dict[str, Joined]: ...

    def post(self, frame: str | bytes) -> None: ...


class Joined:
    """A channel joined on a connection: a Phoenix channel process in small."""

    def __init__(self, conn: Host, cls: type[Channel], topic: str, join_ref: str | None) -> None:
        self.conn = conn
        self.cls = cls
        self.topic = topic
        self.join_ref = join_ref
        self.intercept = frozenset(cls.intercept)
        self.channel: Channel | None = None  # made by the join
        self.socket: ChannelSocket | None = None
        self.queue: deque[Mail] = deque()
        self.task: asyncio.Task[None] | None = None  # handles the queue while it has mail
        self.held: list[str | bytes] | None = []  # what is sent before the join's reply
        self.ended = False

    # -- what reaches it ------------------------------------------------------------------

    def submit(self, mail: Mail) -> None:
        """Queue `mail`, handled after what came before it (dropped once the channel ended)."""
        if self.ended:
            return
        self.queue.append(mail)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def resend_state(self) -> None:
        """After a gap in what this worker heard of the topic: a fresh `presence_state`, if
        the channel has sent one (the client's `Presence` works out what it missed)."""
        socket = self.socket
        if socket is not None and socket.wants_presence and self.channel is not None:
            self.submit(ResendState())

    def deliver(self, frame: str | bytes) -> None:
        """A frame for the client: held until the join is answered, then in order."""
        if self.held is not None:
            self.held.append(frame)
        elif not self.ended:
            self.conn.post(frame)

    def on_broadcast(self, event: str, payload: Any, frame: str | bytes) -> None:
        """A broadcast on the topic (`deliver`, inline: this runs per socket of a fan-out)."""
        if event in self.intercept:
            self.submit(Out(event, payload))
        elif self.held is not None:
            self.held.append(frame)
        elif not self.ended:
            self.conn.post(frame)

    def _push(self, msg: frames.Frame) -> None:
        self.deliver(frames.encode(msg))

    def _push_now(self, msg: frames.Frame) -> None:
        """Not held: the join's own reply and what ends the channel."""
        self.conn.post(frames.encode(msg))

    # -- its loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.queue and not self.ended:
                mail = self.queue.popleft()
                try:
                    await self._handle(mail)
                except Refuse as refused:  # a push refused: an error reply, nothing ends
                    if isinstance(mail, In):
                        self._reply(mail.msg, Reply("error", refused.response))
                except Stop as stop:
                    if stop.reply is not None and isinstance(mail, In):
                        self._reply(mail.msg, stop.reply)
                    await self._end("stop")
                except Exception:
                    log.exception("channel %s on %r crashed", self.cls.__name__, self.topic)
                    await self._end("crash")
        finally:
            self.task = None

    async def _handle(self, mail: Mail) -> None:
        match mail:
            case Join(msg):
                await self._join(msg)
            case In(msg):
                channel, socket = self._joined()
                result = await channel.handle_in(msg.event, msg.payload, socket)
                if result is not None:
                    self._reply(msg, result)
            case Leave(msg):
                self._push_now(frames.reply(self.join_ref, msg.ref, self.topic, "ok", {}))
                await self._end("left")
            case Out(event, payload):
                channel, socket = self._joined()
                await channel.handle_out(event, payload, socket)
            case End(reason):
                await self._end(reason)
            case ResendState():
                channel, socket = self._joined()
                await channel.push_presence_state(socket)
            case _:
                assert_never(mail)

    def _joined(self) -> tuple[Channel, ChannelSocket]:
        """The channel and its socket, made by the join (always handled first)."""
        channel, socket = self.channel, self.socket
        assert channel is not None and socket is not None, "mail before the join"
        return channel, socket

    def _reply(self, msg: frames.Frame, result: Any) -> None:
        status, response = (
            (result.status, result.response) if isinstance(result, Reply) else ("ok", result)
        )
        self._push(frames.reply(self.join_ref, msg.ref, self.topic, status, response))

    async def _join(self, msg: frames.Frame) -> None:
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
            await self._refused(msg, refused.response)
            return
        except Exception:
            log.exception("join of %r by %s crashed", self.topic, self.cls.__name__)
            await self._refused(msg, {"reason": "join crashed"})
            return
        if self.ended:
            return
        self._push_now(
            frames.reply(
                self.join_ref, msg.ref, self.topic, "ok", {} if response is None else response
            )
        )
        held, self.held = self.held or [], None
        for frame in held:
            self.conn.post(frame)

    async def _refused(self, msg: frames.Frame, response: Any) -> None:
        self.held = None
        self._push_now(frames.reply(self.join_ref, msg.ref, self.topic, "error", response))
        self._forget()
        self.ended = True
        self.queue.clear()
        await self._release()  # what the join tracked before it refused

    async def end_now(self, reason: EndReason) -> None:
        """End from outside its loop (the connection closed): its presences leave."""
        if self.task is not None and self.task is not asyncio.current_task():
            self.queue.clear()
            self.submit(End(reason))
            task = self.task
            if task is not None:
                await asyncio.shield(task)
            return
        await self._end(reason)

    async def _end(self, reason: EndReason) -> None:
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
            self._push_now(frames.Frame(self.join_ref, self.join_ref, self.topic, "phx_close", {}))
        elif reason == "crash":
            self._push_now(
                frames.Frame(
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
