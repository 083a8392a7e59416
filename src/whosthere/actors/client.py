"""The presence client actor: runs `init` and `handle_metas` with Phoenix's bookkeeping.

It keeps, per topic, key -> [meta] built from the diffs the shards publish, and after each
diff calls
`handle_metas(topic, diff, presences_of_topic, state)`; what it returns is the next state.
A callback that raises is logged; the state stays as it was and the actor serves on.

On start, after `init`, it asks every shard for what it holds (`MetasResync`): each answers
with `MetasReset` and then every topic as a diff of joins, so that a restarted actor's
`handle_metas` rebuilds its state from every current presence. Diffs a shard sent before
its reset are dropped: the reset's joins include them.
"""

from __future__ import annotations

import traceback
from typing import Any

from whosthere.actors.base import Actor, ActorSpec
from whosthere.loading import load_class
from whosthere.topology import Topology
from whosthere.transport.messages import MetasDiff, MetasReset, MetasResync
from whosthere.transport.sockets import Dealer


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
    handles = (MetasDiff, MetasReset)

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        self.presence_class = load_class(spec.node.presence)  # the user's Presence subclass
        self.presence: Any = None
        self.topics: dict[str, dict[str, list[Any]]] = {}
        self.state: Any = None
        self.calls = 0
        self.failures = 0
        self.synced: set[int] = set()  # shards whose `MetasReset` came: their diffs count
        shards = Topology(spec.node).shards
        self.shards = [Dealer(e, what="shard", unbounded=True) for e in shards]

    def on_start(self) -> None:
        self.presence = self.presence_class.connect(self.spec.supervisor)
        init = getattr(self.presence, "init", None)
        self.state = init() if init is not None else {}
        for shard in self.shards:  # every current presence, then the live diffs
            shard.cast(MetasResync())

    def on_metas_reset(self, msg: MetasReset) -> None:
        self.synced.add(msg.shard)

    def stats(self) -> dict[str, Any]:
        return {"topics": len(self.topics), "handle_metas": self.calls, "failures": self.failures}

    def on_metas_diff(self, msg: MetasDiff) -> None:
        if msg.shard not in self.synced:
            return  # sent before the shard heard `MetasResync`: what follows the reset has it
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
        for shard in self.shards:
            shard.close()
        if self.presence is not None:
            self.presence.close()
