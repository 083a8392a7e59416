"""Topic and event names as both clients check them, before anything is sent.

Shared by the presence calls (`arguments`), `PubSub` and `AsyncPubSub`, and the subscription
sequencer; none of them imports another client's module for it. A name's length is checked
where it becomes bytes (`codec.check_name`, `codec.topic_frame`).
"""

from __future__ import annotations


def check_topic(topic: object, what: str = "topic") -> str:
    """`topic` if it is a str (`TypeError` naming `what` if not: "topic", "event")."""
    if not isinstance(topic, str):
        raise TypeError(f"{what} must be a str, got {type(topic).__name__}")
    return topic
