"""A worker's writer: what its connections send, written in order, a slow reader kept apart.

Why this shape. A broadcast to 10,000 sockets of one worker must not cost a task switch
per socket, and a client that reads slowly must never hold up the others. So a frame goes
into its connection's `Outbox` in the caller's turn (a deque append, no await), and one
writer task per worker then awaits each waiting outbox's ASGI `send` in turn. A server's
`send` finishes without suspending unless the client's transport is paused for flow
control, and awaiting a coroutine that does not suspend is a plain call: a fan-out costs
one task wake-up, whatever the number of sockets.

A `send` that does suspend holds its writer task until that client reads. The writer then
keeps that connection alone (it writes the rest of that outbox as the client reads) and a
new writer takes the others over. A callback scheduled by each writer as it starts notices
it: it runs at the next loop turn, after the writer's first step, and finds the writer
either finished or waiting inside a `send`. One slow client holds one task, for as long as
it is slow; frames pile up in its outbox, which its connection bounds (`MAX_QUEUED`).

Only public asyncio (`create_task`, `call_soon`, futures, `timeout`); no coroutine is
stepped by hand. It works the same under an eager task factory (a writer then starts in
the caller's turn).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque

from whosthere.channels.asgi import Send

log = logging.getLogger("whosthere.channels")


class Outbox:
    """One connection's frames waiting to be written, then its close."""

    __slots__ = ("close_code", "closed", "closing", "frames", "queued", "send", "settled", "stuck")

    def __init__(self, send: Send) -> None:
        self.send = send  # the ASGI server's send for this connection
        self.frames: deque[str | bytes] = deque()  # text frames as str, binary as bytes
        self.close_code: int | None = None  # the close, written after the frames
        self.closing = False  # nothing more is queued: a close is, or the client is gone
        self.closed = False  # nothing more is written: the close went, or the client is gone
        self.queued = False  # in the writer's queue, or being written
        self.stuck: asyncio.Task[None] | None = None  # a writer waiting on this client
        self.settled: asyncio.Future[None] | None = None  # for `Writer.flush`: no longer queued


class Writer:
    """Writes the outboxes of one event loop's connections (create it in that loop)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: deque[Outbox] = deque()  # outboxes with something to write, in order
        self._started = 0  # writer tasks started, each known by its number
        self._writer: int | None = None  # the number of the writer; None: nothing to write
        self._writing: Outbox | None = None  # the outbox the writer is in

    @property
    def idle(self) -> bool:
        """No writer runs (a writer kept by a slow client aside)."""
        return self._writer is None

    def put(self, out: Outbox, frame: str | bytes) -> None:
        """Queue `frame` on `out`, after what it holds (dropped once `out` is closing)."""
        if out.closing:
            return
        out.frames.append(frame)
        if not out.queued:
            self.enqueue(out)

    def close(self, out: Outbox, code: int) -> None:
        """Close `out`'s WebSocket with `code` once its frames are written; nothing is queued
        after it."""
        if out.closing:
            return
        out.closing = True
        out.close_code = code
        if not out.queued:
            self.enqueue(out)

    def discard(self, out: Outbox) -> None:
        """The client is gone: what waits is dropped, nothing more is written or queued."""
        out.closing = out.closed = True
        out.frames.clear()

    async def flush(self, out: Outbox, timeout: float) -> None:
        """Wait (at most `timeout` seconds) until `out` holds nothing more to write, then
        write nothing more to it: a `send` still waiting on its client is cancelled. After
        this, the connection's `send` is not called again (its ASGI app may return)."""
        try:
            if out.queued:
                settled = out.settled
                if settled is None:
                    settled = out.settled = self._loop.create_future()
                async with asyncio.timeout(timeout):
                    await settled
        except TimeoutError:
            log.debug("a websocket's last frames were not written in %.1f s", timeout)
        finally:
            self.discard(out)
            if out.stuck is not None:
                out.stuck.cancel()

    # -- the writer task -----------------------------------------------------------------

    def enqueue(self, out: Outbox) -> None:
        """Queue `out`, not queued yet, which has something new to write (`put` does it;
        a caller that appended to `out.frames` itself calls it)."""
        out.queued = True
        self._queue.append(out)
        if self._writer is None:
            self._start()

    def _start(self) -> None:
        # The number is the writer's before its task runs: an eager task factory runs the
        # task's first step inside `create_task`.
        self._started += 1
        number = self._writer = self._started
        task = self._loop.create_task(self._write(number))
        task.add_done_callback(functools.partial(self._ended, number))

    async def _write(self, number: int) -> None:
        """Write each queued outbox's frames, then its close, until nothing is left (more may
        come while a `send` waits). A `send` that fails means the client is gone: the rest
        of its outbox is dropped. (One loop, no coroutine per outbox: this runs per socket
        of every fan-out.)"""
        task = asyncio.current_task()
        self._loop.call_soon(self._check, number, task)
        queue = self._queue
        try:
            while queue:
                out = queue.popleft()
                self._writing = out
                send = out.send
                frames = out.frames
                try:
                    while frames and not out.closed:
                        frame = frames.popleft()
                        if isinstance(frame, str):
                            await send({"type": "websocket.send", "text": frame})
                        else:
                            await send({"type": "websocket.send", "bytes": frame})
                    if out.close_code is not None and not out.closed:
                        out.closed = True
                        await send({"type": "websocket.close", "code": out.close_code})
                except Exception as exc:  # the server's own error for a client gone under us
                    log.debug("websocket send failed: %s", exc)
                    out.closing = out.closed = True
                    frames.clear()
                finally:  # written (or given up): no longer queued; `flush` may return
                    out.queued = False
                    out.stuck = None
                    settled = out.settled
                    if settled is not None:
                        out.settled = None
                        if not settled.done():  # a flush that timed out cancelled it
                            settled.set_result(None)
                if self._writer != number:
                    return  # it waited on that client: another writer has the rest
        finally:
            self._ended(number)

    def _check(self, number: int, task: asyncio.Task[None] | None) -> None:
        """A loop turn after writer `number` started: if it is still the writer, it waits in
        a `send` (a client slow to read). It keeps that outbox; a new writer takes the rest."""
        if self._writer != number or task is None or task.done():
            return
        if self._writing is not None:
            self._writing.stuck = task
        self._ended(number)
        if self._queue:
            self._start()

    def _ended(self, number: int, task: object = None) -> None:
        """Writer `number` is the writer no more (also when its task was cancelled before it
        ran: the next put starts another)."""
        if self._writer == number:
            self._writer = None
            self._writing = None
