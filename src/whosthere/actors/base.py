"""The actor: one OS process, one mailbox socket, one loop.

Phases, as pykka's: setup (`on_start`: bind, connect), running (the loop below), teardown
(`on_stop`, then every socket is closed). The loop polls the mailbox, any extra sockets or file
descriptors (`add_reader`) and the signal wakeup fd, and runs due timers (`call_later`).

Long work (merging a peer's whole state) runs in slices (`start_work`): timers, the mailbox
and other sources are served between slices, so heartbeats go out and calls are answered on
time. `input_read_at` tells how far the mailbox has been read: a peer is only silent if its
messages are not waiting here.

A message `Foo` is handled by the method `on_foo` (snake case of the class name): the one
routing rule, `routes`, which actors also use for messages that arrive wrapped in others (a
shard's replication messages, a cluster actor's frames from peers). For a call,
the handler's return value is the reply; a handler that answers later returns `NOREPLY` and
keeps `self.request` to pass to `reply`. An exception in a handler is logged with its
traceback and sent back to the caller as an error; the actor keeps serving. A frame that does
not decode is logged and dropped (and the caller, if any, gets `MalformedFrame`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import re
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, NamedTuple

import zmq

from whosthere.config import NodeConfig
from whosthere.errors import InvalidMeta, MalformedFrame, WhosthereError
from whosthere.transport import codec
from whosthere.transport.messages import MAX_CALLS, ActorReady, Calls, Failed, GetStats, Ok, Ping
from whosthere.transport.sockets import Dealer, bind, readable, send_nowait, socket

log = logging.getLogger("whosthere.actor")

MAILBOX_BATCH = 512  # messages handled per wakeup before other sources get a turn
WORK_SLICE_S = 0.02  # long work runs this long between two turns of timers and readers
NOREPLY: Any = object()  # returned by a handler that will `reply` later


@dataclass
class ActorSpec:
    """Everything a spawned actor process needs; travels as JSON on its command line."""

    name: str  # unique in the node: "pubsub", "shard.0", ... (see `topology`)
    actor: str  # "module:Class"
    endpoint: str  # the mailbox, bound by the actor
    runtime_dir: str  # the node's private directory
    supervisor: str  # the supervisor's mailbox endpoint ("" for the supervisor itself)
    parent_pid: int  # the process that must outlive this one
    node_name: str
    options: dict[str, Any] = field(default_factory=dict)  # settings of an actor outside a node
    log_level: str = "WARNING"
    index: int = 0  # the actor's slot in its pool (shard i, fetcher i)
    config: NodeConfig | None = None  # the node's, for the actors of a node
    incarnation: int = 0  # restarts of this slot before this process: 0 at the node's start

    @property
    def node(self) -> NodeConfig:
        """The node's configuration (every actor of a node has it)."""
        if self.config is None:
            raise TypeError(f"actor {self.name!r} runs outside a node: it has no node config")
        return self.config

    def to_json_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["config"] = None if self.config is None else self.config.to_json()
        return raw

    @classmethod
    def from_json_dict(cls, raw: dict[str, Any]) -> ActorSpec:
        config = raw.get("config")
        return cls(**{**raw, "config": None if config is None else NodeConfig.from_json(config)})


class Request(NamedTuple):
    """Where to send the reply of the call being handled."""

    identity: bytes  # the caller's ROUTER identity
    ref: bytes  # the caller's request id


class Timer:
    """A pending `call_later`; `cancel()` it to skip it."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def routes(owner: object, classes: Iterable[type]) -> dict[type, Callable[..., Any]]:
    """Each message class to its handler on `owner`: `FooBar` goes to `owner.on_foo_bar`.

    A class without its handler is a bug found at construction, not at the first message."""
    return {cls: getattr(owner, "on_" + _snake(cls.__name__)) for cls in classes}


class Actor:
    """Base of every actor process. Subclasses define `on_<message>` handlers and hooks."""

    handles: ClassVar[tuple[type, ...]] = ()  # message classes beyond Ping/GetStats
    batchable: ClassVar[tuple[type, ...]] = ()  # those a `Calls` batch may hold
    # False: the actor serves only once something it waits for came, and calls
    # `report_ready()` then (the Node's `start()` waits for it)
    ready_after_start: ClassVar[bool] = True

    def __init__(self, spec: ActorSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.log = logging.getLogger(f"whosthere.{spec.name}")
        self.mailbox = socket(zmq.ROUTER)
        self.mailbox.setsockopt(zmq.ROUTER_MANDATORY, 1)  # pushes to a gone peer fail loudly
        self.mailbox.setsockopt(zmq.SNDHWM, 0)  # replies and pushes are never dropped
        self.endpoint = spec.endpoint  # the mailbox endpoint, once bound
        self.request: Request | None = None  # the call being handled, None for a cast
        self.sender: bytes = b""  # ROUTER identity of the message being handled
        self._readers: dict[Any, Callable[[], None]] = {}
        self._poller = zmq.Poller()
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._stopping = False
        self._work: list[Iterator[None]] = []  # long work in slices, oldest first
        # monotonic time up to which every message that came was read: the mailbox was
        # seen empty then
        self.input_read_at = time.monotonic()
        self._wakeup_r = -1
        self._reported_ready = False
        self.supervisor: Dealer | None = None  # casts to the supervisor (None for it)
        self._handlers = routes(self, (Ping, GetStats, Calls, *self.handles))

    # -- hooks -----------------------------------------------------------------------------

    def on_start(self) -> None:
        """Bind and connect extra sockets; runs before the actor reports ready."""

    def on_stop(self) -> None:
        """Release what `on_start` took; runs after the loop ends (sockets still open)."""

    def stats(self) -> dict[str, Any]:
        """Counters for `node.status()`."""
        return {}

    def on_idle(self) -> None:
        """Runs after each wake-up's messages and timers: flush what they batched up."""

    def begin_message(self) -> None:
        """Runs before each message from the mailbox is decoded and handled."""

    def end_message(self) -> None:
        """Runs after each message from the mailbox, once its reply (if any) went out, even
        if its handler failed."""

    # -- built-in handlers -----------------------------------------------------------------

    def on_ping(self, msg: Ping) -> int:
        return os.getpid()

    def on_get_stats(self, msg: GetStats) -> dict[str, Any]:
        return self.stats()

    # -- services for subclasses -----------------------------------------------------------

    def add_reader(self, source: Any, callback: Callable[[], None]) -> None:
        """Call `callback` whenever `source` (socket or fd) is readable."""
        self._readers[source] = callback
        self._poller.register(source, zmq.POLLIN)

    def remove_reader(self, source: Any) -> None:
        if self._readers.pop(source, None) is not None:
            self._poller.unregister(source)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` in the loop after `delay` seconds."""
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._timer_seq), timer))
        return timer

    def start_work(self, work: Iterator[None]) -> None:
        """Run `work` (a generator) in slices of about `WORK_SLICE_S`, each `next()` a step
        that leaves the actor consistent; timers, messages and other readers are served
        between slices (an actor defers what must not overtake the work). Work started
        while some runs runs after it."""
        self._work.append(work)

    @property
    def working(self) -> bool:
        """Whether long work is under way."""
        return bool(self._work)

    def _work_slice(self) -> None:
        end = time.monotonic() + WORK_SLICE_S
        while self._work:
            try:
                next(self._work[0])
            except StopIteration:
                self._work.pop(0)
            except Exception:  # a bug in one piece of work must not end the actor
                self._work.pop(0)
                self.log.exception("%s: long work failed", self.name)
            if time.monotonic() >= end:
                break

    def reply(self, request: Request, value: Any) -> None:
        """Answer a call that a handler deferred with NOREPLY."""
        self._send_reply(request, Ok(value))

    def push(self, identity: bytes, msg: tuple[Any, ...]) -> bool:
        """Send an unsolicited message to a connected peer; False if that peer is gone."""
        try:
            send_nowait(self.mailbox, (identity, b"", codec.encode(msg)))
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise
        return True

    def stop(self) -> None:
        """End the loop after the current message."""
        self._stopping = True

    # -- the loop --------------------------------------------------------------------------

    def bind(self) -> None:
        self.endpoint = bind(self.mailbox, self.spec.endpoint)  # as bound (tcp port resolved)
        self.add_reader(self.mailbox, self._on_mailbox)

    def run(self, wakeup_fd: int = -1) -> None:
        """Setup, serve until stopped, teardown."""
        self.setup(wakeup_fd)
        try:
            self._serve()
        finally:
            self.teardown()

    def setup(self, wakeup_fd: int = -1) -> None:
        """Bind the mailbox, connect to the supervisor, `on_start`, and report ready
        (unless the actor reports it later). `run` calls it; a test may instead, then
        drive the loop with `turn` and end with `teardown`."""
        self._wakeup_r = wakeup_fd
        if wakeup_fd >= 0:
            self.add_reader(wakeup_fd, self._on_signal)
        self.bind()
        if self.spec.supervisor:
            self.supervisor = Dealer(self.spec.supervisor, what="supervisor", unbounded=True)
        self.on_start()
        if self.ready_after_start:
            self.report_ready()

    def teardown(self) -> None:
        """`on_stop`, then every socket closed."""
        try:
            self.on_stop()
        finally:
            self._close()

    def report_ready(self) -> None:
        """Tell the supervisor this actor serves (once; later calls do nothing)."""
        if self._reported_ready:
            return
        self._reported_ready = True
        if self.supervisor is not None:
            self.supervisor.cast(ActorReady(self.name, os.getpid()))
        self.announce_ready()

    def announce_ready(self) -> None:
        """Hook for the root of the tree, which has no supervisor to tell."""

    def _serve(self) -> None:
        while not self._stopping:
            self.turn()

    def turn(self, timeout: float | None = None) -> None:
        """One wake-up of the loop: wait for a source (at most `timeout` seconds, or until
        the next timer; at once if long work waits), serve what is ready, run due timers
        and a slice of long work, then `on_idle`."""
        poll = self._poller.poll
        readers = self._readers
        mailbox = self.mailbox
        wait = None if timeout is None else max(0, int(timeout * 1000))
        if self._work:
            wait = 0
        elif self._timers:
            due = max(0, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)
            wait = due if wait is None else min(wait, due)
        ready = poll(wait)
        if not any(source is mailbox for source, _ in ready):
            self.input_read_at = time.monotonic()  # nothing waits in the mailbox
        for source, _ in ready:
            callback = readers.get(source)
            if callback is not None:
                try:
                    callback()
                except Exception:  # a bug in one handler must not end the actor
                    self.log.exception("%s: reader %r failed", self.name, callback)
            if self._stopping:
                break
        else:
            self._run_timers()
            if self._work:
                self._work_slice()
        try:
            self.on_idle()
        except Exception:
            self.log.exception("%s: on_idle failed", self.name)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            try:
                timer.callback()
            except Exception:
                self.log.exception("%s: timer callback %r failed", self.name, timer.callback)

    def _on_signal(self) -> None:
        try:
            data = os.read(self._wakeup_r, 64)
        except BlockingIOError:
            return
        if any(sig in (signal.SIGTERM, signal.SIGINT) for sig in data):
            self.log.info("%s: stopping on signal", self.name)
            self.on_terminate()

    def on_terminate(self) -> None:
        """SIGTERM arrived: stop after the current message (the supervisor stops its tree first)."""
        self.stop()

    def _on_mailbox(self) -> None:
        """Up to `MAILBOX_BATCH` messages, ended early by a due timer, or by `WORK_SLICE_S`
        when long work waits (it gets its turn, as messages get theirs between its slices)."""
        recv = self.mailbox.recv_multipart
        timers = self._timers
        end = time.monotonic() + WORK_SLICE_S
        for _ in range(MAILBOX_BATCH):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                self.input_read_at = time.monotonic()
                return
            self._handle(frames)
            if self._stopping:
                return
            if not readable(self.mailbox):
                self.input_read_at = time.monotonic()
                return
            now = time.monotonic()
            if timers and timers[0][0] <= now:
                return  # a heartbeat must not wait for a long queue of messages
            if self._work and now >= end:
                return

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            self.log.warning("%s: dropped a message of %d frames (want 3)", self.name, len(frames))
            return
        identity, ref, body = frames
        request = Request(identity, ref) if ref else None
        self.sender = identity
        self.begin_message()
        try:
            reply = self._answer(body, request)
            if request and reply is not None:
                self._send_reply(request, reply)
        finally:
            self.end_message()

    def _answer(
        self, body: bytes, request: Request | None, allowed: tuple[type, ...] | None = None
    ) -> Ok | Failed | None:
        """Decode and handle one message: its reply (None: it answers later, `NOREPLY`).
        `allowed`: the message types accepted (those of a `Calls` batch)."""
        try:
            msg = codec.decode(body)
        except MalformedFrame as exc:
            self.log.warning("%s: dropped malformed frame: %s", self.name, exc)
            return Failed("MalformedFrame", str(exc), "")
        handler = self._handlers.get(type(msg))
        if handler is None or (allowed is not None and type(msg) not in allowed):
            text = f"{self.name} does not handle {type(msg).__name__}"
            text += "" if handler is None else " in a Calls batch"
            self.log.warning("%s: dropped message: %s", self.name, text)
            return Failed("MalformedFrame", text, "")
        self.request = request
        try:
            result = handler(msg)
        except WhosthereError as exc:
            self.log.debug("%s: %s refused: %s", self.name, type(msg).__name__, exc)
            return Failed(type(exc).__name__, str(exc), "")
        except Exception as exc:
            tb = traceback.format_exc()
            self.log.error("%s: handler for %s raised\n%s", self.name, type(msg).__name__, tb)
            return Failed("ActorError", f"{type(exc).__name__}: {exc}", tb)
        finally:
            self.request = None
        return None if result is NOREPLY else Ok(result)

    def on_calls(self, msg: Calls) -> list[bytes]:
        """Several calls in one frame (an asyncio client's concurrent calls): each handled as
        if it came alone, in order, and every reply in one frame. Only `batchable` messages:
        handlers that answer at once."""
        if self.request is None:
            raise MalformedFrame("Calls must be a call")
        if len(msg.items) > MAX_CALLS:
            raise MalformedFrame(f"a Calls batch holds at most {MAX_CALLS} calls")
        request = self.request
        replies = []
        for item in msg.items:
            reply = self._answer(item, request, self.batchable)
            if reply is None:  # never for a batchable message: said rather than lost
                reply = Failed("ActorError", "a batched call answered later", "")
            try:
                replies.append(codec.encode(reply))
            except InvalidMeta as exc:
                replies.append(codec.encode(Failed("InvalidMeta", f"reply: {exc}", "")))
        return replies

    def before_reply(self) -> None:
        """Hook: runs before every reply goes out (the shard writes its journal here)."""

    def _send_reply(self, request: Request, reply: Ok | Failed) -> None:
        self.before_reply()
        try:
            body = codec.encode(reply)
        except InvalidMeta as exc:
            body = codec.encode(Failed("InvalidMeta", f"reply cannot be sent: {exc}", ""))
        if len(body) > codec.MAX_FRAME_BYTES:  # the caller's socket would drop it unread
            text = f"reply of {len(body)} bytes is over the {codec.MAX_FRAME_BYTES}-byte limit"
            body = codec.encode(Failed("MessageTooLarge", text, ""))
        try:
            send_nowait(self.mailbox, (request.identity, request.ref, body))
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            # the caller is gone; nobody to tell

    def _close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.close()
        for source in list(self._readers):
            if isinstance(source, zmq.Socket):
                source.close(linger=0)
        self.mailbox.close(linger=0)
