"""The presence client actor: runs `init` and `handle_metas` with Phoenix's bookkeeping
(either may be an `async def`: it runs on the actor's own event loop).

It keeps, per topic, key -> [meta] built from the diffs the shards publish, and after each
diff calls `handle_metas(topic, diff, presences_of_topic, state)`; what it returns is the
next state. A callback that raises is logged; the state stays as it was and the actor serves
on.

On start, after `init`, it asks every shard for what it lists (`MetasResync`); each answers
with its whole state (`MetasState`, in parts) and then its live diffs. Diffs a shard sent
before its state are dropped: the state includes them. The actor reports ready only once
every shard's state came, so `Node.start()` returns when every later change reaches
`handle_metas`. The state is turned into one diff
per topic against what the actor knew (for a restarted actor: nothing, so every current
presence joins), and `handle_metas` rebuilds the user's state from it. A shard whose
queue to this actor overflowed (a slow `handle_metas`) drops its diffs and sends its whole
state again once there is room: the same path, so the user's state is right again then.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

from whosthere.actors.base import Actor, ActorSpec
from whosthere.loading import load_class, settle
from whosthere.topology import Topology
from whosthere.tracker.pool import shard_for
from whosthere.transport.messages import MetasDiff, MetasResync, MetasState
from whosthere.transport.sockets import Dealer

MetasByKey = dict[str, list[Any]]  # key -> metas, as `handle_metas` gets a topic's presences


def apply_diff(topics: dict[str, MetasByKey], topic: str, diff: dict[str, Any]) -> MetasByKey:
    """Apply a diff to the per-topic bookkeeping; returns that topic's presences after it."""
    presences = topics.setdefault(topic, {})
    for key, entry in diff.get("joins", {}).items():
        metas = presences.setdefault(key, [])
        for meta in entry.get("metas", []):
            if meta not in metas:
                metas.append(meta)
    for key, entry in diff.get("leaves", {}).items():
        left = entry.get("metas", [])
        kept = [m for m in presences.get(key, ()) if m not in left]
        if kept:
            presences[key] = kept
        else:
            presences.pop(key, None)
    if not presences:
        del topics[topic]
        return {}
    return presences


def diff_between(old: MetasByKey, new: MetasByKey) -> dict[str, Any]:
    """The diff that turns `old` into `new` (metas compared by value)."""
    joins: dict[str, Any] = {}
    leaves: dict[str, Any] = {}
    for key, metas in new.items():
        known = old.get(key, [])
        added = [m for m in metas if m not in known]
        if added:
            joins[key] = {"metas": added}
    for key, metas in old.items():
        kept = new.get(key, [])
        gone = [m for m in metas if m not in kept]
        if gone:
            leaves[key] = {"metas": gone}
    return {"joins": joins, "leaves": leaves}


class PresenceClientActor(Actor):
    handles = (MetasDiff, MetasState)
    ready_after_start = False  # ready once every shard's state came: no diff before is lost

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        self.presence_class = load_class(spec.node.presence)  # the user's Presence subclass
        self.presence: Any = None
        self.topics: dict[str, MetasByKey] = {}
        self.state: Any = None
        self.calls = 0
        self.failures = 0
        self.pool_size = spec.node.pool_size
        self.synced: set[int] = set()  # shards whose whole state came: their diffs count
        self.incoming: dict[int, dict[str, MetasByKey]] = {}  # shard -> its state's parts so far
        shards = Topology(spec.node).shards
        self.shards = [Dealer(e, what="shard", unbounded=True) for e in shards]
        # `init` and `handle_metas` may be `async def`: they run on this loop, kept for life
        self.loop = asyncio.new_event_loop()

    def on_start(self) -> None:
        self.presence = self.presence_class.connect(self.spec.supervisor)
        init = getattr(self.presence, "init", None)
        self.state = settle(init(), self.loop) if init is not None else {}
        for shard in self.shards:
            shard.cast(MetasResync())

    def stats(self) -> dict[str, Any]:
        return {
            "topics": len(self.topics),
            "handle_metas": self.calls,
            "failures": self.failures,
            "synced_shards": len(self.synced),
        }

    def on_metas_diff(self, msg: MetasDiff) -> None:
        if msg.shard not in self.synced:
            return  # sent before the shard's state, which includes it
        self._call_handle_metas(msg.topic, msg.diff, apply_diff(self.topics, msg.topic, msg.diff))

    def on_metas_state(self, msg: MetasState) -> None:
        if msg.part == 0:  # a new state begins (a part of an unfinished one is dropped)
            self.synced.discard(msg.shard)
            self.incoming[msg.shard] = {}
        parts = self.incoming.get(msg.shard)
        if parts is None:
            return
        for topic, entries in msg.topics.items():
            parts[topic] = {key: list(entry.get("metas", [])) for key, entry in entries.items()}
        if not msg.last:
            return
        del self.incoming[msg.shard]
        self.synced.add(msg.shard)
        if len(self.synced) == self.pool_size:
            self.report_ready()
        mine = [t for t in self.topics if shard_for(t, self.pool_size) == msg.shard]
        for topic in sorted(set(mine) | set(parts)):
            new = parts.get(topic, {})
            diff = diff_between(self.topics.get(topic, {}), new)
            if not diff["joins"] and not diff["leaves"]:
                continue
            if new:
                self.topics[topic] = new
            else:
                self.topics.pop(topic, None)
            self._call_handle_metas(topic, diff, new)

    def _call_handle_metas(self, topic: str, diff: dict[str, Any], presences: MetasByKey) -> None:
        if not hasattr(self.presence, "handle_metas"):
            return  # only init was defined
        self.calls += 1
        try:
            state = self.presence.handle_metas(topic, diff, presences, self.state)
            self.state = settle(state, self.loop)
        except (Exception, SystemExit):  # the user's code: whatever it raises
            self.failures += 1
            self.log.error(
                "%s: handle_metas raised on topic %r\n%s",
                self.name,
                topic,
                traceback.format_exc(),
            )

    def on_stop(self) -> None:
        self.loop.close()
        for shard in self.shards:
            shard.close()
        if self.presence is not None:
            self.presence.close()
