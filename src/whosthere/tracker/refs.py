"""phx_ref values: unique, roughly time-ordered, opaque 16-character strings (as Phoenix's)."""

from __future__ import annotations

import binascii
import itertools
import zlib

_URL_SAFE = bytes.maketrans(b"+/", b"-_")  # base64.urlsafe_b64encode's alphabet


class RefMaker:
    """Makes refs for one shard incarnation: 8 bytes of time, 2 of origin, 2 of counter."""

    def __init__(self, origin: str, first: int = 0) -> None:
        """`first`: where the counter starts (a shard restarted as the same replica starts
        it at random, so that two refs made in the same nanosecond still differ)."""
        self._origin = (zlib.crc32(origin.encode()) & 0xFFFF).to_bytes(2, "big")
        self._counter = itertools.count(first)

    def make(self, now_ns: int) -> str:
        """A new ref; `now_ns` is the wall clock in nanoseconds."""
        raw = (now_ns & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big") + self._origin
        raw += (next(self._counter) & 0xFFFF).to_bytes(2, "big")
        return binascii.b2a_base64(raw, newline=False).translate(_URL_SAFE).decode()
