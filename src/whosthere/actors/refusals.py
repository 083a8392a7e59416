"""`Refusals`: the peers refused, by name, as both engines' books keep them.

A peer of another pool_size or wire protocol is refused (by this node, or it refuses this
one). Each refusal is logged once per reason, cleared when the peer greets us compatibly,
and forgotten after `forget_after` of silence, so the book does not grow.
"""

from __future__ import annotations


class Refusals:
    """Why each refused peer was refused, and when last."""

    def __init__(self) -> None:
        self.refused: dict[str, str] = {}  # peer name -> why (refused by us or by it)
        self.refused_at: dict[str, float] = {}

    def refuse(self, name: str, reason: str, now: float) -> bool:
        """Note a refusal (by or of `name`); True if the reason is new, to be logged once."""
        new = self.refused.get(name) != reason
        self.refused[name] = reason
        self.refused_at[name] = now
        return new

    def pardon(self, name: str) -> None:
        """`name` greeted us compatibly: it is refused no more."""
        self.refused.pop(name, None)
        self.refused_at.pop(name, None)

    def forget_refusals(self, now: float, forget_after: float) -> None:
        """Drop the refusals not renewed for `forget_after` seconds."""
        for name, at in list(self.refused_at.items()):
            if now - at > forget_after:
                del self.refused[name], self.refused_at[name]
