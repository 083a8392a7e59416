"""Packed list replies by topic, kept until the topic's next change.

Listing a big topic again and again would pack it again and again; the reply stays valid until
the topic changes, so every change of what a topic lists must `drop` it. Past the byte cap
everything is dropped at once: no eviction order to keep, and the next lists repack only the
topics still asked for.
"""

from __future__ import annotations


class ListCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0  # of the replies kept
        self._packed: dict[str, bytes] = {}

    def get(self, topic: str) -> bytes | None:
        return self._packed.get(topic)

    def put(self, topic: str, packed: bytes) -> None:
        """Keep `packed` (even alone over the cap: it is dropped at the next `put`)."""
        self.drop(topic)
        if self.bytes + len(packed) > self.max_bytes:
            self._packed.clear()
            self.bytes = 0
        self._packed[topic] = packed
        self.bytes += len(packed)

    def drop(self, topic: str) -> None:
        packed = self._packed.pop(topic, None)
        if packed is not None:
            self.bytes -= len(packed)
