"""Keeping a large, cycle-free state out of the garbage collector's sight.

A shard's state holds no reference cycles, yet the collector would scan all of it again and
again as it grows (a quarter of the track time at 100,000 presences). `gc.freeze()` moves
what exists to a generation it never scans; frozen objects are still freed by reference
counting when the state drops them.
"""

from __future__ import annotations

import gc


class FreezeAsItGrows:
    def __init__(self, every: int) -> None:
        self.every = every  # items added between two freezes
        self.frozen_at = 0  # size at the last freeze

    def grown_to(self, size: int) -> None:
        if size >= self.frozen_at + self.every:
            gc.collect(1)  # young garbage is not frozen with the rest of the process heap
            gc.freeze()
            self.frozen_at = size
        elif size < self.frozen_at:
            self.frozen_at = size
