"""whosthere: Phoenix.Presence and Phoenix.Tracker for Python, on OS processes."""

import importlib
from typing import TYPE_CHECKING, Any

from whosthere.errors import ActorError as ActorError
from whosthere.errors import AlreadyTracked as AlreadyTracked
from whosthere.errors import InvalidMeta as InvalidMeta
from whosthere.errors import MalformedFrame as MalformedFrame
from whosthere.errors import MessagesLost as MessagesLost
from whosthere.errors import NodeNameTaken as NodeNameTaken
from whosthere.errors import NodeStartError as NodeStartError
from whosthere.errors import NodeUnavailable as NodeUnavailable
from whosthere.errors import NotTracked as NotTracked
from whosthere.errors import RestartIntensityExceeded as RestartIntensityExceeded
from whosthere.errors import WhosthereError as WhosthereError

if TYPE_CHECKING:
    from whosthere.links import Links as Links
    from whosthere.links import ProcessExit as ProcessExit
    from whosthere.node import Node as Node
    from whosthere.presence import Channel as Channel
    from whosthere.presence import Owner as Owner
    from whosthere.presence import Presence as Presence
    from whosthere.pubsub import Message as Message
    from whosthere.pubsub import PubSub as PubSub
    from whosthere.pubsub import Subscription as Subscription

# Imported on first use: the node's actors import this package too (every submodule does),
# and most of them need none of the client API; a restarted actor serves ~0.2 s sooner.
_LAZY = {
    "Links": "whosthere.links",
    "ProcessExit": "whosthere.links",
    "Node": "whosthere.node",
    "Channel": "whosthere.presence",
    "Owner": "whosthere.presence",
    "Presence": "whosthere.presence",
    "Message": "whosthere.pubsub",
    "PubSub": "whosthere.pubsub",
    "Subscription": "whosthere.pubsub",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'whosthere' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "ActorError",
    "AlreadyTracked",
    "Channel",
    "InvalidMeta",
    "Links",
    "MalformedFrame",
    "Message",
    "MessagesLost",
    "Node",
    "NodeNameTaken",
    "NodeStartError",
    "NodeUnavailable",
    "NotTracked",
    "Owner",
    "Presence",
    "ProcessExit",
    "PubSub",
    "RestartIntensityExceeded",
    "Subscription",
    "WhosthereError",
]
