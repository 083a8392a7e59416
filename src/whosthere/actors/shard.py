"""The shard actor: the thin shell around one `State`.

Each handler is a short pipeline: check the request, call the state, report the diff. Owners
are linked through the supervisor on their first presence; when one exits, its presences
leave. Diffs are grouped per topic and published as `presence_diff` on the topic through the
PubSub actor, this node's subscribers only (each node publishes from its own state).

The bookkeeping lives in pure, clock-injected cores; the shell sends, logs and keeps time.
With a user `fetch`, diffs go through the fetcher workers first and `FetchQueue` releases
each topic's diffs in the order the shard made them (a failed or overdue fetch is logged and
its diff published unfetched). `ListCache` keeps packed list replies until the topic's next
diff. A graceful permdown repeats its goodbye until the `Departure` is acknowledged by every
peer that was up, or gives up.

Pid reuse: a link is (pid, start time). A track of a linked pid with another start time
means the linked process is gone (its pid was reused): its presences leave at once, before
the new process's presence joins.

Owners: the `pid` of a request is an owner (`watch.identity`): an OS pid, or one of the
lightweight owners inside that process. Presences belong to owners; links are per OS
process, one whatever its owners, and its exit takes every owner's presences.
"""

from __future__ import annotations

import gc
import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from whosthere.actors.base import (
    NOREPLY,
    WORK_SLICE_S,
    Actor,
    ActorSpec,
    Request,
    Timer,
    routes,
)
from whosthere.actors.shard_journal import ShardJournal
from whosthere.errors import (
    MalformedFrame,
    MessageTooLarge,
    NodeUnavailable,
    NotTracked,
    RefChanged,
    WhosthereError,
)
from whosthere.topology import EXITS_TOPIC, Topology
from whosthere.tracker.departure import Departure
from whosthere.tracker.fetch_queue import Diff, FetchQueue
from whosthere.tracker.list_cache import ListCache
from whosthere.tracker.refs import RefMaker
from whosthere.tracker.replication import Diff as Changed
from whosthere.tracker.replication import Replication
from whosthere.tracker.state import Element, State
from whosthere.transport import codec, fragments
from whosthere.transport.messages import (
    ClusterCast,
    Depart,
    Fetch,
    Fetched,
    FetcherReady,
    Fragment,
    FromPeer,
    GetByKey,
    GetMeta,
    GoodbyeAck,
    GracefulPermdown,
    Heartbeat,
    Link,
    ListTopic,
    ListTopics,
    MetasDiff,
    MetasResync,
    MetasState,
    ProcessesExited,
    PublishMany,
    ShardRestarted,
    Track,
    TrackMany,
    TransferAck,
    TransferReq,
    Unlink,
    Untrack,
    UntrackMany,
    UntrackPid,
    Update,
)
from whosthere.transport.sockets import Dealer
from whosthere.watch import PID_MAX, is_owner, os_pid

Changes = dict[str, tuple[list[Element], list[Element]]]  # topic -> (joins, leaves)
_CHECK_FETCHES_S = 0.05  # how often overdue fetches are looked for


_UNLINKED = object()
_GOODBYE_EVERY_S = 0.1  # a graceful permdown's goodbye is repeated this often...
_GOODBYE_FOR_S = 1.0  # ...until every peer acknowledges it, or for this long
# A diff goes to PubSub at once after a quiet spell; diffs that follow it within this gap go
# together when it ends. A caller tracking one presence after another would otherwise wake
# the PubSub process once per track, on the cores its own round trips need.
_PUBLISH_GAP_S = 0.001
_EXIT_TOPICS = 20  # topics named in an exit's notice, at most
_OUTBOX_MAX_BYTES = 8 * 1024 * 1024  # diffs batched into one PublishMany frame at most
_FREEZE_EVERY = 10_000  # presences added between two gc.freeze()
_LISTED_MAX_BYTES = 64 * 1024 * 1024  # packed list replies kept (all dropped beyond)
_HELPER_HWM = 10_000  # messages queued to a fetcher or the presence client actor
_CLIENT_STATE_PART = 4 * 1024 * 1024  # bytes of metas per `MetasState` part, about
_CLIENT_RETRY_S = 0.5  # how often the whole state is offered to a client actor behind
_LINK_BATCH = 10_000  # owners per Link message when a restarted shard links them again


def check_owner(owner: int) -> None:
    if not is_owner(owner):
        raise MalformedFrame(
            f"an owner is an OS pid in 1..{PID_MAX}, with a serial or not; got {owner}"
        )


def group(elements: list[Element]) -> dict[str, list[bytes]]:
    """Elements of one topic by key: {key: [packed meta, ...]}."""
    out: dict[str, list[bytes]] = {}
    for e in elements:
        metas = out.get(e.key)
        if metas is None:
            out[e.key] = [e.meta]
        else:
            metas.append(e.meta)
    return out


_entry = codec.track_entry  # one `TrackMany` entry, checked as `codec.decode` checks a `Track`


class ShardActor(Actor):
    gathering: Changes | None = None  # the changes of the message being handled
    published_at = 0.0  # when the outbox was last sent
    publish_timer: Timer | None = None  # set while diffs wait out `_PUBLISH_GAP_S`
    batchable = (Track, Untrack, UntrackPid, UntrackMany, Update, GetMeta, GetByKey)
    handles = (
        Track,
        TrackMany,
        Untrack,
        UntrackPid,
        UntrackMany,
        Update,
        GetMeta,
        ListTopic,
        GetByKey,
        ListTopics,
        Fetched,
        FromPeer,
        Depart,
        FetcherReady,
        MetasResync,
    )

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        config, topology = spec.node, Topology(spec.node)
        self.index = spec.index
        self.pool_size = config.pool_size
        self.meta_limit = config.meta_limit
        self.fetch_timeout = config.fetch_timeout
        cluster = topology.cluster
        # without a cluster a delta would only grow: nobody would ever take it
        record_delta = bool(cluster)
        self.journal = (
            ShardJournal(spec.runtime_dir, self.name, self.log) if config.durable else None
        )
        recovered = self.journal.recover(record_delta=record_delta) if self.journal else None
        self.recovered = recovered is not None
        if recovered is not None:  # the same replica as before the crash
            self.state, starts = recovered
        else:  # a new replica
            vsn = time.time_ns() // 1000 * 1000 + random.randrange(1000)
            self.state, starts = State((spec.node_name, vsn), record_delta=record_delta), {}
        vsn = self.state.vsn
        # OS pid -> the start time it was linked with; its owners with presences here (a
        # bare pid is an owner too: the whole process). One link per OS process.
        self.linked: dict[int, int | float | None] = dict(starts)
        self.owners: dict[int, set[int]] = {}
        for owner in self.state.pids:
            self.owners.setdefault(os_pid(owner), set()).add(owner)
        if self.journal is not None:
            self.journal.start(self.state, self.linked, recovered=self.recovered)
        self.cluster = Dealer(cluster, what="cluster actor", unbounded=True) if cluster else None
        self.replication = Replication(self.state, config.tracker) if cluster else None
        if self.replication is not None and self.recovered:
            self.replication.resume(time.monotonic())
        self.departed = False
        self.from_peers = routes(
            self, (Heartbeat, TransferReq, TransferAck, GracefulPermdown, GoodbyeAck)
        )
        self.reassembler = fragments.Reassembler()
        # replication messages that came while a merge was under way, handled after it
        self.deferred: deque[FromPeer] = deque()
        self.too_large = 0  # replication messages not sent: over what peers accept
        self.too_large_logged = -math.inf
        self.departing: Departure | None = None  # a goodbye waiting for acknowledgements
        self.depart_request: Request | None = None  # the Depart call answered when it ends
        self.refs = RefMaker(f"{spec.node_name}/{self.name}/{vsn}", random.getrandbits(16))
        self.pubsub = Dealer(topology.pubsub, what="pubsub actor", unbounded=True)
        # bounded: a slow `fetch` or `handle_metas` must not grow this process without end
        self.fetchers = [Dealer(e, what="fetcher", hwm=_HELPER_HWM) for e in topology.fetchers]
        self.use_fetchers = config.custom_fetch and bool(self.fetchers)
        client = topology.client
        self.client = Dealer(client, what="presence client", hwm=_HELPER_HWM) if client else None
        self.client_behind = False  # diffs to it were dropped: it gets the whole state anew
        self.fetch_overflows = 0  # diffs published unfetched: the fetchers' queues were full
        self.fetches = FetchQueue(self.fetch_timeout)
        self.outbox: list[list[Any]] = []  # [topic, event, packed diff], sent by `on_idle`
        self.outbox_bytes = 0
        self.gathered_leaves: dict[str, set[int]] = {}  # topic -> dots left while gathering
        self.frozen_at = 0  # state size at the last gc.freeze()
        # `report` drops a topic's list: every change of what a topic lists must go through it
        self.listed = ListCache(_LISTED_MAX_BYTES)
        self.published = 0  # diffs published since start

    def on_start(self) -> None:
        assert self.supervisor is not None, "a shard runs under a supervisor (links)"
        self.add_reader(self.supervisor.socket, self._on_supervisor)
        if self.recovered:  # the owners again; those that died meanwhile come back as exits
            owners = [[pid, start] for pid, start in self.linked.items()]
            for i in range(0, len(owners), _LINK_BATCH):
                self.supervisor.cast(Link(owners[i : i + _LINK_BATCH]))
            self.log.warning(
                "%s: restarted with %d presences of %d owners, as the same replica",
                self.name,
                len(self.state),
                len(owners),
            )
            # diffs made just before the crash may not have gone out: subscribers resync
            self.pubsub.cast(ShardRestarted(self.index, self.pool_size))
        if self.client is not None and self.spec.incarnation > 0:
            # the client actor may have asked the last incarnation for its state and never
            # had the answer (until then it drops this shard's diffs): it gets it now
            self.on_metas_resync(MetasResync())
        if self.use_fetchers:
            self.call_later(_CHECK_FETCHES_S, self._check_fetches)
        if self.replication is not None:  # the first tick comes soon, spread between nodes
            period = self.replication.broadcast_period
            self.call_later(random.uniform(0, period / 4), self._tick)

    def _handle(self, frames: list[bytes]) -> None:
        """A message's changes are reported once it is answered: the reply waits for the
        journal only, and a `Calls` batch (a thousand tracks into one topic) makes one diff
        per topic."""
        self.gathering = {}
        try:
            super()._handle(frames)
        finally:
            changes, self.gathering = self.gathering, None
            self.gathered_leaves.clear()
            if changes:
                self.report(changes)

    def before_reply(self) -> None:
        if self.journal is not None:  # what a reply acknowledges is journaled first
            self.journal.flush()

    def on_idle(self) -> None:
        if self.deferred and not self.working:
            self._drain_deferred()
        if self.journal is not None:  # first: no diff is seen before its change is journaled
            self.journal.flush()
        if self.outbox and self.publish_timer is None:
            wait = self.published_at + _PUBLISH_GAP_S - time.monotonic()
            if wait <= 0:
                self._send_outbox()
            else:  # diffs in quick succession: together, at most one gap later
                self.publish_timer = self.call_later(wait, self._publish_due)
        if len(self.state) >= self.frozen_at + _FREEZE_EVERY:
            # The state holds no reference cycles, yet the collector would scan all of it
            # again and again as it grows (a quarter of the track time at 100,000). Frozen
            # objects are still freed by reference counting when the state drops them.
            gc.collect(1)  # young garbage is not frozen with the rest of the process heap
            gc.freeze()
            self.frozen_at = len(self.state)
        elif len(self.state) < self.frozen_at:
            self.frozen_at = len(self.state)
        if self.journal is not None:
            self.journal.maybe_compact(self.state, self.linked)

    def _publish_due(self) -> None:
        self.publish_timer = None  # `on_idle`, right after the timers, sends the outbox

    def _send_outbox(self) -> None:
        """Every diff since the last send in one frame, in the order made."""
        if self.publish_timer is not None:
            self.publish_timer.cancel()
            self.publish_timer = None
        if self.journal is not None:  # first: no diff is seen before its change is journaled
            self.journal.flush()
        self.pubsub.cast(PublishMany(self.outbox, True))
        self.outbox = []
        self.outbox_bytes = 0
        self.published_at = time.monotonic()

    def on_stop(self) -> None:
        self.on_idle()
        if self.outbox:
            self._send_outbox()
        if self.journal is not None:
            self.journal.close()
        others = [d for d in (self.client, self.cluster) if d is not None]
        for dealer in (self.pubsub, *self.fetchers, *others):
            dealer.close(flush_timeout=0.5 if dealer is self.cluster else 0.0)

    def stats(self) -> dict[str, Any]:
        return {
            "presences": len(self.state),
            "topics": len(self.state.topics),
            "pids": self.state.pid_count(),
            "diffs": self.published,
            "fetching": self.fetches.in_flight,
            "fetch_failures": self.fetches.failures,
            "fetch_overflows": self.fetch_overflows,
            "client_behind": self.client_behind,
            "journal": self.journal.status() if self.journal is not None else None,
            **(
                {
                    "replicas": self.replication.status(time.monotonic()),
                    "transfers": self.replication.transfers,
                    "replication_events": dict(self.replication.events),
                    "fragmented_lost": self.reassembler.lost,
                    "too_large": self.too_large,
                    "departing": self.departing.missing() if self.departing is not None else None,
                }
                if self.replication is not None
                else {}
            ),
        }

    # -- replication -----------------------------------------------------------------------

    def _tick(self) -> None:
        assert self.replication is not None
        now = time.monotonic()
        self.reassembler.expire(now)
        busy = self.working or bool(self.deferred)
        outs, diff = self.replication.tick(now, self.input_read_at, busy)
        self._send_peers(outs)
        self.report(_by_topic(*diff))
        self.call_later(self.replication.broadcast_period, self._tick)

    def on_from_peer(self, msg: FromPeer) -> None:
        """A replication message: a sign of life of its sender as it comes; handled at once,
        or after the merge under way (a peer's messages are handled in the order sent)."""
        if self.replication is None:
            return
        self.replication.heard(msg.sender, time.monotonic())
        if self.working or self.deferred:
            self.deferred.append(msg)
            return
        self._from_peer(msg)

    def _from_peer(self, msg: FromPeer) -> None:
        assert self.replication is not None
        inner = codec.decode(msg.payload)  # MalformedFrame: logged and dropped by the loop
        if isinstance(inner, Fragment):
            now = time.monotonic()
            self.replication.transfer_progress(msg.sender, now)
            inner = self.reassembler.add(msg.sender, inner, now)
            if inner is None:
                return  # more pieces to come
        replica = getattr(inner, "replica", None)  # every replication message names its own
        if not (isinstance(replica, list) and replica and replica[0] == msg.sender):
            raise MalformedFrame(f"{type(inner).__name__} from {msg.sender} names {replica!r:.80}")
        handler = self.from_peers.get(type(inner))
        if handler is None:
            raise MalformedFrame(f"{type(inner).__name__} is not a replication message")
        handler(inner, msg.sender)

    def _drain_deferred(self) -> None:
        """The replication messages that waited for long work, in order, a slice at a time;
        one that starts long work of its own stops the drain until it ends."""
        end = time.monotonic() + WORK_SLICE_S
        while self.deferred and not self.working:
            self._handle_deferred(self.deferred.popleft())
            if time.monotonic() >= end:
                if self.deferred and not self.working:
                    self.call_later(0, self._drain_deferred)  # after the loop's other work
                return

    def _handle_deferred(self, msg: FromPeer) -> None:
        try:
            self._from_peer(msg)
        except MalformedFrame as exc:
            self.log.warning(
                "%s: dropped a replication message from %s: %s", self.name, msg.sender, exc
            )
        except Exception:  # a bug must not end the shard, nor drop the messages after it
            self.log.exception("%s: a replication message from %s failed", self.name, msg.sender)

    # Replication messages, unwrapped from `FromPeer`; a departed replica only says goodbye.

    @property
    def _replication(self) -> Replication:
        assert self.replication is not None, "replication messages reach clustered shards only"
        return self.replication

    def on_heartbeat(self, msg: Heartbeat, sender: str) -> None:
        if not self.departed:
            self._merge(self._replication.heartbeat_parts(msg, time.monotonic()))

    def on_transfer_req(self, msg: TransferReq, sender: str) -> None:
        if not self.departed:
            answer = self._replication.transfer_req_parts(msg, time.monotonic(), time.monotonic)
            self._run(answer, self._send_peers)

    def on_transfer_ack(self, msg: TransferAck, sender: str) -> None:
        if not self.departed:
            self._merge(self._replication.transfer_ack_parts(msg, time.monotonic()))

    def _merge(self, parts: Iterator[Changed]) -> None:
        self._run(parts, self._report_part)

    def _report_part(self, diff: Changed) -> None:
        if diff[0] or diff[1]:
            self.report(_by_topic(*diff))

    def _run(self, parts: Iterator[Any], each: Callable[[Any], None]) -> None:
        """`each` part as it is made; what is left after a slice of work goes on as long work
        (`start_work`), so that heartbeats are sent and calls served between parts. Later
        replication messages wait for it (`deferred`)."""
        if not self.working:  # (work waiting goes first)
            end = time.monotonic() + WORK_SLICE_S
            for part in parts:
                each(part)
                if time.monotonic() >= end:
                    break
            else:
                return  # all done within one slice
        self.start_work(self._rest(parts, each))

    def _rest(self, parts: Iterator[Any], each: Callable[[Any], None]) -> Iterator[None]:
        for part in parts:
            each(part)
            yield

    def on_graceful_permdown(self, msg: GracefulPermdown, sender: str) -> None:
        if self.departed:  # leaving together: let it go too
            self._cast_peer(sender, GoodbyeAck(self._replication.me))
            return
        outs, diff = self._replication.on_graceful_permdown(msg)
        self._send_peers(outs)
        self.report(_by_topic(*diff))

    def on_goodbye_ack(self, msg: GoodbyeAck, sender: str) -> None:
        if self.departing is None:
            return  # a late answer to an earlier incarnation's goodbye
        if self.departing.acked(sender):
            self._departed()

    def on_depart(self, msg: Depart) -> Any:
        """Tell the peers to drop this replica now (graceful permdown); it replicates no more.

        The goodbye is repeated until every peer that was up acknowledges it (or
        `_GOODBYE_FOR_S` passes): a lost goodbye would leave this node's presences shown
        for down_period. The answer lists the peers that did not acknowledge."""
        if self.replication is None or self.departed:
            return []
        goodbye, waiting = self.replication.goodbye()
        self._send_peers([goodbye])
        self.departed = True
        departure = Departure(waiting, time.monotonic() + _GOODBYE_FOR_S)
        if departure.done:
            self._flush_cluster()
            return []
        assert self.request is not None, "Depart is a call"
        self.departing, self.depart_request = departure, self.request
        self.call_later(_GOODBYE_EVERY_S, lambda: self._say_goodbye(goodbye))
        return NOREPLY

    def _say_goodbye(self, goodbye: tuple[str, tuple]) -> None:
        if self.departing is None:
            return
        if not self.departing.due(time.monotonic()):
            self.log.warning(
                "%s: no goodbye acknowledgement from %s; they drop this replica after down_period",
                self.name,
                ", ".join(self.departing.missing()),
            )
            self._departed()
            return
        for name in self.departing.waiting:
            self._cast_peer(name, goodbye[1])
        self.call_later(_GOODBYE_EVERY_S, lambda: self._say_goodbye(goodbye))

    def _departed(self) -> None:
        assert self.departing is not None and self.depart_request is not None
        departure, request = self.departing, self.depart_request
        self.departing = self.depart_request = None
        try:
            self._flush_cluster()
        finally:
            self.reply(request, departure.missing())

    def _flush_cluster(self) -> None:
        """Wait until the cluster actor has taken every frame cast to it (the goodbye)."""
        try:
            self.cluster.flush(1.0)  # type: ignore[union-attr]
        except WhosthereError as exc:
            self.log.warning("%s: goodbye may not have gone out: %s", self.name, exc)

    def _send_peers(self, outs: list[tuple[str, tuple]]) -> None:
        if self.departed:
            return
        for to, message in outs:
            self._cast_peer(to, message)

    def _cast_peer(self, to: str, message: tuple) -> None:
        try:
            frames = fragments.encode(message)  # a whole-state transfer may need several
        except MessageTooLarge as exc:
            self.too_large += 1
            now = time.monotonic()
            if now - self.too_large_logged > 60:  # asked again and again: log once a minute
                self.too_large_logged = now
                self.log.error(
                    "%s: not sent to %s (%d so far): %s", self.name, to, self.too_large, exc
                )
            return
        for frame in frames:
            self.cluster.cast(ClusterCast(to, self.index, frame))  # type: ignore[union-attr]

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
                    pid, start, topic, key, meta = _entry(entry)
                    linked = self.linked.get(os_pid(pid), start)
                    if linked != start and changes:
                        self.report(changes)  # this batch's joins go out before the leaves
                        changes = {}
                    results.append(self._track(pid, start, topic, key, meta, changes=changes))
                except WhosthereError as exc:
                    results.append([type(exc).__name__, str(exc)])
        finally:  # what changed is reported, even if an entry broke something unexpected
            self.report(changes)
        return results

    def _track(
        self,
        pid: int,
        start: int | float | None,
        topic: str,
        key: str,
        meta: bytes,
        *,
        changes: Changes,
    ) -> str:
        check_owner(pid)
        codec.check_packed_meta(meta, self.meta_limit)
        process = os_pid(pid)
        linked = self.linked.get(process, _UNLINKED)
        if linked is not _UNLINKED and linked != start:
            self._exited([(process, linked)])  # that pid now names another process
            linked = _UNLINKED
        ref = self.refs.make(time.time_ns())
        element = self.state.join(pid, topic, key, codec.meta_with_refs(meta, ref))
        self.owners.setdefault(process, set()).add(pid)
        if linked is _UNLINKED:
            self.supervisor.cast(Link([[process, start]]))  # type: ignore[union-attr]
            self.linked[process] = start
            if self.journal is not None:
                self.journal.recorder(("k", process, start))
        entry = changes.get(topic)
        if entry is None:
            changes[topic] = ([element], [])
        else:
            entry[0].append(element)
        return ref

    def on_list_topics(self, msg: ListTopics) -> list[list[Any]]:
        """The topics with the most presences here, most first (a dashboard's overview)."""
        topics = self.state.topics
        counts = ((topic, sum(map(len, keys.values()))) for topic, keys in topics.items())
        return [list(t) for t in heapq.nlargest(max(0, msg.limit), counts, key=lambda t: t[1])]

    def on_untrack(self, msg: Untrack) -> None:
        element = self.state.leave(msg.pid, msg.topic, msg.key)
        if element is not None:
            self._unlink_if_done(msg.pid)
            self.report({msg.topic: ([], [element])})

    def on_untrack_pid(self, msg: UntrackPid) -> int:
        left = self.state.leave_pid(msg.pid)
        self._unlink_if_done(msg.pid)
        self.report(_by_topic([], left))
        return len(left)

    def on_untrack_many(self, msg: UntrackMany) -> int:
        """`UntrackPid` of each owner, one diff per topic for all (non-owners skipped)."""
        left: list[Element] = []
        for owner in msg.pids:
            if is_owner(owner):
                left += self.state.leave_pid(owner)
                self._unlink_if_done(owner)
        self.report(_by_topic([], left))
        return len(left)

    def on_update(self, msg: Update) -> str:
        codec.check_packed_meta(msg.meta, self.meta_limit)
        current = self.state.get(msg.pid, msg.topic, msg.key)
        if current is None:
            raise NotTracked(f"pid {msg.pid} is not tracked on topic {msg.topic!r} as {msg.key!r}")
        old_ref = codec.unpack(current.meta)["phx_ref"]
        if msg.expect_ref is not None and old_ref != msg.expect_ref:
            raise RefChanged(f"phx_ref is {old_ref}, not {msg.expect_ref}")
        ref = self.refs.make(time.time_ns())
        meta = codec.meta_with_refs(msg.meta, ref, old_ref)
        old, new = self.state.leave_join(msg.pid, msg.topic, msg.key, meta)
        self.report({msg.topic: ([new], [old])})
        return ref

    def on_get_meta(self, msg: GetMeta) -> bytes:
        current = self.state.get(msg.pid, msg.topic, msg.key)
        if current is None:
            raise NotTracked(f"pid {msg.pid} is not tracked on topic {msg.topic!r} as {msg.key!r}")
        return current.meta

    def on_list_topic(self, msg: ListTopic) -> bytes:
        packed = self.listed.get(msg.topic)
        if packed is None:
            packed = codec.pack_grouped(self.state.metas_by_key(msg.topic))
            self.listed.put(msg.topic, packed)
        return packed

    def on_get_by_key(self, msg: GetByKey) -> list[bytes]:
        return [e.meta for e in self.state.get_by_key(msg.topic, msg.key)]

    def on_fetched(self, msg: Fetched) -> None:
        released = self.fetches.fetched(msg.id, msg.payload)
        if released is None:
            return  # timed out and published unfetched already
        topic, diffs = released
        if msg.payload is None:
            self.log.warning(
                "%s: fetch failed for topic %r; publishing the diff unfetched: %s",
                self.name,
                topic,
                msg.error,
            )
        for diff in diffs:
            self._publish(topic, diff)

    def on_fetcher_ready(self, msg: FetcherReady) -> None:
        """A fetcher (re)started: the fetches it held died with it; send them again now
        rather than wait for `fetch_timeout`."""
        if not self.use_fetchers or not 0 <= msg.index < len(self.fetchers):
            return
        if msg.incarnation == 0:
            return  # the node's first: it gets everything sent to the slot
        again, given_up = self.fetches.lost(msg.index, len(self.fetchers), time.monotonic())
        if again or given_up:
            self.log.warning(
                "%s: fetcher %d restarted: %d fetch(es) sent again, %d published "
                "unfetched after a second loss",
                self.name,
                msg.index,
                len(again),
                len(given_up),
            )
        for fid, topic, diff in again:
            self._send_fetch(fid, topic, diff)
        for topic, diffs in given_up:
            for diff in diffs:
                self._publish(topic, diff)

    def on_metas_resync(self, msg: MetasResync) -> None:
        """The presence client actor (re)started: it gets everything this shard lists, then
        the live diffs, so that `handle_metas` rebuilds its state."""
        if self.client is not None and not self._send_client_state():
            self._client_fell_behind()

    def _send_client_state(self) -> bool:
        """Every topic's presences to the client actor, in parts; False if its queue is full
        (it will be offered again)."""
        assert self.client is not None
        parts: list[dict[str, Any]] = [{}]
        size = 0
        for topic in list(self.state.topics):
            grouped = self.state.metas_by_key(topic)
            if not grouped:
                continue  # only replicas that are down have presences here
            packed = codec.pack_grouped(grouped)
            if size > _CLIENT_STATE_PART:
                parts.append({})
                size = 0
            parts[-1][topic] = codec.unpack(packed)
            size += len(packed)
        try:
            for i, topics in enumerate(parts):
                self.client.cast(MetasState(self.index, i, i == len(parts) - 1, topics), 0)
        except NodeUnavailable:
            return False
        return True

    def _client_fell_behind(self) -> None:
        if not self.client_behind:
            self.client_behind = True
            self.log.warning(
                "%s: the presence client actor is %d messages behind; its diffs "
                "are dropped until it takes the whole state again",
                self.name,
                _HELPER_HWM,
            )
            self.call_later(_CLIENT_RETRY_S, self._offer_client_state)

    def _offer_client_state(self) -> None:
        if self._send_client_state():
            self.client_behind = False
            self.log.warning("%s: the presence client actor caught up", self.name)
        else:
            self.call_later(_CLIENT_RETRY_S, self._offer_client_state)

    # -- exits -----------------------------------------------------------------------------

    def _on_supervisor(self) -> None:
        assert self.supervisor is not None
        for push in self.supervisor.recv_pushes(0):
            if isinstance(push, ProcessesExited):
                self._exited([(pid, start) for pid, start in push.exits], push.seen_at)

    def _exited(self, exits: list[tuple[int, Any]], seen_at: float = 0.0) -> None:
        """Linked processes exited: their presences leave (one diff per topic), and the
        node's subscribers of `EXITS_TOPIC` hear which (for a page of recent crashes)."""
        changes: Changes = {}
        gone: list[tuple[int, list[Element]]] = []
        for pid, start in exits:
            if pid not in self.linked or self.linked[pid] != start:
                continue  # unlinked since, or an older process that had this pid
            del self.linked[pid]
            left: list[Element] = []
            for owner in self.owners.pop(pid, ()):  # every owner in that process
                left += self.state.leave_pid(owner)
            for element in left:
                changes.setdefault(element.topic, ([], []))[1].append(element)
            gone.append((pid, left))
        if changes:
            self.report(changes)
        left_at = time.time()
        for pid, left in gone:
            topics = sorted({e.topic for e in left})
            told = {
                "pid": pid,
                "presences": len(left),
                "topics": topics[:_EXIT_TOPICS],
                "seen_at": seen_at,
                "left_at": left_at,
            }
            self.outbox.append([EXITS_TOPIC, "exit", codec.pack_value(told)])

    def _unlink_if_done(self, owner: int) -> None:
        """`owner` holds nothing here any more: forgotten; its process unlinked once none
        of its owners holds anything."""
        if self.state.tracks(owner):
            return
        process = os_pid(owner)
        owners = self.owners.get(process)
        if owners is not None:
            owners.discard(owner)
            if owners:
                return
            del self.owners[process]
        if process in self.linked:
            start = self.linked.pop(process)
            self.supervisor.cast(Unlink([[process, start]]))  # type: ignore[union-attr]

    # -- diffs -----------------------------------------------------------------------------

    def report(self, changes: Changes) -> None:
        """Publish one diff per topic, through the fetchers when the user has a `fetch`.

        Diffs are packed from the stored metas without unpacking them; only a user callback
        (`fetch`, `handle_metas`) makes them unpack. While a message is handled they gather,
        in order, until it is answered (a diff's joins apply before its leaves, so a presence
        that joins again after it left, as a peer's do when it is up again, splits the diff).
        """
        gathering = self.gathering
        if gathering is None:
            self._report_now(changes)
            return
        left = self.gathered_leaves
        for topic, (joins, leaves) in changes.items():
            self.listed.drop(topic)
            entry = gathering.get(topic)
            if entry is None:
                gathering[topic] = (list(joins), list(leaves))
                continue
            if joins and entry[1]:
                dots = left.get(topic)
                if dots is None:
                    dots = left[topic] = {e.dot for e in entry[1]}
                if any(e.dot in dots for e in joins):  # back after leaving (a peer up
                    self._report_now({topic: entry})  # again): its leave goes first
                    del left[topic]
                    gathering[topic] = (list(joins), list(leaves))
                    continue
            entry[0].extend(joins)
            entry[1].extend(leaves)
            dots = left.get(topic)
            if dots is not None:
                dots.update(e.dot for e in leaves)

    def _report_now(self, changes: Changes) -> None:
        if self.journal is not None:  # first: nobody hears of a change not journaled
            self.journal.flush()
        for topic in changes:  # first: whatever happens below, no stale list is served
            self.listed.drop(topic)
        for topic, (joins, leaves) in changes.items():
            packed = codec.pack_diff(group(joins), group(leaves))
            if not self.use_fetchers:
                self._publish(topic, packed)
                continue
            diff = codec.unpack(packed)
            self._send_fetch(self.fetches.add(topic, diff, time.monotonic()), topic, diff)

    def _send_fetch(self, fid: int, topic: str, diff: Diff) -> None:
        """To fetcher `fid % fetchers`, never waiting: when its queue is full, the diff goes
        out as made, in the topic's order."""
        fetcher = self.fetchers[fid % len(self.fetchers)]
        try:
            fetcher.cast(Fetch(self.index, fid, topic, diff["joins"], diff["leaves"]), 0)
        except NodeUnavailable:
            self.fetch_overflows += 1
            if self.fetch_overflows % 1000 == 1:
                self.log.warning(
                    "%s: fetchers %d diffs behind; %d published unfetched",
                    self.name,
                    _HELPER_HWM,
                    self.fetch_overflows,
                )
            released = self.fetches.fetched(fid, None)
            if released is not None:
                for out in released[1]:
                    self._publish(topic, out)

    def _publish(self, topic: str, diff: bytes | Diff) -> None:
        """Queue a diff (packed, or as fetched) for `on_idle`; the client actor gets it now."""
        packed = diff if isinstance(diff, bytes) else codec.pack_value(diff)
        self.outbox.append([topic, "presence_diff", packed])
        self.outbox_bytes += len(packed)
        if self.outbox_bytes > _OUTBOX_MAX_BYTES:  # frames stay far below the frame limit
            self._send_outbox()
        if self.client is not None and not self.client_behind:
            unpacked = codec.unpack(packed) if isinstance(diff, bytes) else diff
            try:
                self.client.cast(MetasDiff(topic, unpacked, self.index), 0)
            except NodeUnavailable:
                self._client_fell_behind()
        self.published += 1

    def _check_fetches(self) -> None:
        self.call_later(_CHECK_FETCHES_S, self._check_fetches)  # first: whatever fails below
        for topic, diffs in self.fetches.expire(time.monotonic()):
            self.log.warning(
                "%s: fetch for topic %r took over %g s; publishing it unfetched",
                self.name,
                topic,
                self.fetch_timeout,
            )
            for diff in diffs:
                self._publish(topic, diff)


def _by_topic(joins: list[Element], leaves: list[Element]) -> Changes:
    changes: Changes = {}
    for e in joins:
        changes.setdefault(e.topic, ([], []))[0].append(e)
    for e in leaves:
        changes.setdefault(e.topic, ([], []))[1].append(e)
    return changes
