"""The shard actor: the thin shell around one `State`, as Phoenix's `shard.ex` around
`state.ex`: each handler checks the request, calls the state, reports what changed. The
decisions live in pure cores, the sending in small helpers:

- `tracker.owner_links.OwnerLinks`: which OS processes hold presences here; the links and unlinks
  to make, and whose presences leave when a process exits or its pid is reused;
- `shard_links.ShardLinks`: those links, through the supervisor and on pidfds of its own;
- `tracker.changes.Gathering`: a message's changes, one diff per topic;
- `shard_outbox.ShardOutbox`: diffs to the PubSub actor, one frame per wake-up;
- `shard_fetching.Fetching`: diffs through the user's `fetch`, in the shard's order;
- `shard_client_feed.ClientFeed`: the presence client actor's state and diffs;
- `shard_peers.ShardPeers`: replication with the other nodes (clustered shards only);
- `shard_journal.ShardJournal`: the journal a restarted shard comes back from.

Diffs go out as `presence_diff` on their topic, to this node's subscribers only (each node
publishes from its own state); `ListCache` keeps packed lists until the topic changes.
"""

from __future__ import annotations

import heapq
import random
import time
from typing import Any

from whosthere.actors.base import Actor, ActorSpec
from whosthere.actors.heap import FreezeAsItGrows
from whosthere.actors.shard_client_feed import ClientFeed
from whosthere.actors.shard_fetching import Fetching, fetch_stats
from whosthere.actors.shard_journal import open_replica
from whosthere.actors.shard_links import ShardLinks
from whosthere.actors.shard_outbox import ShardOutbox
from whosthere.actors.shard_peers import ShardPeers
from whosthere.errors import RefChanged, WhosthereError
from whosthere.topology import Topology
from whosthere.tracker.changes import Changes, Gathering, by_topic, group
from whosthere.tracker.fetch_queue import DiffPayload
from whosthere.tracker.list_cache import ListCache
from whosthere.tracker.owner_links import OwnerLinks, Start, check_owner
from whosthere.tracker.refs import RefMaker
from whosthere.tracker.replication import Replication
from whosthere.tracker.state import Element
from whosthere.transport import codec
from whosthere.transport.messages import (
    Depart,
    Fetched,
    FetcherReady,
    FromPeer,
    GetByKey,
    GetMeta,
    ListTopic,
    ListTopics,
    MetasResync,
    ProcessesExited,
    ShardRestarted,
    Track,
    TrackMany,
    Untrack,
    UntrackMany,
    UntrackPid,
    Update,
)
from whosthere.transport.sockets import Dealer
from whosthere.watch import ProcessKey, is_owner

FREEZE_EVERY = 10_000  # presences added between two gc.freeze()
LISTED_MAX_BYTES = 64 * 1024 * 1024  # packed list replies kept (all dropped beyond)


class ShardActor(Actor):
    """The order of what leaves a shard, enforced here and nowhere else:

    1. Journal first. A change is in the journal before anything that tells of it leaves:
       the reply that acknowledges it (`before_reply`), its diff (`_emit`, where every diff
       is made, and the outbox's `before_send`), a heartbeat or transfer to the peers
       (`ShardPeers.before_send`); and at the end of every wake-up (`on_idle`). All go
       through `_journal_first`.
    2. A message's changes are reported once it is answered (`end_message`): the reply
       waits for the journal only, and a `Calls` batch of a thousand tracks into one topic
       makes one diff. Changes made outside a message (exits, merges, ticks) are reported
       at once.
    3. Diffs leave in the order made: the fetch queue holds a topic's later diffs behind an
       earlier one's fetch, and the outbox sends everything of a wake-up in one frame at
       the end of it (`on_idle`), or when the publish gap ends.
    """

    links: Dealer  # the supervisor: links and unlinks go to it, exits come from it
    batchable = (Track, Untrack, UntrackPid, UntrackMany, Update, GetMeta, GetByKey)
    handles = (
        *(Track, TrackMany, Untrack, UntrackPid, UntrackMany, Update),
        *(GetMeta, ListTopic, GetByKey, ListTopics),
        *(Fetched, FetcherReady, MetasResync, FromPeer, Depart),
    )

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        config, topology = spec.node, Topology(spec.node)
        self.index = spec.index
        self.meta_limit = config.meta_limit
        # without a cluster a delta would only grow: nobody would ever take it
        durable = spec.runtime_dir if config.durable else None
        replica = open_replica(
            spec.node_name, self.name, durable, self.log, record_delta=bool(topology.cluster)
        )
        self.state, self.journal, self.recovered = replica.state, replica.journal, replica.recovered
        self.owner_links = OwnerLinks(replica.starts, self.state.pids)
        self.refs = RefMaker(
            f"{spec.node_name}/{self.name}/{self.state.vsn}", random.getrandbits(16)
        )
        self.gathering: Gathering | None = None  # the message being handled's changes
        self.listed = ListCache(LISTED_MAX_BYTES)  # dropped by every change of its topic
        self.outbox = ShardOutbox(
            Dealer(topology.pubsub, what="pubsub actor", unbounded=True),
            self.call_later,
            self._journal_first,
        )
        self.fetching = (
            Fetching(topology.fetchers, config.fetch_timeout, self.index, self._publish, self.log)
            if config.custom_fetch and topology.fetchers
            else None
        )
        self.client_feed = (
            ClientFeed(topology.client, self.index, self.state, self.call_later, self.log)
            if topology.client
            else None
        )
        self.peers = None
        if topology.cluster:
            replication = Replication(self.state, config.tracker)
            if self.recovered:
                replication.resume(time.monotonic())
            cluster = Dealer(topology.cluster, what="cluster actor", unbounded=True)
            self.peers = ShardPeers(
                self, replication, cluster, report=self.report, before_send=self._journal_first
            )
        self.heap = FreezeAsItGrows(FREEZE_EVERY)
        self.published = 0  # diffs published since start

    def on_start(self) -> None:
        assert self.supervisor is not None, "a shard runs under a supervisor (links)"
        self.links = self.supervisor
        self.linking = ShardLinks(self.links, self._exited)
        self.add_reader(self.links.socket, self._on_supervisor)
        self.add_reader(self.linking.fileno(), self.linking.read)
        if self.recovered:  # the owners again; those that died meanwhile come back as exits
            owners = self.owner_links.processes()
            self.linking.link(owners)
            self.log.warning(
                "%s: restarted with %d presences of %d owners, as the same replica",
                self.name,
                len(self.state),
                len(owners),
            )
            # diffs made just before the crash may not have gone out: subscribers resync
            self.outbox.pubsub.cast(ShardRestarted(self.index, self.spec.node.pool_size))
        if self.client_feed is not None and self.spec.incarnation > 0:
            # the client actor may have asked the last incarnation for its state and never
            # had the answer (until then it drops this shard's diffs): it gets it now
            self.client_feed.resync()
        if self.fetching is not None:
            self.fetching.start(self.call_later)
        if self.peers is not None:
            self.peers.start()

    # -- the order of what leaves (see the class's docstring) ------------------------------

    def _journal_first(self) -> None:
        if self.journal is not None:
            self.journal.flush()

    def before_reply(self) -> None:
        self._journal_first()

    def begin_message(self) -> None:
        self.gathering = Gathering()

    def end_message(self) -> None:
        gathering, self.gathering = self.gathering, None
        if gathering is not None:
            self._emit(gathering.take())

    def on_idle(self) -> None:
        if self.peers is not None and self.peers.deferred and not self.working:
            self.peers.drain_deferred()
        self._journal_first()  # whatever the turn changed, even what made no diff
        self.outbox.end_of_turn(time.monotonic())
        self.heap.grown_to(len(self.state))
        if self.journal is not None:
            self.journal.maybe_compact(self.state, self.owner_links.linked)

    def on_stop(self) -> None:
        self.on_idle()
        self.outbox.send()
        if self.journal is not None:
            self.journal.close()
        self.outbox.pubsub.close(flush_timeout=0.0)
        for helper in (self.fetching, self.client_feed, self.peers, self.linking):
            if helper is not None:
                helper.close()

    def stats(self) -> dict[str, Any]:
        return {
            "presences": len(self.state),
            "topics": len(self.state.topics),
            "pids": self.state.pid_count(),
            "diffs": self.published,
            **fetch_stats(self.fetching),
            "client_behind": self.client_feed.behind if self.client_feed else False,
            "journal": self.journal.status() if self.journal is not None else None,
            **(self.peers.stats() if self.peers is not None else {}),
        }

    # -- requests --------------------------------------------------------------------------

    def on_track(self, msg: Track) -> str:
        changes: Changes = {}
        ref = self._track(msg.pid, msg.start_time, msg.topic, msg.key, msg.meta, changes=changes)
        self.report(changes)
        return ref

    def on_track_many(self, msg: TrackMany) -> list[Any]:
        """Each entry as a `Track`; one diff per topic for the whole batch."""
        results: list[Any] = []
        changes: Changes = {}
        try:
            for entry in msg.entries:
                try:
                    pid, start, topic, key, meta = codec.track_entry(entry)
                    if changes and self.owner_links.stale(pid, start) is not None:
                        self.report(changes)  # this batch's joins go out before the leaves
                        changes = {}
                    results.append(self._track(pid, start, topic, key, meta, changes=changes))
                except WhosthereError as exc:
                    results.append([type(exc).__name__, str(exc)])
        finally:  # what changed is reported, even if an entry broke something unexpected
            self.report(changes)
        return results

    def _track(
        self, pid: int, start: Start, topic: str, key: str, meta: bytes, *, changes: Changes
    ) -> str:
        check_owner(pid)
        codec.check_packed_meta(meta, self.meta_limit)
        stale = self.owner_links.stale(pid, start)
        if stale is not None:
            self._exited([stale])  # that pid now names another process
        ref = self.refs.make(time.time_ns())
        element = self.state.join(pid, topic, key, codec.meta_with_refs(meta, ref))
        link = self.owner_links.joined(pid, start)
        if link is not None:
            self.linking.link([link])
            if self.journal is not None:
                self.journal.recorder(("k", *link))
        entry = changes.get(topic)
        if entry is None:
            changes[topic] = ([element], [])
        else:
            entry[0].append(element)
        return ref

    def on_untrack(self, msg: Untrack) -> None:
        element = self.state.leave(msg.pid, msg.topic, msg.key)
        if element is not None:
            self._released(msg.pid)
            self.report({msg.topic: ([], [element])})

    def on_untrack_pid(self, msg: UntrackPid) -> int:
        left = self.state.leave_pid(msg.pid)
        self._released(msg.pid)
        self.report(by_topic([], left))
        return len(left)

    def on_untrack_many(self, msg: UntrackMany) -> int:
        """`UntrackPid` of each owner, one diff per topic for all (non-owners skipped)."""
        left: list[Element] = []
        for owner in msg.pids:
            if is_owner(owner):
                left += self.state.leave_pid(owner)
                self._released(owner)
        self.report(by_topic([], left))
        return len(left)

    def on_update(self, msg: Update) -> str:
        codec.check_packed_meta(msg.meta, self.meta_limit)
        current = self.state.tracked(msg.pid, msg.topic, msg.key)
        old_ref = codec.unpack(current.meta)["phx_ref"]
        if msg.expect_ref is not None and old_ref != msg.expect_ref:
            raise RefChanged(f"phx_ref is {old_ref}, not {msg.expect_ref}")
        ref = self.refs.make(time.time_ns())
        meta = codec.meta_with_refs(msg.meta, ref, old_ref)
        old, new = self.state.leave_join(msg.pid, msg.topic, msg.key, meta)
        self.report({msg.topic: ([new], [old])})
        return ref

    def on_get_meta(self, msg: GetMeta) -> bytes:
        return self.state.tracked(msg.pid, msg.topic, msg.key).meta

    def on_list_topic(self, msg: ListTopic) -> bytes:
        packed = self.listed.get(msg.topic)
        if packed is None:
            packed = codec.pack_grouped(self.state.metas_by_key(msg.topic))
            self.listed.put(msg.topic, packed)
        return packed

    def on_get_by_key(self, msg: GetByKey) -> list[bytes]:
        return [e.meta for e in self.state.get_by_key(msg.topic, msg.key)]

    def on_list_topics(self, msg: ListTopics) -> list[list[Any]]:
        """The topics with the most presences here, most first (a dashboard's overview)."""
        topics = self.state.topics
        counts = ((topic, sum(map(len, keys.values()))) for topic, keys in topics.items())
        return [list(t) for t in heapq.nlargest(max(0, msg.limit), counts, key=lambda t: t[1])]

    # -- helpers' messages -----------------------------------------------------------------

    def on_fetched(self, msg: Fetched) -> None:
        if self.fetching is not None:
            self.fetching.fetched(msg)

    def on_fetcher_ready(self, msg: FetcherReady) -> None:
        if self.fetching is not None:
            self.fetching.fetcher_ready(msg, time.monotonic())

    def on_metas_resync(self, msg: MetasResync) -> None:
        """The presence client actor (re)started: everything this shard lists, then the
        live diffs, so that `handle_metas` rebuilds its state."""
        if self.client_feed is not None:
            self.client_feed.resync()

    def on_from_peer(self, msg: FromPeer) -> None:
        if self.peers is not None:
            self.peers.on_from_peer(msg)

    def on_depart(self, msg: Depart) -> Any:
        """Graceful permdown: the peers drop this replica now (`ShardPeers.depart`)."""
        return [] if self.peers is None else self.peers.depart(self.request)

    # -- exits -----------------------------------------------------------------------------

    def _on_supervisor(self) -> None:
        for push in self.links.recv_pushes(0):
            if isinstance(push, ProcessesExited):
                self._exited([(pid, start) for pid, start in push.exits], push.seen_at)

    def _exited(self, exits: list[ProcessKey], seen_at: float = 0.0) -> None:
        """Linked processes exited: their presences leave (one diff per topic), and the
        node's subscribers of `EXITS_TOPIC` hear which (for a page of recent crashes)."""
        gone: list[tuple[int, list[Element]]] = []
        self.linking.handled(exits)
        for pid, start in exits:
            owners = self.owner_links.exited(pid, start)
            if owners is not None:  # else: unlinked since, or an older process of this pid
                gone.append((pid, [e for owner in owners for e in self.state.leave_pid(owner)]))
        self.report(by_topic([], [e for _, left in gone for e in left]))
        left_at = time.time()
        for pid, left in gone:
            self.outbox.add_exit(pid, left, seen_at, left_at)

    def _released(self, owner: int) -> None:
        unlink = self.owner_links.released(owner, holds_more=self.state.tracks(owner))
        if unlink is not None:
            self.linking.unlink(unlink)

    # -- diffs -----------------------------------------------------------------------------

    def report(self, changes: Changes) -> None:
        """One diff per topic: gathered while a message is handled, else made at once."""
        for topic in changes:  # first: whatever happens below, no stale list is served
            self.listed.drop(topic)
        if self.gathering is None:
            self._emit(changes)
        else:
            self._emit(self.gathering.add(changes))

    def _emit(self, changes: Changes) -> None:
        """Make each topic's diff, packed from the stored metas without unpacking them
        (only a user's `fetch` or `handle_metas` makes them unpack); through the fetchers
        when the user has a `fetch`."""
        if not changes:
            return
        self._journal_first()
        for topic, (joins, leaves) in changes.items():
            packed = codec.pack_diff(group(joins), group(leaves))
            if self.fetching is None:
                self._publish(topic, packed)
            else:
                self.fetching.add(topic, codec.unpack(packed), time.monotonic())

    def _publish(self, topic: str, diff: bytes | DiffPayload) -> None:
        """Queue a diff (packed, or as fetched) for the outbox; the client actor gets it now."""
        packed = diff if isinstance(diff, bytes) else codec.pack_value(diff)
        self.outbox.add(topic, "presence_diff", packed)
        feed = self.client_feed
        if feed is not None and not feed.behind:
            feed.diff(topic, codec.unpack(packed) if isinstance(diff, bytes) else diff)
        self.published += 1
