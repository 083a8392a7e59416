"""The tracker's replication options: Phoenix.Tracker's, with its defaults, checked once.

A node takes them as keyword arguments (`Node(broadcast_period=0.1, ...)`); every shard of
the node reads them from here, so a period has one owner and one default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Phoenix.Tracker's defaults, in seconds; down_period's follows broadcast_period
TRACKER_DEFAULTS: dict[str, Any] = {
    "broadcast_period": 1.5,
    "max_silent_periods": 10,
    "down_period": 30.0,
    "permdown_period": 1200.0,
    "clock_sample_periods": 2,
    "max_delta_sizes": (100, 1000, 10000),
    "permdown_on_shutdown": False,
}


@dataclass(frozen=True)
class TrackerOptions:
    """Replication timing and sizes of every shard of a node (and of its peers, ideally)."""

    broadcast_period: float = TRACKER_DEFAULTS["broadcast_period"]
    max_silent_periods: int = TRACKER_DEFAULTS["max_silent_periods"]
    down_period: float = TRACKER_DEFAULTS["down_period"]
    permdown_period: float = TRACKER_DEFAULTS["permdown_period"]
    clock_sample_periods: int = TRACKER_DEFAULTS["clock_sample_periods"]
    max_delta_sizes: tuple[int, ...] = TRACKER_DEFAULTS["max_delta_sizes"]
    permdown_on_shutdown: bool = TRACKER_DEFAULTS["permdown_on_shutdown"]

    def __post_init__(self) -> None:
        if self.down_period < 2 * self.broadcast_period:
            raise ValueError(
                f"down_period ({self.down_period} s) must be at least twice "
                f"broadcast_period ({self.broadcast_period} s)"
            )
        if self.permdown_period <= self.down_period:
            raise ValueError(
                f"permdown_period ({self.permdown_period} s) must be greater than "
                f"down_period ({self.down_period} s)"
            )

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TrackerOptions:
        """The options a user gave, with defaults; `TypeError`/`ValueError` names the rule
        broken. Without `down_period`, a peer is down after twice `max_silent_periods`
        broadcast periods of silence (Phoenix's 30 s at its defaults)."""
        unknown = sorted(set(options) - set(TRACKER_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown Node option(s): {', '.join(unknown)}")
        merged = {**TRACKER_DEFAULTS, **options}
        if "down_period" not in options:
            merged["down_period"] = merged["broadcast_period"] * merged["max_silent_periods"] * 2
        merged["max_delta_sizes"] = tuple(merged["max_delta_sizes"])
        return cls(**merged)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "max_delta_sizes": list(self.max_delta_sizes)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrackerOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in raw.items() if k in known},
                      "max_delta_sizes": tuple(raw["max_delta_sizes"])})  # fmt: skip
