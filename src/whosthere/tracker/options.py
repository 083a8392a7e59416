"""The tracker's replication options: Phoenix.Tracker's, with its defaults, checked once.

A node takes them as keyword arguments (`Node(broadcast_period=0.1, ...)`); every shard of
the node reads them from here, so a period has one owner and one default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TrackerOptions:
    """Replication timing and sizes of every shard of a node (and of its peers, ideally).
    The defaults are Phoenix.Tracker's, in seconds.

    Attributes:
        broadcast_period: seconds between a shard's heartbeats to its peers (each carries
            the changes made since the last one, and the shard's clock).
        max_silent_periods: broadcast periods an idle shard stays silent before it sends
            an empty heartbeat, a sign of life (never longer than half of down_period).
        down_period: seconds of silence before a peer is down and its presences leave
            (default: twice max_silent_periods broadcast periods).
        permdown_period: seconds of silence before a down peer is forgotten for good.
        clock_sample_periods: broadcast periods between two looks at the peers' clocks for
            one ahead of this shard, to ask it for a transfer.
        max_delta_sizes: sizes of the recent deltas kept to answer a transfer with less
            than the whole state, smallest first.
        permdown_on_shutdown: a node that stops leaves its peers at once (graceful
            permdown) rather than after down_period.
    """

    broadcast_period: float = 1.5
    max_silent_periods: int = 10
    # a float once created; None: down after twice max_silent_periods broadcast periods of
    # silence (30 s at the defaults, as Phoenix's)
    down_period: float | None = None
    permdown_period: float = 1200.0
    clock_sample_periods: int = 2
    max_delta_sizes: tuple[int, ...] = (100, 1000, 10000)
    permdown_on_shutdown: bool = False

    def __post_init__(self) -> None:
        if self.down_period is None:
            silence = self.broadcast_period * self.max_silent_periods * 2
            object.__setattr__(self, "down_period", silence)
        down = self.down
        try:
            object.__setattr__(self, "max_delta_sizes", tuple(self.max_delta_sizes))
        except TypeError:
            raise TypeError(
                f"max_delta_sizes must be a sequence of sizes, got {self.max_delta_sizes!r}"
            ) from None
        if down < 2 * self.broadcast_period:
            raise ValueError(
                f"down_period ({self.down_period} s) must be at least twice "
                f"broadcast_period ({self.broadcast_period} s)"
            )
        if self.permdown_period <= down:
            raise ValueError(
                f"permdown_period ({self.permdown_period} s) must be greater than "
                f"down_period ({self.down_period} s)"
            )

    @property
    def down(self) -> float:
        """`down_period`, as resolved at creation."""
        assert self.down_period is not None, "resolved by __post_init__"
        return self.down_period

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TrackerOptions:
        """The options a user gave, with defaults; `TypeError`/`ValueError` names the rule
        broken."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown Node option(s): {', '.join(unknown)}")
        return cls(**options)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "max_delta_sizes": list(self.max_delta_sizes)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrackerOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
