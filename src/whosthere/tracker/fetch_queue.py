"""The order of fetched diffs: each topic's diffs go out in the order the shard made them.

With a user `fetch`, diffs go through fetcher workers, which may answer in any order. Each
topic has its own queue, so a slow fetch holds back its own topic only. A fetch that fails or
outlasts the timeout releases its diff as it was made (unfetched): a slow or broken callback
never holds up the shard. A fetcher that crashes loses what it held: those fetches are sent
again, at once, when it is back (`lost`). Pure: time comes in as `now` (monotonic seconds).
"""

from __future__ import annotations

import collections
import itertools
import random
from typing import Any

_SENDS = 2  # a diff is sent to a fetcher at most this often (once more after a crash)
DiffPayload = dict[str, dict[str, Any]]  # {"joins": {key: {"metas": [...]}}, "leaves": ...}
Released = tuple[str, list[DiffPayload]]  # a topic and its diffs now due out, in the order made


class _Pending:
    """A diff waiting for its fetch, in the shard's order."""

    __slots__ = ("deadline", "diff", "fetched", "sent", "topic")

    def __init__(self, topic: str, diff: DiffPayload, deadline: float) -> None:
        self.topic = topic
        self.diff = diff  # as made by the shard (released as is if the fetch fails)
        self.fetched: DiffPayload | None = None
        self.deadline = deadline
        self.sent = 1  # times sent to a fetcher


class FetchQueue:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.failures = 0  # fetches that failed or timed out
        self._ids = itertools.count(random.getrandbits(62))  # not reused by a restart
        self._topics: dict[str, collections.deque[_Pending]] = {}  # topic -> diffs in order
        self._by_id: dict[int, _Pending] = {}  # in flight, oldest first

    @property
    def in_flight(self) -> int:
        return len(self._by_id)

    def add(self, topic: str, diff: DiffPayload, now: float) -> int:
        """Queue a diff made now; the returned id names its fetch."""
        fid = next(self._ids)
        pending = _Pending(topic, diff, now + self.timeout)
        self._topics.setdefault(topic, collections.deque()).append(pending)
        self._by_id[fid] = pending
        return fid

    def fetched(self, fid: int, payload: DiffPayload | None) -> Released | None:
        """A fetch came back (`payload` None: it failed, the diff goes out as made).

        None: that fetch is no longer in flight (it timed out; its diff went out already)."""
        pending = self._by_id.pop(fid, None)
        if pending is None:
            return None
        if payload is None:
            self.failures += 1
            payload = pending.diff
        return self._release(pending, payload)

    def expire(self, now: float) -> list[Released]:
        """Give up on the fetches past their deadline: one entry each, oldest first."""
        overdue = [(fid, p) for fid, p in self._by_id.items() if p.deadline <= now]
        for fid, _ in overdue:
            del self._by_id[fid]
        self.failures += len(overdue)
        return [self._release(p, p.diff) for _, p in overdue]

    def lost(
        self, fetcher: int, fetchers: int, now: float
    ) -> tuple[list[tuple[int, str, DiffPayload]], list[Released]]:
        """Fetcher `fetcher` (of `fetchers`; fetch `fid` goes to `fid % fetchers`) started
        again: what was in flight to it died with it. Each such fetch is to be sent again
        (fid, topic, diff), once: a diff whose fetch kills the fetcher twice is released
        as made, so that one poisonous diff cannot restart a fetcher for ever."""
        again: list[tuple[int, str, DiffPayload]] = []
        given_up: list[tuple[int, _Pending]] = []
        for fid, pending in self._by_id.items():
            if fid % fetchers != fetcher:
                continue
            if pending.sent >= _SENDS:
                given_up.append((fid, pending))
                continue
            pending.sent += 1
            pending.deadline = now + self.timeout
            again.append((fid, pending.topic, pending.diff))
        for fid, _ in given_up:
            del self._by_id[fid]
        self.failures += len(given_up)
        return again, [self._release(p, p.diff) for _, p in given_up]

    def _release(self, pending: _Pending, fetched: DiffPayload) -> Released:
        """The topic's diffs that no earlier diff of the topic holds back any more."""
        pending.fetched = fetched
        queue = self._topics[pending.topic]  # still queued: it was in flight
        due: list[DiffPayload] = []
        while queue and (head := queue[0].fetched) is not None:
            queue.popleft()
            due.append(head)
        if not queue:
            del self._topics[pending.topic]
        return pending.topic, due
