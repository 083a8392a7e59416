"""A clustered shard's side of replication: the shell around `tracker.replication`.

It ticks (heartbeats, down and permdown), unwraps what peers send (`FromPeer`, reassembling
fragments), and runs long merges in parts between the loop's other duties (`start_work`):
the shard's own heartbeats go out on time and calls are answered meanwhile. Replication
messages that come during a merge wait (`deferred`) and are handled in order after it; their
arrival already counts as a sign of life of their sender.

A graceful permdown (`depart`) says goodbye and repeats it until every peer that was up
acknowledges it (`tracker.departure`), or gives up after `GOODBYE_FOR_S`: a lost goodbye
would leave this node's presences shown for `down_period`.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from whosthere.actors.base import NOREPLY, WORK_SLICE_S, Actor, Request, routes
from whosthere.errors import MalformedFrame, MessageTooLarge, WhosthereError
from whosthere.tracker.changes import Changes, by_topic
from whosthere.tracker.departure import GOODBYE_FOR_S, Departure
from whosthere.tracker.replication import Outgoing, Replication
from whosthere.tracker.state import JoinsLeaves
from whosthere.transport import codec, fragments
from whosthere.transport.messages import (
    ClusterCast,
    Fragment,
    FromPeer,
    GoodbyeAck,
    GracefulPermdown,
    Heartbeat,
    TransferAck,
    TransferReq,
)
from whosthere.transport.sockets import Dealer

GOODBYE_EVERY_S = 0.1  # a graceful permdown's goodbye is repeated this often (GOODBYE_FOR_S)
TOO_LARGE_LOG_EVERY_S = 60.0


class ShardPeers:
    def __init__(
        self,
        actor: Actor,
        replication: Replication,
        cluster: Dealer,
        *,
        report: Callable[[Changes], None],
        before_send: Callable[[], None],
    ) -> None:
        """`report`: the shard's, for the joins and leaves replication makes;
        `before_send`: runs before anything goes to the peers (the shard's journal)."""
        self.actor = actor
        self.index = actor.spec.index
        self.replication = replication
        self.cluster = cluster
        self.report = report
        self.before_send = before_send
        self.handlers = routes(
            self, (Heartbeat, TransferReq, TransferAck, GracefulPermdown, GoodbyeAck)
        )
        self.reassembler = fragments.Reassembler()
        self.deferred: deque[FromPeer] = deque()  # came while a merge was under way
        self.departed = False  # said goodbye: it replicates no more
        self.departing: Departure | None = None  # a goodbye waiting for acknowledgements
        self.depart_request: Request | None = None  # the Depart call answered when it ends
        self.too_large = 0  # replication messages not sent: over what peers accept
        self.too_large_logged = -math.inf

    def start(self) -> None:
        """The first tick comes soon, spread between nodes."""
        period = self.replication.broadcast_period
        self.actor.call_later(random.uniform(0, period / 4), self._tick)

    @property
    def busy(self) -> bool:
        return self.actor.working or bool(self.deferred)

    def _tick(self) -> None:
        now = time.monotonic()
        self.reassembler.expire(now)
        outs, diff = self.replication.tick(now, self.actor.input_read_at, self.busy)
        self._send(outs)
        self.report(by_topic(*diff))
        self.actor.call_later(self.replication.broadcast_period, self._tick)

    # -- what peers send -------------------------------------------------------------------

    def on_from_peer(self, msg: FromPeer) -> None:
        """A sign of life of its sender as it comes; handled at once, or after the merge
        under way (a peer's messages are handled in the order sent)."""
        self.replication.heard(msg.sender, time.monotonic())
        if self.busy:
            self.deferred.append(msg)
            return
        self._handle(msg)

    def _handle(self, msg: FromPeer) -> None:
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
        handler = self.handlers.get(type(inner))
        if handler is None:
            raise MalformedFrame(f"{type(inner).__name__} is not a replication message")
        handler(inner, msg.sender)

    def drain_deferred(self) -> None:
        """The messages that waited for long work, in order, a slice at a time; one that
        starts long work of its own stops the drain until that ends."""
        end = time.monotonic() + WORK_SLICE_S
        while self.deferred and not self.actor.working:
            msg = self.deferred.popleft()
            try:
                self._handle(msg)
            except MalformedFrame as exc:
                self.actor.log.warning(
                    "%s: dropped a replication message from %s: %s",
                    self.actor.name,
                    msg.sender,
                    exc,
                )
            except Exception:  # a bug must not end the shard, nor drop the messages after it
                self.actor.log.exception(
                    "%s: a replication message from %s failed", self.actor.name, msg.sender
                )
            if time.monotonic() >= end:
                if self.deferred and not self.actor.working:
                    self.actor.call_later(0, self.drain_deferred)  # after the loop's other work
                return

    # Replication messages, unwrapped; a departed replica only says goodbye.

    def on_heartbeat(self, msg: Heartbeat, sender: str) -> None:
        if not self.departed:
            self._merge(self.replication.heartbeat_parts(msg, time.monotonic()))

    def on_transfer_req(self, msg: TransferReq, sender: str) -> None:
        if not self.departed:
            answer = self.replication.transfer_req_parts(msg, time.monotonic(), time.monotonic)
            self._in_parts(answer, self._send)

    def on_transfer_ack(self, msg: TransferAck, sender: str) -> None:
        if not self.departed:
            self._merge(self.replication.transfer_ack_parts(msg, time.monotonic()))

    def on_graceful_permdown(self, msg: GracefulPermdown, sender: str) -> None:
        if self.departed:  # leaving together: let it go too
            self._cast(sender, GoodbyeAck(self.replication.me))
            return
        outs, diff = self.replication.on_graceful_permdown(msg, time.monotonic())
        self._send(outs)
        self.report(by_topic(*diff))

    def on_goodbye_ack(self, msg: GoodbyeAck, sender: str) -> None:
        if self.departing is not None and self.departing.acked(sender):
            self._departed()

    def _merge(self, parts: Iterator[JoinsLeaves]) -> None:
        self._in_parts(parts, self._report_part)

    def _report_part(self, diff: JoinsLeaves) -> None:
        if diff[0] or diff[1]:
            self.report(by_topic(*diff))

    def _in_parts(self, parts: Iterator[Any], each: Callable[[Any], None]) -> None:
        """`each` part as it is made; what is left after a slice goes on as long work, so
        that heartbeats are sent and calls served between parts."""
        if not self.actor.working:  # (work waiting goes first)
            end = time.monotonic() + WORK_SLICE_S
            for part in parts:
                each(part)
                if time.monotonic() >= end:
                    break
            else:
                return  # all done within one slice
        self.actor.start_work(_each(parts, each))

    # -- leaving ---------------------------------------------------------------------------

    def depart(self, request: Request | None) -> Any:
        """Tell the peers to drop this replica now (graceful permdown); it replicates no
        more. The answer, once every peer that was up acknowledged or the time is up, lists
        the peers that did not."""
        if self.departed:
            return []
        goodbye, waiting = self.replication.goodbye()
        self._send([goodbye])
        self.departed = True
        departure = Departure(waiting, time.monotonic() + GOODBYE_FOR_S)
        if departure.done:
            self._flush()
            return []
        assert request is not None, "Depart is a call"
        self.departing, self.depart_request = departure, request
        self.actor.call_later(GOODBYE_EVERY_S, lambda: self._say_goodbye(goodbye))
        return NOREPLY

    def _say_goodbye(self, goodbye: Outgoing) -> None:
        if self.departing is None:
            return
        if not self.departing.due(time.monotonic()):
            self.actor.log.warning(
                "%s: no goodbye acknowledgement from %s; they drop this replica after down_period",
                self.actor.name,
                ", ".join(self.departing.missing()),
            )
            self._departed()
            return
        for name in self.departing.waiting:
            self._cast(name, goodbye[1])
        self.actor.call_later(GOODBYE_EVERY_S, lambda: self._say_goodbye(goodbye))

    def _departed(self) -> None:
        assert self.departing is not None and self.depart_request is not None
        departure, request = self.departing, self.depart_request
        self.departing = self.depart_request = None
        try:
            self._flush()
        finally:
            self.actor.reply(request, departure.missing())

    def _flush(self) -> None:
        """Wait until the cluster actor has taken every frame cast to it (the goodbye)."""
        try:
            self.cluster.flush(1.0)
        except WhosthereError as exc:
            self.actor.log.warning("%s: goodbye may not have gone out: %s", self.actor.name, exc)

    # -- to the peers ----------------------------------------------------------------------

    def _send(self, outs: list[Outgoing]) -> None:
        if self.departed:
            return
        for to, message in outs:
            self._cast(to, message)

    def _cast(self, to: str, message: tuple[Any, ...]) -> None:
        self.before_send()
        try:
            frames = fragments.encode(message)  # a whole-state transfer may need several
        except MessageTooLarge as exc:
            self.too_large += 1
            now = time.monotonic()
            if now - self.too_large_logged > TOO_LARGE_LOG_EVERY_S:  # asked again and again
                self.too_large_logged = now
                self.actor.log.error(
                    "%s: not sent to %s (%d so far): %s",
                    self.actor.name,
                    to,
                    self.too_large,
                    exc,
                )
            return
        for frame in frames:
            self.cluster.cast(ClusterCast(to, self.index, frame))

    def stats(self) -> dict[str, Any]:
        return {
            "replicas": self.replication.status(time.monotonic()),
            "transfers": self.replication.transfers,
            "replication_events": dict(self.replication.events),
            "fragmented_lost": self.reassembler.lost,
            "too_large": self.too_large,
            "departing": self.departing.missing() if self.departing is not None else None,
        }

    def close(self) -> None:
        self.cluster.close(flush_timeout=0.5)


def _each(parts: Iterator[Any], each: Callable[[Any], None]) -> Iterator[None]:
    for part in parts:
        each(part)
        yield
