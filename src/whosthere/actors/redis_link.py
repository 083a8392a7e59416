"""The Redis engine's I/O: two threads beside the actor's loop, so Redis never blocks it.

- The reader holds the pub/sub connection, subscribed to this node's channel and the
  cluster-wide one, and hands every message to the loop through an inproc socket. A quiet
  connection is pinged after a second and given up after `_SILENT_S` (a server gone without
  a word, behind a dead link); it reconnects with back-off.
- The publisher takes frames from a bounded queue the loop fills without waiting, publishes
  them paced (`pace_bytes_s`: a whole-state transfer must not pile up past Redis's pub/sub
  client output-buffer limit on a slow subscriber), and renews the name's lease every
  `renew_s`. What is dropped: a frame that finds the queue full; a frame whose PUBLISH fails;
  and every frame taken while the server is unreachable, until the next try after a back-off
  (0.1 s doubling to 2 s; the lease renewal tries too): what would cross a netsplit is lost,
  not late, and replication repairs it once the server is back.

Each thread reports to the loop on the same inproc socket: `[b"m", data]` a message heard,
`[b"lease", b"held" | b"taken" | b"unreachable", detail]`, `[b"link", b"up" | b"down", why]`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from typing import Any

import redis
import zmq
from redis.backoff import NoBackoff
from redis.retry import Retry

from whosthere.transport.sockets import context

_SILENT_S = 3.0  # a subscribed connection heard nothing (not even its ping's pong): dead
_PING_AFTER_S = 1.0
_BACKOFF_S = (0.1, 2.0)  # first and longest wait before trying the server again
_BURST_BYTES = 8 * 1024 * 1024  # published at once before pacing starts
_FLUSH_S = 0.5  # what is queued when the node stops may take this long to go out
_TICK_S = 0.2  # the threads look at `stopping` this often
_ids = itertools.count()

# the lease: ours if free or ours already (renewed), else untouched; 1 if we hold it now
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def client(url: str) -> redis.Redis:
    """A client that fails fast instead of retrying: the threads do their own back-off."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class RedisLink:
    def __init__(
        self,
        url: str,
        channels: list[str],
        lease: tuple[str, str, float, float],  # key, token, ttl and renewal period (s)
        log: logging.Logger,
        *,
        queue_frames: int = 10_000,
        pace_bytes_s: float = 32 * 1024 * 1024,
    ) -> None:
        self.url = url
        self.channels = channels
        self.lease_key, self.token, self.lease_ttl, self.renew_s = lease
        self.log = log
        self.pace_bytes_s = pace_bytes_s
        self.outbox: queue.Queue[tuple[str, bytes]] = queue.Queue(queue_frames)
        self.stopping = threading.Event()
        self.inbox_endpoint = f"inproc://whosthere-redis-link-{next(_ids)}"
        self.inbox = context().socket(zmq.PULL)
        self.inbox.setsockopt(zmq.RCVHWM, 100_000)
        self.inbox.bind(self.inbox_endpoint)
        self.threads = [
            threading.Thread(target=self._read, name="redis-reader", daemon=True),
            threading.Thread(target=self._publish, name="redis-publisher", daemon=True),
        ]
        # counters (read by the loop for stats; written by the publisher thread)
        self.published = self.published_bytes = self.dropped_full = self.dropped_down = 0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def publish(self, channel: str, data: bytes) -> bool:
        """Queue a frame without waiting; False (dropped) if the queue is full."""
        try:
            self.outbox.put_nowait((channel, data))
        except queue.Full:
            self.dropped_full += 1
            return False
        return True

    def close(self, release_lease: bool) -> None:
        """Stop both threads, once what is queued went out (a departing shard's goodbye; at
        most `_FLUSH_S`); give the name's lease back if asked (a node stopping: its
        successor under that name need not wait)."""
        deadline = time.monotonic() + _FLUSH_S
        while self.outbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=2.5)
        if release_lease:
            try:
                client(self.url).eval(_RELEASE, 1, self.lease_key, self.token)
            except (redis.RedisError, OSError) as exc:
                self.log.info("could not give the name's lease back: %s", exc)
        self.inbox.close(linger=0)

    # -- threads ---------------------------------------------------------------------------

    def _reporter(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = context().socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDTIMEO, 200)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(self.inbox_endpoint)
        return sock

    def _tell(self, sock: zmq.Socket[Any], *frames: bytes) -> None:
        """Hand frames to the loop, waiting while it is behind (the server then keeps the
        rest), until stopped."""
        while not self.stopping.is_set():
            try:
                sock.send_multipart(frames)
                return
            except zmq.Again:
                continue

    def _read(self) -> None:
        sock = self._reporter()
        wait = _BACKOFF_S[0]
        try:
            while not self.stopping.is_set():
                try:
                    self._read_connected(sock)
                    wait = _BACKOFF_S[0]
                except (redis.RedisError, OSError) as exc:
                    self._tell(sock, b"link", b"down", str(exc).encode())
                    self.stopping.wait(wait)
                    wait = min(2 * wait, _BACKOFF_S[1])
        finally:
            sock.close(linger=0)

    def _read_connected(self, sock: zmq.Socket[Any]) -> None:
        conn = client(self.url)
        pubsub = conn.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(*self.channels)
            self._tell(sock, b"link", b"up", b"")
            heard = pinged = time.monotonic()
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=_TICK_S)
                now = time.monotonic()
                if message is None:
                    if now - heard > _SILENT_S:
                        raise redis.ConnectionError(f"nothing heard for {_SILENT_S:g} s")
                    if now - heard > _PING_AFTER_S and now - pinged > _PING_AFTER_S:
                        pubsub.ping()
                        pinged = now
                    continue
                heard = now
                if message["type"] == "message":
                    self._tell(sock, b"m", message["data"])
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()
            with contextlib.suppress(Exception):
                conn.close()

    def _publish(self) -> None:
        sock = self._reporter()
        conn = client(self.url)
        state = _PublisherState()
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                if now >= state.renew_at:
                    state.renew_at = now + self.renew_s
                    self._renew(conn, sock, state)
                try:
                    wait = min(_TICK_S, max(0.0, state.renew_at - now))
                    channel, data = self.outbox.get(timeout=wait)
                except queue.Empty:
                    continue
                self.outbox.task_done()  # taken: sent, or dropped below
                if state.down and time.monotonic() < state.retry_at:
                    self.dropped_down += 1  # the server is away: lost, not late
                    continue
                try:
                    conn.publish(channel, data)
                except (redis.RedisError, OSError) as exc:
                    self.dropped_down += 1
                    self._went_down(sock, state, exc)
                    continue
                self._came_back(sock, state)
                self.published += 1
                self.published_bytes += len(data)
                self._pace(state, len(data))
        finally:
            with contextlib.suppress(Exception):
                conn.close()
            sock.close(linger=0)

    def _renew(self, conn: redis.Redis, sock: zmq.Socket[Any], state: _PublisherState) -> None:
        ttl_ms = str(max(1, int(self.lease_ttl * 1000)))
        try:
            held = conn.eval(_CLAIM, 1, self.lease_key, self.token, ttl_ms)
            holder = b"" if held else conn.get(self.lease_key)
        except (redis.RedisError, OSError) as exc:
            self._tell(sock, b"lease", b"unreachable", str(exc).encode())
            self._went_down(sock, state, exc)
            return
        self._came_back(sock, state)
        detail = holder.encode() if isinstance(holder, str) else bytes(holder or b"")
        self._tell(sock, b"lease", b"held" if held else b"taken", detail)

    def _went_down(self, sock: zmq.Socket[Any], state: _PublisherState, exc: Exception) -> None:
        if not state.down:
            self.log.warning("Redis unreachable for publishing: %s (retrying)", exc)
        state.down = True
        state.retry_at = time.monotonic() + state.wait
        state.wait = min(2 * state.wait, _BACKOFF_S[1])

    def _came_back(self, sock: zmq.Socket[Any], state: _PublisherState) -> None:
        if state.down:
            self.log.warning("Redis reachable again for publishing")
        state.down = False
        state.wait = _BACKOFF_S[0]

    def _pace(self, state: _PublisherState, size: int) -> None:
        """A token bucket: bursts up to _BURST_BYTES, then `pace_bytes_s` on average."""
        now = time.monotonic()
        state.credit = min(_BURST_BYTES, state.credit + (now - state.credit_at) * self.pace_bytes_s)
        state.credit_at = now
        state.credit -= size
        if state.credit < 0:
            self.stopping.wait(-state.credit / self.pace_bytes_s)


class _PublisherState:
    __slots__ = ("credit", "credit_at", "down", "renew_at", "retry_at", "wait")

    def __init__(self) -> None:
        self.down = False
        self.retry_at = 0.0
        self.wait = _BACKOFF_S[0]
        self.renew_at = 0.0
        self.credit = float(_BURST_BYTES)
        self.credit_at = time.monotonic()
