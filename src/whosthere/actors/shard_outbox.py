"""What a shard publishes, on its way to the PubSub actor: one `PublishMany` per wake-up.

A diff goes at once after a quiet spell; diffs that follow the last send within `gap` wait
for the gap's end and go together. A caller tracking one presence after another would
otherwise wake the PubSub process once per track, on the cores its own round trips need.
An exit's leaves wait for no gap: "the instant one dies" (an owner killed just after the
diff of its own join waited up to a millisecond); many exits at once still go in one frame
per wake-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from whosthere.actors.base import Timer
from whosthere.topology import EXITS_TOPIC
from whosthere.tracker.state import Element
from whosthere.transport import codec
from whosthere.transport.messages import PublishMany
from whosthere.transport.sockets import Dealer

PUBLISH_GAP_S = 0.001
EXIT_TOPICS = 20  # topics named in an exit's notice, at most
MAX_BYTES = 8 * 1024 * 1024  # diffs batched into one frame at most (far below the limit)


class ShardOutbox:
    def __init__(
        self,
        pubsub: Dealer,
        call_later: Callable[[float, Callable[[], None]], Timer],
        before_send: Callable[[], None],
        *,
        gap: float = PUBLISH_GAP_S,
    ) -> None:
        """`before_send` runs before each frame goes (the shard writes its journal)."""
        self.pubsub = pubsub
        self.call_later = call_later
        self.before_send = before_send
        self.gap = gap
        self.items: list[list[Any]] = []  # [topic, event, packed payload], in the order made
        self.bytes = 0
        self.sent_at = 0.0  # monotonic time of the last send
        self.timer: Timer | None = None  # set while items wait out the gap
        self.urgent = False  # an exit's leaves wait: the gap is waived for this wake-up

    def add(self, topic: str, event: str, packed: bytes) -> None:
        self.items.append([topic, event, packed])
        self.bytes += len(packed)
        if self.bytes > MAX_BYTES:
            self.send()

    def add_exit(self, pid: int, left: list[Element], seen_at: float, left_at: float) -> None:
        """Tell the node's subscribers of `EXITS_TOPIC` that process `pid` exited (seen by
        the supervisor at `seen_at`, wall clock) and which of its presences left here."""
        topics = sorted({e.topic for e in left})[:EXIT_TOPICS]
        told = {"pid": pid, "presences": len(left), "topics": topics}
        told.update(seen_at=seen_at, left_at=left_at)
        self.add(EXITS_TOPIC, "exit", codec.pack_value(told))
        self.urgent = True

    def end_of_turn(self, now: float) -> None:
        """The loop's wake-up ends: send what waits, or when the gap since the last ends."""
        if not self.items or (self.timer is not None and not self.urgent):
            return
        wait = self.sent_at + self.gap - now
        if wait <= 0 or self.urgent:
            self.send()
        else:
            self.timer = self.call_later(wait, self._gap_over)

    def _gap_over(self) -> None:
        self.timer = None  # the end of this turn (timers run before it) sends

    def send(self) -> None:
        """Every item since the last send, in one frame, now."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.items:
            return
        self.before_send()
        self.pubsub.cast(PublishMany(self.items, True))
        self.items = []
        self.bytes = 0
        self.urgent = False
        self.sent_at = time.monotonic()
