"""The exceptions whosthere raises: one root, a named leaf for each way a call fails.

Errors raised inside an actor travel back to the caller by class name (see
`transport.messages.Failed`) and are raised there again as the same class by `from_wire`,
with the actor's traceback kept on `remote_traceback`.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "AlreadyTracked",
    "InvalidMeta",
    "MalformedFrame",
    "MessagesLost",
    "NodeNameTaken",
    "NodeStartError",
    "NodeUnavailable",
    "NotTracked",
    "RestartIntensityExceeded",
    "WhosthereError",
]


class WhosthereError(Exception):
    """Root of every error whosthere raises on purpose."""

    remote_traceback: str | None = None  # set when the error was raised in another process


class AlreadyTracked(WhosthereError):
    """`track` was called for a (pid, topic, key) that is tracked already."""


class NotTracked(WhosthereError):
    """`update` was called for a (pid, topic, key) that is not tracked."""


class InvalidMeta(WhosthereError):
    """A meta or payload is not a dict, cannot be packed with msgpack, or is over the size limit."""


class NodeUnavailable(WhosthereError):
    """No node answers at that address, or it did not answer within the timeout."""


class MalformedFrame(WhosthereError):
    """A frame on the wire does not decode to a known message of the right shape."""


class MessageTooLarge(WhosthereError):
    """A message is over what its receiver accepts: a request (a broadcast, say) over the
    frame limit, refused before it is sent; a reply over it; or a replication message over
    what a peer puts back together (the shard's state is too large to transfer whole:
    spread it over more shards with pool_size)."""


class ActorError(WhosthereError):
    """An actor's handler raised an unexpected exception; the actor logged it and lives on."""


class NodeStartError(WhosthereError):
    """The node could not start an actor: one died or was not ready during boot, or a
    crashed actor could not be started again."""


class NodeNameTaken(NodeStartError):
    """The node's name is held by another live node on the same Redis engine (node names on
    one Redis must be unique); the node waited `down_period` for it to lapse, then refused."""


class RestartIntensityExceeded(WhosthereError):
    """Actors crashed more often than the restart intensity allows; the node stopped."""


class RefChanged(WhosthereError):
    """Internal: a conditional update lost a race (the meta changed since it was read)."""


class MessagesLost(WhosthereError):
    """A subscriber missed messages on a topic (it fell behind, or the PubSub actor restarted).

    The subscription stays usable: the next `get` returns the next message that did arrive.
    """

    def __init__(
        self,
        topic: str,
        missed: int | None,
        reason: str,
        counts: dict[str, int | None] | None = None,
        last: dict[str, int] | None = None,
    ) -> None:
        self.topic = topic  # the topic the gap is on ("*": several)
        self.missed = missed  # how many messages were lost, None when unknown
        self.reason = reason
        # topic -> messages lost on it (None: unknown), for a loss that spans several
        self.counts: dict[str, int | None] = {topic: missed} if counts is None else counts
        # topic -> the number of the last message lost on it, where the numbers are known
        self.last: dict[str, int] = {} if last is None else last
        count = "an unknown number of" if missed is None else str(missed)
        super().__init__(f"{count} message(s) lost on topic {topic!r}: {reason}")


def from_wire(kind: str, message: str, traceback: str = "") -> WhosthereError:
    """The error an actor or the supervisor sent back by class name, as its own class where
    whosthere knows it, else as `ActorError` naming it; its remote traceback kept."""
    found = globals().get(kind)
    if isinstance(found, type) and issubclass(found, WhosthereError) and found is not MessagesLost:
        error: WhosthereError = found(message)
    else:
        error = ActorError(f"{kind}: {message}")
    error.remote_traceback = traceback or None
    return error
