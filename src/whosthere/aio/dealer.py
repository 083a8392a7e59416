"""One DEALER to one actor's mailbox, for an asyncio event loop: calls pipelined.

Every call gets a reference of its own (never reused), its future waits in `pending`, and one
reader task hands each reply to the future of its reference. A call that times out or is
cancelled takes its future out of `pending` first, so its reply, should it come later, finds
nobody and is dropped: no later call can mistake it for its own. Many calls in flight from
one loop share the socket: the actor reads them in one wake-up and answers each.

Calls made in one turn of the loop with `batch=True` go in `Calls` frames of
`FRAME_CALLS`, each answered in one frame: a thousand tasks awaiting a track each cost the
node and the loop a few frames, not a thousand, and the actor works on the first frame while
the loop makes the next. Each call keeps its own reference, deadline and
error. A call made while nothing else is in flight goes at once, alone (one caller awaiting
call after call waits for no turn of the loop).

When the node's supervisor dies (its pidfd becomes readable) every call in flight fails at
once with `NodeUnavailable`, as the synchronous client's do; so do the calls sent to the
actor before its connection dropped (it died or restarted: `transport.peer_watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from whosthere.aio import readers
from whosthere.client import SupervisorWatch
from whosthere.errors import ActorError, MalformedFrame, NodeUnavailable
from whosthere.transport import codec
from whosthere.transport.messages import Calls, Failed, Ok
from whosthere.transport.peer_watch import PeerWatch
from whosthere.transport.sockets import DEFAULT_TIMEOUT, raise_failure

# A turn's calls go out in frames of this many as they are made, not all at the turn's end:
# the actor starts on the first frame while the loop makes the rest. With a thousand tasks'
# calls in one frame, the loop and the actor took turns, each idle while the other worked
# (W-P tracks, one shard: 32,000/s in one frame, 48,000-52,000/s in frames of 100).
FRAME_CALLS = 100  # at most messages.MAX_CALLS


class AsyncDealer:
    """Calls to one actor from one event loop (not thread-safe: one loop, one dealer)."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "actor",
        guard: SupervisorWatch | None = None,
        on_push: Callable[[Any], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.on_push = on_push  # gets what the actor sends unasked (decoded), in order
        self.timeout = timeout
        self.what = what
        self.guard = guard
        self.socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)  # a burst of calls queues; each has a deadline
        self.socket.setsockopt(zmq.MAXMSGSIZE, codec.MAX_FRAME_BYTES)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close(linger=0)
            raise NodeUnavailable(f"cannot connect to {what} at {endpoint!r}: {exc}") from exc
        self.pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._batch: list[tuple[bytes, bytes]] = []  # (ref, body) of this turn's calls
        self._batches: dict[bytes, list[bytes]] = {}  # a Calls frame's ref -> its calls' refs
        self._refs = itertools.count(1)
        # timeout -> {ref: (deadline, future, msg)}, each in deadline order (see _set_deadline)
        self._deadlines: dict[float, dict[bytes, tuple[float, asyncio.Future[bytes], Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when `_timer` fires (its `when()`, without the call)
        self._watched = False  # bound, reading, and the supervisor's death will be heard
        self._reader: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guarded_fd: int | None = None
        self._watch = PeerWatch(self.socket)
        self._watch_fd: int | None = None  # on the loop's readers
        self.closed = False

    async def call(
        self, msg: tuple[Any, ...], timeout: float | None = None, *, batch: bool = False
    ) -> Any:
        """Send `msg`, await its reply; raises what the actor raised, or `NodeUnavailable`
        past `timeout` seconds (default: the dealer's). `batch`: it may go with the other
        calls of this turn of the loop, in one frame (the actor must take it so)."""
        if self.closed:
            raise NodeUnavailable(f"the connection to {self.what} is closed")
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        reader = self._reader
        if not self._watched or loop is not self._loop or reader is None or reader.done():
            self._start(loop)
        ref = next(self._refs).to_bytes(8, "big")
        body = codec.encode(msg, checked=True)
        future: asyncio.Future[bytes] = loop.create_future()
        self.pending[ref] = future
        self._set_deadline(loop, ref, future, msg, timeout)
        try:
            if batch and (self._batch or len(self.pending) > 1):
                waiting = self._batch
                waiting.append((ref, body))
                if len(waiting) == 1:  # after the other tasks of this turn
                    loop.call_soon(self._send_batch)
                elif len(waiting) >= FRAME_CALLS:  # the actor starts on these meanwhile
                    self._send_batch()
            elif batch:  # nothing else in flight: a lone call goes at once
                self.socket.send_multipart((ref, body), zmq.NOBLOCK)  # no high-water mark
            else:
                await self.socket.send_multipart((ref, body))
            reply = codec.decode_reply(await future)
        finally:
            self.pending.pop(ref, None)  # a reply after this is nobody's: dropped
            self._deadlines[timeout].pop(ref, None)
        if isinstance(reply, Ok):
            return reply.value
        if isinstance(reply, Failed):
            raise_failure(reply)
        raise ActorError(f"unexpected reply {type(reply).__name__} to {type(msg).__name__}")

    async def cast(self, msg: tuple[Any, ...]) -> None:
        """Send `msg` without waiting for it to be handled (it never waits for room)."""
        if self.closed:
            raise NodeUnavailable(f"the connection to {self.what} is closed")
        if self.guard is not None:
            self.guard.check()
        await self.socket.send_multipart((b"", codec.encode(msg, checked=True)))

    def cast_nowait(self, msg: tuple[Any, ...]) -> None:
        """`cast` from code that cannot await (the queue has no limit: it never waits)."""
        if self.closed:
            raise NodeUnavailable(f"the connection to {self.what} is closed")
        self.socket.send_multipart((b"", codec.encode(msg, checked=True)), zmq.NOBLOCK)

    def start_reading(self) -> None:
        """Read pushes with no call in flight (from the first call on, it reads anyway)."""
        if not self.closed:
            self._start(asyncio.get_running_loop())

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to `loop`, start the reader, check the supervisor (then watch its pidfd on the
        loop: `_watched`, and calls need not look again)."""
        if self.guard is not None:
            self.guard.check()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("an AsyncDealer serves the event loop it was first used in")
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read(), name=f"whosthere {self.what} replies")
        if self._watch_fd is None:
            self._watch_fd = watch_fd = self._watch.fileno()
            readers.add(loop, watch_fd, self._peer_event)
            self._peer_event()  # ZeroMQ signals its fd only once what came before was read
        fd = self.guard.fileno() if self.guard is not None else None
        if fd is not None and self._guarded_fd is None:
            readers.add(loop, fd, self._supervisor_gone)
            self._guarded_fd = fd
        self._watched = self._guarded_fd is not None or self.guard is None

    def _send_batch(self) -> None:
        calls, self._batch = self._batch, []
        if self.closed:
            return  # their futures failed with the close
        for i in range(0, len(calls), FRAME_CALLS):
            chunk = calls[i : i + FRAME_CALLS]
            if len(chunk) == 1:
                ref, body = chunk[0]
            else:
                ref = next(self._refs).to_bytes(8, "big")
                self._batches[ref] = [r for r, _ in chunk]
                body = codec.encode(Calls([b for _, b in chunk]))
            self.socket.send_multipart((ref, body), zmq.NOBLOCK)  # no high-water mark

    def _set_deadline(
        self,
        loop: asyncio.AbstractEventLoop,
        ref: bytes,
        future: asyncio.Future[bytes],
        msg: tuple[Any, ...],
        timeout: float,
    ) -> None:
        """Deadlines without a timer per call: calls of one timeout expire in the order they
        were made, so one timer, at the earliest deadline of all, serves them all."""
        at = loop.time() + timeout
        calls = self._deadlines.get(timeout)
        if calls is None:
            calls = self._deadlines[timeout] = {}
        calls[ref] = (at, future, msg)
        if self._timer is None or at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(at, self._expire)
            self._timer_at = at

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None, "deadlines are set once the dealer serves a loop"
        now = loop.time()
        earliest = None
        for timeout, calls in self._deadlines.items():
            due = []
            for ref, (at, future, msg) in calls.items():
                if at > now:
                    earliest = at if earliest is None else min(earliest, at)
                    break
                due.append(ref)
                if not future.done():
                    future.set_exception(
                        NodeUnavailable(
                            f"{self.what} at {self.endpoint} did not answer {type(msg).__name__} "
                            f"within {timeout:g} s"
                        )
                    )
            for ref in due:
                del calls[ref]
        if earliest is not None and not self.closed:
            self._timer = loop.call_at(earliest, self._expire)
            self._timer_at = earliest

    async def _read(self) -> None:
        pending = self.pending
        while True:
            try:
                frames = await self.socket.recv_multipart()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            if len(frames) != 2:
                continue
            refs = self._batches.pop(frames[0], None)
            if refs is not None:
                self._answer_batch(refs, frames[1])
                continue
            if not frames[0]:
                self._push(frames[1])
                continue
            future = pending.get(frames[0])
            if future is not None and not future.done():
                future.set_result(frames[1])
            # else: a cancelled or timed-out call's reply: dropped

    def _push(self, body: bytes) -> None:
        if self.on_push is None:
            return
        try:
            self.on_push(codec.decode(body))
        except MalformedFrame:
            return  # as the synchronous dealer: a push it cannot read is dropped

    def _answer_batch(self, refs: list[bytes], body: bytes) -> None:
        """Each call of a `Calls` frame gets its own reply (all the same one if the frame as
        a whole failed: an actor that does not take batches says so to each)."""
        try:
            reply = codec.decode_reply(body)
        except MalformedFrame:
            reply = None
        value = reply.value if isinstance(reply, Ok) else None
        if isinstance(value, list) and len(value) == len(refs):
            bodies = value
        else:
            bodies = [body] * len(refs)
        for ref, one in zip(refs, bodies, strict=True):
            future = self.pending.get(ref)
            if future is not None and not future.done():
                future.set_result(one)

    def _supervisor_gone(self) -> None:
        self._stop_guard()
        self._watched = False
        guard = self.guard
        assert guard is not None, "only a guarded dealer watches the supervisor"
        error = NodeUnavailable(f"the node's supervisor (pid {guard.pid}) has exited")
        guard.exited = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)

    def _peer_event(self) -> None:
        """The actor's connection dropped: the calls sent to it are lost (those of this
        turn's batch, not sent yet, wait for the next actor)."""
        if not self._watch.read():
            return
        unsent = {ref for ref, _ in self._batch}
        error = NodeUnavailable(
            f"{self.what} at {self.endpoint} went away with calls in flight (it exited or "
            "restarted); they may or may not have taken effect"
        )
        for ref, future in self.pending.items():
            if ref not in unsent and not future.done():
                future.set_exception(error)

    def _stop_guard(self) -> None:
        if self._guarded_fd is not None and self._loop is not None:
            readers.remove(self._loop, self._guarded_fd, self._supervisor_gone)
            self._guarded_fd = None

    async def aclose(self) -> None:
        """Close the socket; calls in flight fail with `NodeUnavailable`. Idempotent."""
        self.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_guard()
        if self._watch_fd is not None and self._loop is not None:
            readers.remove(self._loop, self._watch_fd, self._peer_event)
            self._watch_fd = None
        self._watch.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reader is not None:
            self._reader.cancel()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(NodeUnavailable(f"the connection to {self.what} closed"))
        self.socket.close(linger=0)
