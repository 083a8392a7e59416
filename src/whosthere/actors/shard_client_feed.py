"""What a shard tells the presence client actor (`init` / `handle_metas`): its whole state
when asked (`MetasResync`), then every diff.

The client actor's queue is bounded: a slow `handle_metas` must not grow the shard's
process. When the queue is full, the diffs to it are dropped and the whole state is offered
again every `RETRY_S` until there is room; the client actor turns it into diffs against
what it knew, so its user's state is right again then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from whosthere.actors.base import Timer
from whosthere.actors.shard_fetching import HELPER_HWM
from whosthere.errors import NodeUnavailable
from whosthere.tracker.state import State
from whosthere.transport import codec
from whosthere.transport.messages import MetasDiff, MetasState
from whosthere.transport.sockets import Dealer

STATE_PART_BYTES = 4 * 1024 * 1024  # bytes of metas per `MetasState` part, about
RETRY_S = 0.5  # how often the whole state is offered to a client actor behind


class ClientFeed:
    def __init__(
        self,
        endpoint: str,
        shard: int,
        state: State,
        call_later: Callable[[float, Callable[[], None]], Timer],
        log: logging.Logger,
    ) -> None:
        self.client = Dealer(endpoint, what="presence client", hwm=HELPER_HWM)
        self.shard = shard
        self.state = state
        self.call_later = call_later
        self.log = log
        self.behind = False  # diffs to it were dropped: it gets the whole state anew

    def resync(self) -> None:
        """The client actor (re)started, or may have: the whole state, then live diffs."""
        if not self._send_state():
            self._fell_behind()

    def diff(self, topic: str, diff: dict[str, Any]) -> None:
        if self.behind:
            return  # the whole state goes once there is room
        try:
            self.client.cast(MetasDiff(topic, diff, self.shard), 0)
        except NodeUnavailable:
            self._fell_behind()

    def _send_state(self) -> bool:
        """Every topic's presences, in parts; False if the queue is full."""
        parts: list[dict[str, Any]] = [{}]
        size = 0
        for topic in list(self.state.topics):
            grouped = self.state.metas_by_key(topic)
            if not grouped:
                continue  # only replicas that are down have presences here
            packed = codec.pack_grouped(grouped)
            if size > STATE_PART_BYTES:
                parts.append({})
                size = 0
            parts[-1][topic] = codec.unpack(packed)
            size += len(packed)
        try:
            for i, topics in enumerate(parts):
                self.client.cast(MetasState(self.shard, i, i == len(parts) - 1, topics), 0)
        except NodeUnavailable:
            return False
        return True

    def _fell_behind(self) -> None:
        if self.behind:
            return
        self.behind = True
        self.log.warning(
            "shard.%d: the presence client actor is %d messages behind; its diffs are "
            "dropped until it takes the whole state again",
            self.shard,
            HELPER_HWM,
        )
        self.call_later(RETRY_S, self._offer_state)

    def _offer_state(self) -> None:
        if self._send_state():
            self.behind = False
            self.log.warning("shard.%d: the presence client actor caught up", self.shard)
        else:
            self.call_later(RETRY_S, self._offer_state)

    def close(self) -> None:
        self.client.close(flush_timeout=0.0)
