"""Which nodes may form a cluster: the wire protocol version their greetings carry.

A rolling upgrade mixes versions. Nodes that speak the same wire protocol interoperate,
whatever their releases; nodes that do not refuse each other at the greeting, both sides
logging why and naming both versions, rather than misreading each other's messages.
`WIRE_VERSION` goes up with any change to what nodes send each other (a message between
nodes, its fields or their meaning); `PeerHello`, `PeerWelcome` and `PeerRefused` keep
their shape for ever, since they are how two versions meet.

The version rides at the end of the greetings' address list, as a map: the one place the
first releases, which had no version, ignore (they skip whatever in that list is not an
address), so they and this one still interoperate. A list without one comes from such a
release, which spoke wire protocol 1.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, NamedTuple

WIRE_VERSION = 1  # what this release speaks to other nodes
UNVERSIONED = 1  # what a release from before the versioned greeting spoke


def _release() -> str:
    try:
        return metadata.version("whosthere")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


class Version(NamedTuple):
    """What a node says of itself in its greetings."""

    wire: int  # the wire protocol it speaks
    release: str  # its package version, for the humans reading a refusal

    def __str__(self) -> str:
        return f"wire protocol {self.wire} (whosthere {self.release})"


OURS = Version(WIRE_VERSION, _release())


def with_version(addresses: list[str]) -> list[Any]:
    """A greeting's address list, with our version at its end."""
    return [*addresses, {"wire": OURS.wire, "release": OURS.release}]


def split_version(told: list[Any]) -> tuple[list[Any], Version | None]:
    """A greeting's addresses and the sender's version (None: one we cannot read, which
    is refused). Without one: a release from before the versioned greeting."""
    if not told or not isinstance(told[-1], dict):
        return told, Version(UNVERSIONED, "before the versioned greeting")
    said, addresses = told[-1], told[:-1]
    wire, release = said.get("wire"), said.get("release", "?")
    if type(wire) is not int or not isinstance(release, str):
        return addresses, None
    return addresses, Version(wire, release[:100])


def incompatible(name: str, theirs: Version | None, me: str) -> str | None:
    """Why the node `name` cannot join `me`, or None if it speaks our wire protocol."""
    if theirs is not None and theirs.wire == OURS.wire:
        return None
    said = "an unreadable version" if theirs is None else str(theirs)
    return (
        f"wire protocol mismatch: {name} speaks {said}, {me} speaks {OURS}; nodes of "
        "different wire protocols cannot form a cluster (upgrade every node, or roll back)"
    )
