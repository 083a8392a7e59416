"""Packed list replies by topic, kept until the topic's next change.

Listing a big topic again and again would pack it again and again; the reply stays valid until
the topic changes, so every change of what a topic lists must `drop` it. Past the byte cap
everything is dropped at once: no eviction order to keep, and the next lists repack only the
topics still asked for.

What is counted against the cap is what an entry pins: the reply, the topic, and a fixed
overhead for the dict slot and the two objects. An empty reply is not kept at all: it costs
nothing to make, and keeping one per topic ever asked about would let a caller listing
millions of topics that do not exist pin the shard's memory.
"""

from __future__ import annotations

ENTRY_OVERHEAD = 200  # bytes a kept entry costs beyond its reply and topic (objects, dict slot)
EMPTY = b"\x80"  # an empty topic's reply: msgpack's empty map


class ListCache:
    def __init__(self, max_bytes: int, entry_overhead: int = ENTRY_OVERHEAD) -> None:
        self.max_bytes = max_bytes
        self.entry_overhead = entry_overhead
        self.bytes = 0  # of the entries kept, overhead included
        self._packed: dict[str, bytes] = {}

    def get(self, topic: str) -> bytes | None:
        return self._packed.get(topic)

    def put(self, topic: str, packed: bytes) -> None:
        """Keep `packed` (even alone over the cap: it is dropped at the next `put`); an
        empty reply is not kept."""
        self.drop(topic)
        if packed == EMPTY:
            return
        cost = self._cost(topic, packed)
        if self.bytes + cost > self.max_bytes:
            self._packed.clear()
            self.bytes = 0
        self._packed[topic] = packed
        self.bytes += cost

    def drop(self, topic: str) -> None:
        packed = self._packed.pop(topic, None)
        if packed is not None:
            self.bytes -= self._cost(topic, packed)

    def __len__(self) -> int:
        return len(self._packed)

    def _cost(self, topic: str, packed: bytes) -> int:
        return len(packed) + len(topic) + self.entry_overhead
