"""The presence client actor: runs `init` and `handle_metas` with Phoenix's bookkeeping.

It keeps, per topic, key -> [meta] built from the diffs the shards publish (so, from what
happened since the node started), and after each diff calls
`handle_metas(topic, diff, presences_of_topic, state)`; what it returns is the next state.
A callback that raises is logged; the state stays as it was and the actor serves on.
"""

from __future__ import annotations

import traceback
from typing import Any

from whosthere.actors.base import Actor, ActorSpec
from whosthere.loading import load_class
from whosthere.transport.messages import MetasDiff


def apply_diff(
    topics: dict[str, dict[str, list[Any]]], topic: str, diff: dict[str, Any]
) -> dict[str, list[Any]]:
    """Apply a diff to the per-topic bookkeeping; returns that topic's presences after it."""
    presences = topics.setdefault(topic, {})
    for key, entry in diff.get("joins", {}).items():
        metas = presences.setdefault(key, [])
        for meta in entry.get("metas", []):
            if meta not in metas:
                metas.append(meta)
    for key, entry in diff.get("leaves", {}).items():
        metas = presences.get(key)
        if metas is None:
            continue
        left = entry.get("metas", [])
        metas[:] = [m for m in metas if m not in left]
        if not metas:
            del presences[key]
    if not presences:
        del topics[topic]
        return {}
    return presences


class PresenceClientActor(Actor):
    handles = (MetasDiff,)

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        self.presence_class = load_class(spec.node.presence)  # the user's Presence subclass
        self.presence: Any = None
        self.topics: dict[str, dict[str, list[Any]]] = {}
        self.state: Any = None
        self.calls = 0
        self.failures = 0

    def on_start(self) -> None:
        self.presence = self.presence_class.connect(self.spec.supervisor)
        init = getattr(self.presence, "init", None)
        self.state = init() if init is not None else {}

    def stats(self) -> dict[str, Any]:
        return {"topics": len(self.topics), "handle_metas": self.calls, "failures": self.failures}

    def on_metas_diff(self, msg: MetasDiff) -> None:
        presences = apply_diff(self.topics, msg.topic, msg.diff)
        if not hasattr(self.presence, "handle_metas"):
            return  # only init was defined
        self.calls += 1
        try:
            self.state = self.presence.handle_metas(msg.topic, msg.diff, presences, self.state)
        except (Exception, SystemExit):  # the user's code: whatever it raises
            self.failures += 1
            self.log.error(
                "%s: handle_metas raised on topic %r\n%s",
                self.name,
                msg.topic,
                traceback.format_exc(),
            )

    def on_stop(self) -> None:
        if self.presence is not None:
            self.presence.close()
