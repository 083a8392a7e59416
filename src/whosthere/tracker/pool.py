"""Topic to shard: a stable hash, the same in every process and on every machine."""

from __future__ import annotations

import zlib


def shard_for(topic: str, pool_size: int) -> int:
    """The shard index of `topic` (crc32 of its UTF-8 bytes, never Python's salted hash)."""
    return zlib.crc32(topic.encode()) % pool_size
