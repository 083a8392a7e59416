"""A shard's diffs through the fetcher workers (the user's `fetch`), released in its order.

`FetchQueue` keeps each topic's diffs in the order made; this sends the fetches, never
waiting: a fetcher whose queue is full gets nothing more, and the diff goes out as made, in
the topic's order. A fetcher that restarted lost what it held: that is sent again at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from whosthere.actors.base import Timer
from whosthere.errors import NodeUnavailable
from whosthere.tracker.fetch_queue import DiffPayload, FetchQueue
from whosthere.transport.messages import Fetch, Fetched, FetcherReady
from whosthere.transport.sockets import Dealer

HELPER_HWM = 10_000  # messages queued to a fetcher or the presence client actor
CHECK_EVERY_S = 0.05  # how often overdue fetches are looked for

Publish = Callable[[str, DiffPayload], None]  # a topic's diff, due out


class Fetching:
    def __init__(
        self,
        endpoints: list[str],
        timeout: float,
        shard: int,
        publish: Publish,
        log: logging.Logger,
    ) -> None:
        # bounded: a slow `fetch` must not grow the shard's process without end
        self.fetchers = [Dealer(e, what="fetcher", hwm=HELPER_HWM) for e in endpoints]
        self.queue = FetchQueue(timeout)
        self.shard = shard
        self.publish = publish
        self.log = log
        self.overflows = 0  # diffs published unfetched: the fetchers' queues were full

    def start(self, call_later: Callable[[float, Callable[[], None]], Timer]) -> None:
        """Look for overdue fetches every `CHECK_EVERY_S`."""

        def check() -> None:
            call_later(CHECK_EVERY_S, check)  # first: whatever fails below
            self.expire(time.monotonic())

        call_later(CHECK_EVERY_S, check)

    def add(self, topic: str, diff: DiffPayload, now: float) -> None:
        self._send(self.queue.add(topic, diff, now), topic, diff)

    def _send(self, fid: int, topic: str, diff: DiffPayload) -> None:
        """To fetcher `fid % fetchers`; if its queue is full, the diff goes out as made."""
        fetcher = self.fetchers[fid % len(self.fetchers)]
        try:
            fetcher.cast(Fetch(self.shard, fid, topic, diff["joins"], diff["leaves"]), 0)
        except NodeUnavailable:
            self.overflows += 1
            if self.overflows % 1000 == 1:
                self.log.warning(
                    "shard.%d: fetchers %d diffs behind; %d published unfetched",
                    self.shard,
                    HELPER_HWM,
                    self.overflows,
                )
            self._release(self.queue.fetched(fid, None))

    def fetched(self, msg: Fetched) -> None:
        released = self.queue.fetched(msg.id, msg.payload)
        if released is not None and msg.payload is None:
            self.log.warning(
                "shard.%d: fetch failed for topic %r; publishing the diff unfetched: %s",
                self.shard,
                released[0],
                msg.error,
            )
        self._release(released)

    def fetcher_ready(self, msg: FetcherReady, now: float) -> None:
        """A fetcher (re)started: the fetches it held died with it; they go again now
        rather than wait for the timeout."""
        if not 0 <= msg.fetcher < len(self.fetchers) or msg.incarnation == 0:
            return  # the node's first fetcher gets everything sent to its slot
        again, given_up = self.queue.lost(msg.fetcher, len(self.fetchers), now)
        if again or given_up:
            self.log.warning(
                "shard.%d: fetcher %d restarted: %d fetch(es) sent again, %d published "
                "unfetched after a second loss",
                self.shard,
                msg.fetcher,
                len(again),
                len(given_up),
            )
        for fid, topic, diff in again:
            self._send(fid, topic, diff)
        for released in given_up:
            self._release(released)

    def expire(self, now: float) -> None:
        """Give up on overdue fetches: their diffs go out as made."""
        for released in self.queue.expire(now):
            self.log.warning(
                "shard.%d: fetch for topic %r took over %g s; publishing it unfetched",
                self.shard,
                released[0],
                self.queue.timeout,
            )
            self._release(released)

    def _release(self, released: tuple[str, list[DiffPayload]] | None) -> None:
        if released is None:
            return  # timed out and published unfetched already
        topic, diffs = released
        for diff in diffs:
            self.publish(topic, diff)

    def close(self) -> None:
        for fetcher in self.fetchers:
            fetcher.close(flush_timeout=0.0)


def fetch_stats(fetching: Fetching | None) -> dict[str, int]:
    """For `node.status()`: zeros for a shard without fetchers."""
    if fetching is None:
        return {"fetching": 0, "fetch_failures": 0, "fetch_overflows": 0}
    queue = fetching.queue
    return {
        "fetching": queue.in_flight,
        "fetch_failures": queue.failures,
        "fetch_overflows": fetching.overflows,
    }
