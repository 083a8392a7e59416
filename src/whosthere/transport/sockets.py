"""ZeroMQ sockets: the per-process context, and request channels to actors.

`Dealer` is one DEALER socket to one actor: `call` (request/reply with a deadline) and `cast`
(fire and forget, with a deadline on queueing). Frames with an empty ref that arrive on it are
pushes from the actor and are queued on `pushes`. A `Dealer` belongs to one thread.

`DealerPerThread` gives every thread its own `Dealer` to the same endpoint, so a client object can
be shared by the threads of a process.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import threading
import time
from typing import Any, Protocol, cast

import zmq

from whosthere.errors import ActorError, NodeUnavailable, from_wire
from whosthere.transport import codec, forks
from whosthere.transport.messages import Failed, Ok, Ping
from whosthere.transport.peer_watch import PeerWatch

DEFAULT_TIMEOUT = 5.0  # seconds, as a GenServer.call

_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)  # plain ints: pyzmq's `send_multipart` combines its
_LAST = int(zmq.NOBLOCK)  # flag enums anew for every frame, a few us per message
_POLLIN = int(zmq.POLLIN)


def send_nowait(socket: zmq.Socket[Any], frames: tuple[bytes, ...] | list[bytes]) -> None:
    """`socket.send_multipart(frames, zmq.NOBLOCK)`, for hot paths. All or nothing, as there:
    only the first frame can meet the high-water mark (`zmq.Again`)."""
    send = socket.send
    for frame in frames[:-1]:
        send(frame, _MORE)
    send(frames[-1], _LAST)


def readable(socket: zmq.Socket[Any]) -> bool:
    """Whether a message waits (without the exception a `recv` on an empty socket costs)."""
    return bool(cast(int, socket.get(zmq.EVENTS)) & _POLLIN)


def context() -> zmq.Context[Any]:
    """This process's ZeroMQ context (a new one after a fork)."""
    context: zmq.Context[Any] = zmq.Context.instance()
    return context


def socket(kind: int, *, hwm: int | None = None) -> zmq.Socket[Any]:
    """A socket that never lingers on close (a dead peer must not block shutdown), and
    that refuses frames over `codec.MAX_FRAME_BYTES` unread: ZeroMQ drops the connection of
    a peer that sends one (it reconnects; that message is lost, as `decode` would drop it).
    An XPUB only hears subscriptions, whose filters are topic frames: it refuses more than
    `codec.MAX_SUBSCRIPTION_BYTES` (ZeroMQ stores a filter as one trie node per byte)."""
    sock: zmq.Socket[Any] = context().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    limit = codec.MAX_SUBSCRIPTION_BYTES if kind == zmq.XPUB else codec.MAX_FRAME_BYTES
    sock.setsockopt(zmq.MAXMSGSIZE, limit)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


def bind(sock: zmq.Socket[Any], endpoint: str) -> str:
    """Bind `sock`; returns the endpoint bound (a tcp port given as 0 or * resolved)."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        endpoint = endpoint[:-1] + "*"
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def tcp_endpoint(host: str, port: int = 0) -> str:
    """A tcp:// endpoint (port 0: any free port, resolved by `bind`)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"tcp://{host}:{port}"


class Guard(Protocol):
    """Something whose end makes waiting pointless (the node's supervisor, see
    `client.SupervisorWatch`): polled beside the socket, so a call fails at once."""

    def fileno(self) -> int | None:
        """A file descriptor readable once it has ended, or None (then `check` is polled)."""

    def check(self) -> None:
        """Raise `NodeUnavailable` if it has ended."""


GUARD_POLL = 0.2  # seconds between `check`s of a guard that has no file descriptor
# A request after this long idle first reads the peer watch (3 us): a drop it missed while
# idle must not be taken for one of this request's. Sooner, a drop can only be one the
# request raced (an actor takes far longer to restart), and it fails as one in flight.
PEER_READ_AFTER_S = 0.05


def raise_failure(reply: Failed) -> None:
    """Raise the error an actor sent back, as its own class where whosthere knows it."""
    raise from_wire(reply.kind, reply.message, reply.traceback)


class Dealer:
    """One DEALER socket to one actor's mailbox; not thread-safe."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "actor",
        unbounded: bool = False,
        hwm: int | None = None,
        guard: Guard | None = None,
        watch_peer: bool | None = None,
    ):
        """`unbounded`: an actor's own channel. It never blocks on send (casts queue in
        memory instead, so a slow peer cannot stall the actor's loop), and sends without the
        door checks: what an actor passes on was checked when it came in. A client's
        channel (not unbounded) refuses a request the actor would refuse before sending it
        (`codec.encode(checked=True)`: ValueError, InvalidMeta, MessageTooLarge). `hwm`: an
        actor's own channel too, bounded: this many messages queue before a send blocks (a
        cast with timeout 0 raises `NodeUnavailable` then). `guard`: fail at once when it
        ends (the node's supervisor). `watch_peer` (default: a client's channel): a call
        in flight when the connection drops (the actor died) fails at once (`PeerWatch`)."""
        self.endpoint = endpoint
        self.guard = guard
        self._poller: zmq.Poller | None = None  # the socket, the peer watch, the guard's fd
        self._sleepy_guard = False  # a guard without an fd: checked every GUARD_POLL
        self.timeout = timeout  # default deadline of call/cast, seconds
        self.what = what  # names the peer in errors
        # requests checked against the receiver's limits (a client's, not an actor's)
        self.checked = not unbounded and hwm is None
        self.socket = socket(zmq.DEALER)
        self.socket.setsockopt(zmq.RCVHWM, 0)  # pushes (exit notices) must never be dropped
        if unbounded:
            self.socket.setsockopt(zmq.SNDHWM, 0)
        elif hwm is not None:
            self.socket.setsockopt(zmq.SNDHWM, hwm)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close(linger=0)
            raise NodeUnavailable(f"cannot connect to {what} at {endpoint!r}: {exc}") from exc
        self.pushes: collections.deque[Any] = collections.deque()  # decoded push messages
        self.unflushed = False  # casts sent since the last reply (see `flush`)
        self._refs = itertools.count(1)
        self._last_ref = 0  # the last request's ref (they count up)
        self._lost_upto = 0  # requests up to this ref were in flight when the peer dropped
        self._sent_at = -math.inf  # monotonic time of the last request
        if watch_peer is None:
            watch_peer = self.checked
        self._watch = PeerWatch(self.socket) if watch_peer else None

    def call(self, msg: tuple[Any, ...], timeout: float | None = None) -> Any:
        """Send `msg` and wait for its reply; raises what the actor raised.

        Blocks at most `timeout` seconds (default: the Dealer's), then `NodeUnavailable`.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        return self.result(self.request(msg, deadline, timeout), msg, deadline, timeout)

    def request(self, msg: tuple[Any, ...], deadline: float, timeout: float) -> bytes:
        """Send a call without waiting: its ref, for `result`. Pipelining several requests
        before the first `result` saves a round trip each."""
        now = deadline - timeout
        watch = self._watch
        if watch is not None and now - self._sent_at > PEER_READ_AFTER_S and watch.read():
            self._lost_upto = self._last_ref  # a drop while this was idle: those went before
        self._sent_at = now
        self._last_ref = n = next(self._refs)
        ref = n.to_bytes(8, "big")
        self._send(ref, codec.encode(msg, checked=self.checked), deadline, msg, timeout)
        return ref

    def result(self, ref: bytes, msg: tuple[Any, ...], deadline: float, timeout: float) -> Any:
        """The reply to the request `ref` (requests are answered in the order sent)."""
        number = int.from_bytes(ref, "big")
        while True:
            frames = self._recv(number, deadline, msg, timeout)
            if len(frames) != 2:
                continue
            if frames[0] == ref:
                self.unflushed = False  # the actor handles a peer's messages in order
                reply = codec.decode_reply(frames[1])
                if isinstance(reply, Ok):
                    return reply.value
                if isinstance(reply, Failed):
                    raise_failure(reply)
                raise ActorError(f"unexpected reply {type(reply).__name__} to {type(msg).__name__}")
            if not frames[0]:
                self.pushes.append(codec.decode(frames[1]))
            # else: the late reply of an earlier call that timed out; dropped

    def cast(self, msg: tuple[Any, ...], timeout: float | None = None) -> None:
        """Queue `msg` for the actor without waiting for it to be handled."""
        timeout = self.timeout if timeout is None else timeout
        body = codec.encode(msg, checked=self.checked)
        self._send(b"", body, time.monotonic() + timeout, msg, timeout)
        self.unflushed = True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the actor has handled every cast sent so far (one Ping round trip)."""
        if self.unflushed:
            self.call(Ping(), timeout)

    def recv_pushes(self, timeout: float = 0.0) -> list[Any]:
        """Pushes received so far, waiting up to `timeout` seconds for the first one."""
        if not self.pushes:
            self.socket.poll(max(0, int(timeout * 1000)))
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            if len(frames) == 2 and not frames[0]:
                self.pushes.append(codec.decode(frames[1]))
        out = list(self.pushes)
        self.pushes.clear()
        return out

    def close(self, flush_timeout: float = 0.0, linger: float = 0.0) -> None:
        """Close the socket; with `flush_timeout`, first try to deliver pending casts; with
        `linger`, let ZeroMQ go on delivering them in the background for that long."""
        if self.socket.closed:
            return
        if flush_timeout > 0:
            with contextlib.suppress(NodeUnavailable):
                self.flush(flush_timeout)
        if self._watch is not None:
            self._watch.close()
        self.socket.close(linger=int(linger * 1000))

    def _unavailable(self, msg: tuple[Any, ...], timeout: float) -> NodeUnavailable:
        return NodeUnavailable(
            f"{self.what} at {self.endpoint} did not answer {type(msg).__name__} "
            f"within {timeout:g} s"
        )

    def _send(
        self, ref: bytes, body: bytes, deadline: float, msg: tuple[Any, ...], timeout: float
    ) -> None:
        if self.guard is not None:
            self.guard.check()
        while True:
            try:
                send_nowait(self.socket, (ref, body))
                return
            except zmq.Again:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._unavailable(msg, timeout) from None
                self.socket.poll(max(1, int(remaining * 1000)), zmq.POLLOUT)

    def _recv(self, ref: int, deadline: float, msg: tuple[Any, ...], timeout: float) -> list[bytes]:
        """The next frames for the call `ref`: `NodeUnavailable` past the deadline, once the
        guard ends, or once the peer dropped with the call in flight."""
        sock = self.socket
        poller = self._poller
        if poller is None:
            poller = self._poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if self._watch is not None:
                poller.register(self._watch.socket, zmq.POLLIN)
            fd = None if self.guard is None else self.guard.fileno()
            if fd is not None:
                poller.register(fd, zmq.POLLIN)
            self._sleepy_guard = self.guard is not None and fd is None  # checked, not polled
        guard = self.guard
        sleepy_guard = self._sleepy_guard
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._unavailable(msg, timeout)
            wait = min(remaining, GUARD_POLL) if sleepy_guard else remaining
            events = poller.poll(max(1, int(wait * 1000)))
            if any(source is sock for source, _ in events):
                return sock.recv_multipart()
            if self._watch is not None and self._watch.read():
                self._lost_upto = self._last_ref
            if ref <= self._lost_upto:
                if readable(sock):  # answered before the drop
                    return sock.recv_multipart()
                raise NodeUnavailable(
                    f"{self.what} at {self.endpoint} went away with {type(msg).__name__} in "
                    "flight (it exited or restarted); the call may or may not have taken effect"
                )
            if guard is not None and (sleepy_guard or events):
                guard.check()


_ENDED_THREAD_LINGER_S = 1.0


class _Owned:
    """A thread's Dealer, held in that thread's local storage. When the thread ends, Python
    drops its local storage in that same thread, so the socket is closed by its owner."""

    __slots__ = ("dealer",)

    def __init__(self, dealer: Dealer) -> None:
        self.dealer = dealer

    def __del__(self) -> None:
        # the ending thread's casts may still be queued: delivered first, as `close` does
        with contextlib.suppress(Exception):
            self.dealer.close(flush_timeout=self.dealer.timeout)


class DealerPerThread:
    """Calls and casts to one actor, safe to share between threads (one Dealer per thread).

    ZeroMQ sockets are not thread-safe, so each thread's socket is closed only by that
    thread: when it ends, or at its first call after `close()`. `close()` itself closes the
    calling thread's socket and those of threads that have ended.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "actor",
        guard: Guard | None = None,
    ):
        self.endpoint = endpoint
        self.timeout = timeout
        self.what = what
        self.guard = guard  # handed to every Dealer
        self._local = threading.local()  # .owned: this thread's _Owned
        self._dealers: list[tuple[threading.Thread, Dealer]] = []  # to close those of ended threads
        self._lock = threading.Lock()
        self._closed = False
        self._forks = forks.generation

    def dealer(self) -> Dealer:
        """This thread's Dealer (created on first use; in a forked child, anew). Raises
        `NodeUnavailable` once the connection is closed, closing this thread's socket first."""
        if self._forks != forks.generation:  # the parent's sockets are not ours: dropped
            for _, dealer in self._dealers:  # pyzmq closes nothing in a forked child: this
                with contextlib.suppress(Exception):  # only marks them closed (no warning)
                    dealer.close()
            self._local = threading.local()
            self._dealers = []
            self._lock = threading.Lock()
            self._forks = forks.generation
        owned: _Owned | None = getattr(self._local, "owned", None)
        if self._closed:
            if owned is not None:
                self._local.owned = None  # closes it (here: its owner)
            raise NodeUnavailable(f"connection to {self.endpoint} is closed")
        if owned is None:
            with self._lock:
                if self._closed:
                    raise NodeUnavailable(f"connection to {self.endpoint} is closed")
                dealer = Dealer(
                    self.endpoint, timeout=self.timeout, what=self.what, guard=self.guard
                )
                self._dealers = [*self._live(), (threading.current_thread(), dealer)]
            owned = self._local.owned = _Owned(dealer)
        return owned.dealer

    def call(self, msg: tuple[Any, ...], timeout: float | None = None) -> Any:
        """As `Dealer.call`, on this thread's socket."""
        return self.dealer().call(msg, timeout)

    def cast(self, msg: tuple[Any, ...], timeout: float | None = None) -> None:
        """As `Dealer.cast`, on this thread's socket."""
        self.dealer().cast(msg, timeout)

    def close(self, flush_timeout: float = 1.0) -> None:
        """Deliver this thread's pending casts (up to `flush_timeout` s) and close its socket;
        other threads close theirs (see the class). Later calls raise `NodeUnavailable`.
        Idempotent; returns without waiting for other threads."""
        with self._lock:
            self._closed = True
            self._dealers = self._live()
        owned: _Owned | None = getattr(self._local, "owned", None)
        if owned is not None:
            owned.dealer.close(flush_timeout)
            self._local.owned = None

    def _live(self) -> list[tuple[threading.Thread, Dealer]]:
        """The Dealers of threads still running; those of ended threads are closed (no
        thread can use them any more). Called under the lock."""
        live = []
        for thread, dealer in self._dealers:
            if thread.is_alive():
                live.append((thread, dealer))
            else:  # its casts may still be queued: they go out in the background
                dealer.close(linger=_ENDED_THREAD_LINGER_S)
        return live
