"""Replication bookkeeping of one shard: heartbeats, transfers, peers up, down and permdown.

Pure like `State`: time comes in as an argument, messages go out as (node name, message)
pairs for the shard to send (`"*"`: every peer). The shard turns the joins and leaves these
calls return into diffs, as it does for local changes.

Peers are known by node name; a heartbeat with a new vsn is a restarted shard: the old
incarnation is dropped (its presences leave, if they were still shown) and the new one
comes up. Silence beyond `down_period` hides a peer's presences (they leave, kept); beyond
`permdown_period` they are dropped. Every `clock_sample_periods` ticks, the shard asks the
peers whose clocks show knowledge it lacks for a transfer.

A down peer that speaks again is shown only once this replica has caught up with what it
changed meanwhile (from its heartbeat's delta, or a transfer asked for at once): showing the
presences held from before the split would make one removed during the split join again
and leave a moment later (upstream's flicker). After `down_period` of catching up in vain,
it is shown anyway.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from whosthere.tracker import deltas, wire
from whosthere.tracker.clock import ClockSet, append_clock
from whosthere.tracker.options import TrackerOptions
from whosthere.tracker.state import Delta, Element, JoinsLeaves, ReplicaRef, State
from whosthere.transport.messages import (
    GoodbyeAck,
    GracefulPermdown,
    Heartbeat,
    TransferAck,
    TransferReq,
)

log = logging.getLogger("whosthere.replication")

Outgoing = tuple[str, tuple[Any, ...]]  # (node name or "*", message)
MERGE_PART = 2_000  # values or dots merged between two turns of the shard's loop


def _together(parts: Iterator[JoinsLeaves]) -> JoinsLeaves:
    """Every part's joins and leaves, for a caller that merges all at once."""
    joins: list[Element] = []
    leaves: list[Element] = []
    for j, lv in parts:
        joins += j
        leaves += lv
    return joins, leaves


@dataclass
class Peer:
    vsn: int
    down: bool
    heard_at: float  # monotonic seconds of the last heartbeat
    clock: dict[ReplicaRef, int]
    returning_since: float | None = None  # down, heard again, not caught up yet
    # the least (our receive time - its send time) seen: its clock's offset from ours, plus
    # the quickest delivery; None until a heartbeat says when it was sent
    offset: float | None = None
    back_heard_at: float | None = None  # down: when a message of it came again (our time)


class Replication:
    def __init__(self, state: State, options: TrackerOptions) -> None:
        self.state = state
        self.me = wire.encode_replica(state.replica)
        self.broadcast_period = float(options.broadcast_period)
        self.down_period = float(options.down)
        # An idle replica still speaks at least twice per down_period, or a live but quiet
        # peer would be marked down (0.2 s broadcasts, down_period 2 s and Phoenix's 10
        # silent periods made an idle cluster flap). Phoenix's defaults are unchanged.
        self.max_silent = max(
            1,
            min(
                int(options.max_silent_periods), int(self.down_period / (2 * self.broadcast_period))
            ),
        )
        self.permdown_period = float(options.permdown_period)
        self.sample_periods = int(options.clock_sample_periods)
        self.caps = tuple(int(c) for c in options.max_delta_sizes)
        self.generations: list[Delta] = []
        self.peers: dict[str, Peer] = {}
        self.clockset: ClockSet[ReplicaRef] = []
        self.suspects: dict[str, dict[ReplicaRef, int]] = {}  # peers ahead at the last sample
        self.silent = self.max_silent  # the first tick announces this replica
        self.countdown = self.sample_periods
        self.refs = itertools.count(random.getrandbits(40))
        # one transfer asked of a peer at a time: a whole-state answer may take a while;
        # peer name -> (request ref, when asked, when a piece of a big message last came)
        self.asked: dict[str, tuple[int, float, float]] = {}
        self.transfer_timeout = 4 * self.sample_periods * self.broadcast_period
        # peer name -> when the last whole state went to it: one is not built again while
        # the last may still be on its way (its request, repeated, waited behind it)
        self.whole_sent: dict[str, float] = {}
        # replicas that said goodbye -> when: a late message of one never brings it back (a
        # restart is a new vsn); kept for permdown_period, as a silent replica would be
        self.departed: dict[ReplicaRef, float] = {}
        # what happened to peers and transfers since start, for `status` and the benches
        self.events = dict.fromkeys(
            ("down", "up_again", "permdown", "sent_whole", "sent_delta", "merged_whole"), 0
        )

    @property
    def transfers(self) -> int:
        """Transfers answered."""
        return self.events["sent_delta"] + self.events["sent_whole"]

    def resume(self, now: float) -> None:
        """The shard came back from its journal as the same replica: the peers its state
        knows are as they were, heard from just now (down ones stay down), so nothing is
        announced, dropped or transferred again."""
        me = self.state.replica
        for ref in self.state.context:
            if ref == me:
                continue
            name, vsn = ref
            known = self.peers.get(name)
            if known is None or known.vsn < vsn:
                self.peers[name] = Peer(vsn, ref in self.state.down, now, {})

    # -- the tick --------------------------------------------------------------------------

    def tick(
        self, now: float, read_until: float | None = None, busy: bool = False
    ) -> tuple[list[Outgoing], JoinsLeaves]:
        """Every broadcast_period: heartbeat, transfer sampling, failure detection.

        `read_until`: the time up to which the shard has read every message that came
        (default `now`). A peer whose heartbeats wait unread in our own queue is not silent:
        silence is counted up to that time only. `busy`: a merge is under way, so our clocks
        lag behind what has come; transfers are asked for once it ends."""
        outs: list[Outgoing] = []
        state = self.state
        if state.delta:
            delta = state.take_delta()
            self.generations = deltas.push(self.generations, delta, self.caps, state.delta)
            outs.append(("*", Heartbeat(self.me, wire.encode_delta(delta), self._clocks(), now)))
            self.silent = 0
        elif self.silent >= self.max_silent or not self.peers:  # alone: keep announcing
            outs.append(("*", Heartbeat(self.me, None, self._clocks(), now)))
            self.silent = 0
        else:
            self.silent += 1
        if self.countdown <= 1 and busy:
            pass  # sampled at the first tick after the merge
        elif self.countdown <= 1:
            mine = state.clocks()
            self.clockset = append_clock(self.clockset, state.replica, mine)
            ahead = {ref[0]: clock for ref, clock in self.clockset if ref != state.replica}
            # Asked only of a peer that already looked ahead at the last sample, and whose
            # clock then is still ahead of ours: what it knew a sample ago has had the time to
            # come, so it was lost. Asking at once would ask for changes on their way (a
            # burst's heartbeats come at different times, and a transfer then is a whole
            # state, seconds of work on both sides, for nothing).
            behind = {
                name
                for name, clock in self.suspects.items()
                if any(mine.get(r, n) < n for r, n in clock.items())
            }
            # a peer still ahead stays suspect without a new heartbeat: a lost answer is
            # asked again once its wait is over, not only after the peer's next heartbeat
            self.suspects = {**{n: self.suspects[n] for n in behind}, **ahead}
            returning = {n for n, p in self.peers.items() if p.returning_since is not None}
            for name in sorted(behind | returning):
                if name not in self.peers:
                    continue  # forgotten since
                if name in self.asked and self._waiting(self.asked[name], now):
                    continue  # its answer to the last request is still on its way
                ref = next(self.refs)
                self.asked[name] = (ref, now, now)
                # a returning peer is down here, so absent from our clocks: name it, or its
                # answer would leave out its own presences
                down = (name, self.peers[name].vsn) if name in returning else None
                outs.append((name, TransferReq(ref, self.me, self._clocks(down))))
            self.clockset = []
            self.countdown = self.sample_periods
        else:
            self.countdown -= 1
        return outs, self._detect_failures(now if read_until is None else min(now, read_until))

    def _detect_failures(self, read_until: float) -> JoinsLeaves:
        leaves: list[Element] = []
        for ref, at in list(self.departed.items()):
            if read_until - at > self.permdown_period:
                del self.departed[ref]
        for name, peer in list(self.peers.items()):
            silence = read_until - peer.heard_at
            ref = (name, peer.vsn)
            if silence > self.permdown_period:
                leaves += self._forget(name)
                self.events["permdown"] += 1
                log.info(
                    "%s: replica %s permdown: no message for %.1f s (permdown_period %.1f s)",
                    self.me,
                    ref,
                    silence,
                    self.permdown_period,
                )
            elif silence > self.down_period and not peer.down:
                peer.down = True
                peer.back_heard_at = None
                self.asked.pop(name, None)  # ask afresh when it is heard again
                leaves += self.state.replica_down(ref)
                self.events["down"] += 1
                log.info(
                    "%s: replica %s down: no message for %.1f s (down_period %.1f s)",
                    self.me,
                    ref,
                    silence,
                    self.down_period,
                )
        return [], leaves

    def _forget(self, name: str) -> list[Element]:
        peer = self.peers.pop(name)
        self.asked.pop(name, None)
        self.whole_sent.pop(name, None)
        ref = (name, peer.vsn)
        leaves = [] if peer.down else self.state.replica_down(ref)
        self.state.permdown(ref)
        deltas.prune(self.generations, ref)
        return leaves

    # -- messages --------------------------------------------------------------------------

    def on_heartbeat(self, msg: Heartbeat, now: float) -> JoinsLeaves:
        return _together(self.heartbeat_parts(msg, now))

    def heartbeat_parts(self, msg: Heartbeat, now: float) -> Iterator[JoinsLeaves]:
        """A peer's heartbeat, its delta merged `MERGE_PART` at a time: each part's diff."""
        ref = wire.decode_replica(msg.replica)
        delta = None if msg.delta is None else wire.decode_delta(msg.delta)
        clocks = wire.decode_clock(msg.clocks)
        name, vsn = ref
        joins, leaves = [], []
        peer = self.peers.get(name)
        if peer is not None and vsn < peer.vsn:
            return  # a late message of an older incarnation (vsns grow with time)
        if ref in self.departed:
            return  # it said goodbye: whatever it sent before is late, and it is gone
        if peer is not None and peer.vsn != vsn:  # a restarted shard: a new replica
            leaves += self._forget(name)
            log.info("%s: replica %s replaced by vsn %d", self.me, (name, peer.vsn), vsn)
            peer = None
        if peer is None:
            joins += self.state.replica_up(ref)
            peer = self.peers[name] = Peer(vsn, False, now, clocks)
            self.silent = self.max_silent  # announce this replica to the newcomer next tick
            log.info("%s: replica %s up", self.me, ref)
        if msg.sent_at is not None:
            lag = now - msg.sent_at
            peer.offset = lag if peer.offset is None else min(peer.offset, lag)
        if peer.down and not self._sent_since_back(name, peer, msg.sent_at, now):
            # Not proof of life: a heartbeat sent before this replica heard the peer again
            # may come from a peer dead since, delivered late by the network (a kernel still
            # holding its unsent data when a cut cable came back). Its delta is kept, hidden.
            if delta is not None:
                yield from self._merge(delta)
            return
        if peer.returning_since is not None and now - peer.heard_at > self.down_period:
            peer.returning_since = None  # silent again since: catching up starts over
        peer.heard_at = now
        peer.clock = clocks
        if joins or leaves:
            yield joins, leaves
        if delta is not None:  # a down peer's changes are merged hidden, not reported
            yield from self._merge(delta)
        if peer.down and self.peers.get(name) is peer:
            yield self._show_when_caught_up(name, peer, now), []
        # only what this replica can take counts: entries for replicas unknown or down here
        # would make the peer look ahead for ever (and every sample a whole-state transfer)
        mine = self.state.clocks()
        self.clockset = append_clock(
            self.clockset, ref, {r: n for r, n in clocks.items() if r in mine}
        )

    def _merge(self, delta: Delta) -> Iterator[JoinsLeaves]:
        yield from self.state.merge_in_parts(delta, MERGE_PART)
        self.generations = deltas.push(self.generations, delta, self.caps, self.state.delta)

    def on_transfer_req(self, msg: TransferReq, now: float | None = None) -> list[Outgoing]:
        return [out for outs in self.transfer_req_parts(msg, now) for out in outs]

    def transfer_req_parts(
        self, msg: TransferReq, now: float | None = None, clock: Callable[[], float] | None = None
    ) -> Iterator[list[Outgoing]]:
        """The answer to a transfer request: a delta generation, or the whole state built
        `MERGE_PART` elements at a time (nothing to send until the last part). `clock`
        tells the time when it is sent, if not `now` (building it may take seconds)."""
        ref = wire.decode_replica(msg.replica)
        clocks = wire.decode_clock(msg.clocks)
        if now is not None:
            self._alive(ref[0], ref[1], now)
        chosen = deltas.for_peer(self.generations, clocks)
        if chosen is None and now is not None:
            sent = self.whole_sent.get(ref[0])
            if sent is not None and now - sent < self.transfer_timeout:
                log.info(
                    "%s: %s asked again for the whole state, sent %.1f s ago: not sent twice",
                    self.me,
                    ref,
                    now - sent,
                )
                return
        if chosen is not None:
            ack = TransferAck(msg.ref, self.me, wire.encode_delta(chosen), None)
        else:
            parts = self.state.extract_in_parts(ref, clocks, MERGE_PART)
            while True:
                try:
                    next(parts)
                except StopIteration as done:
                    snapshot = done.value
                    break
                yield []
            ack = TransferAck(msg.ref, self.me, None, wire.encode_snapshot(snapshot))
            if now is not None:
                self.whole_sent[ref[0]] = now if clock is None else clock()
        self.events["sent_delta" if chosen is not None else "sent_whole"] += 1
        log.info("%s: transfer to %s (%s)", self.me, ref, "delta" if chosen else "whole state")
        yield [(ref[0], ack)]

    def on_transfer_ack(self, msg: TransferAck, now: float) -> JoinsLeaves:
        return _together(self.transfer_ack_parts(msg, now))

    def transfer_ack_parts(self, msg: TransferAck, now: float) -> Iterator[JoinsLeaves]:
        """A transfer's answer, merged `MERGE_PART` at a time: each part's diff."""
        name, vsn = wire.decode_replica(msg.replica)
        if msg.delta is not None:
            yield from self._merge(wire.decode_delta(msg.delta))
        elif msg.snapshot is not None:
            yield from self.state.merge_in_parts(wire.decode_snapshot(msg.snapshot), MERGE_PART)
            self.generations = []
            self.events["merged_whole"] += 1
        else:
            return
        log.info("%s: transfer from %s merged", self.me, msg.replica)
        self._alive(name, vsn, now)
        if self.asked.get(name, (None,))[0] == msg.ref:
            del self.asked[name]  # answered (a late answer to an older request is not)
        peer = self.peers.get(name)
        if peer is not None and peer.vsn == vsn and peer.returning_since is not None:
            yield self._show_when_caught_up(name, peer, now), []

    def _sent_since_back(self, name: str, peer: Peer, sent_at: float | None, now: float) -> bool:
        """Whether a down peer's heartbeat proves it alive: it was sent after this replica
        first heard from the peer again (told by the sender's clock and the offset between
        the clocks), so the peer lived past that moment. Without a send time: yes."""
        if peer.back_heard_at is None:
            peer.back_heard_at = now
            log.info(
                "%s: replica %s heard again; shown once a heartbeat sent since comes",
                self.me,
                (name, peer.vsn),
            )
        if sent_at is None or peer.offset is None:
            return True
        return sent_at + peer.offset > peer.back_heard_at

    def _show_when_caught_up(self, name: str, peer: Peer, now: float) -> list[Element]:
        """Show a down peer that speaks again once nothing it changed is missing here
        (or once it has been catching up for down_period): its presences rejoin."""
        ref = (name, peer.vsn)
        behind = peer.clock.get(ref, 0) > self.state.context.get(ref, 0)
        if peer.returning_since is None:
            peer.returning_since = now
            if behind:
                self.countdown = 1  # ask it for a transfer at the next tick
                self.asked.pop(name, None)
                log.info("%s: replica %s back; shown once caught up", self.me, ref)
        if behind and now - peer.returning_since < self.down_period:
            return []
        peer.down = False
        peer.returning_since = None
        peer.back_heard_at = None
        self.events["up_again"] += 1
        why = "behind it still, after down_period" if behind else "nothing of it missing"
        log.info(
            "%s: replica %s up again (a heartbeat sent since it was heard; %s)", self.me, ref, why
        )
        return self.state.replica_up(ref)

    def _waiting(self, asked: tuple[int, float, float], now: float) -> bool:
        """Whether an answer may still come: pieces came lately, and not for too long
        (they might be of other big messages, while the request itself was lost)."""
        _, at, progress = asked
        return now - progress < self.transfer_timeout and now - at < 10 * self.transfer_timeout

    def heard(self, name: str, now: float) -> None:
        """A message of `name` came (handled now or later): a sign of life of an up peer."""
        self._alive(name, None, now)

    def _alive(self, name: str, vsn: int | None, now: float) -> None:
        """A message of an up peer's shard came: a sign of life as good as a heartbeat (a
        peer busy sending a transfer is not silent). A down one needs a heartbeat to return."""
        peer = self.peers.get(name)
        if peer is not None and not peer.down and vsn in (None, peer.vsn):
            peer.heard_at = max(peer.heard_at, now)

    def transfer_progress(self, name: str, now: float) -> None:
        """A piece of a big message from `name` came: a sign of life, and an answer still
        arriving is not asked for again."""
        self._alive(name, None, now)
        if name in self.asked:
            ref, at, _ = self.asked[name]
            self.asked[name] = (ref, at, now)

    def on_graceful_permdown(
        self, msg: GracefulPermdown, now: float
    ) -> tuple[list[Outgoing], JoinsLeaves]:
        """Drop the departing replica and acknowledge (a repeated goodbye too); it is not
        taken back by a late heartbeat of it."""
        name, vsn = wire.decode_replica(msg.replica)
        self.departed[(name, vsn)] = now
        ack: list[Outgoing] = [(name, GoodbyeAck(self.me))]
        peer = self.peers.get(name)
        if peer is None or peer.vsn != vsn:
            return ack, ([], [])
        log.info("%s: replica %s left (graceful permdown)", self.me, (name, vsn))
        return ack, ([], self._forget(name))

    def goodbye(self) -> tuple[Outgoing, set[str]]:
        """The message that makes peers drop this replica at once, and the peers that
        should acknowledge it (those up now)."""
        return ("*", GracefulPermdown(self.me)), {n for n, p in self.peers.items() if not p.down}

    def status(self, now: float) -> dict[str, Any]:
        return {
            name: {
                "vsn": p.vsn,
                "status": "up"
                if not p.down
                else "down"
                if p.returning_since is None
                else "catching up",
                "last_heartbeat_age": round(now - p.heard_at, 3),
                "clock": {f"{r[0]}/{r[1]}": n for r, n in p.clock.items()},
            }
            for name, p in self.peers.items()
        }

    def _clocks(self, down: ReplicaRef | None = None) -> list[Any]:
        """Our clocks as peers are told them; `down`: with this down replica's entry too."""
        clocks = self.state.clocks()
        if down is not None:
            clocks[down] = self.state.context.get(down, 0)
        return wire.encode_clock(clocks)
