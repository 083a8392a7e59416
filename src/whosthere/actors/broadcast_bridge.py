"""Cluster-wide broadcasts between PubSub actors: the bookkeeping, apart from the sockets.

Each PubSub actor sends its node's cluster-wide broadcasts to every peer as one stream:
`PeerBroadcasts` frames numbered 1, 2, 3... in its incarnation (`epoch`), each stamped with
the sender's monotonic clock. The stream travels through the cluster actors, on the
connections replication already uses, so a peer gets the frames in the order sent, and a
topic's messages in the order they were broadcast. When nothing is sent for
`STREAM_BEAT_S`, an empty frame repeats the last number: a loss shows soon after, even if
nothing else is broadcast.

A receiver delivers each frame to its own subscribers once, and tells what it cannot deliver:
- a number skipped (a frame lost in a netsplit, or dropped by a full queue): lost;
- a frame late by more than `late_after` (the tracker's down_period) compared with the
  quickest delivery seen from that sender: a kernel or ZeroMQ held it through a cut link and
  delivered it when the link came back. Not delivered (a chat message from before a split
  is not news), and lost;
- a new incarnation of the sender's PubSub actor whose first frames did not come. (What the
  last one published it forwarded at once; what it never handled its own subscribers hear
  of, and nobody here had it.)
What is lost cannot be named by topic (the frames never came), so every subscription of the
node hears of it (`MessagesLost`), as after a restart of its own PubSub actor.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAM_BEAT_S = 1.0  # an idle stream repeats its last number this often
FRAME_BYTES = 4 * 1024 * 1024  # broadcasts batched into one frame, about


@dataclass
class _Stream:
    epoch: int
    seq: int  # the last number seen
    offset: float  # the least (our receive time - its send time) seen
    losing: bool = False  # the last frames were lost (subscribers told once per run)


@dataclass(frozen=True)
class Verdict:
    deliver: bool  # publish the frame's broadcasts to this node's subscribers
    lost: bool  # some of the sender's broadcasts will never be delivered here
    why: str = ""


class Inbound:
    """The streams of broadcasts this node receives, one per peer node."""

    def __init__(self, late_after: float) -> None:
        self.late_after = late_after
        self.streams: dict[str, _Stream] = {}
        self.lost = 0  # frames lost or too late, counted
        self.late = 0

    def receive(
        self, sender: str, epoch: int, seq: int, sent_at: float, *, empty: bool, now: float
    ) -> Verdict:
        """A frame numbered `seq` (an empty one repeats the last number) came from
        `sender`'s PubSub actor incarnation `epoch`."""
        lag = now - sent_at
        stream = self.streams.get(sender)
        if stream is None:  # first contact: what it sent before is not ours to miss
            self.streams[sender] = _Stream(epoch, seq, lag)
            return Verdict(not empty, False)
        if epoch != stream.epoch:  # its PubSub actor restarted (or its node): a new stream
            self.streams[sender] = _Stream(epoch, seq, lag)
            first = 0 if empty else 1
            if seq == first:  # nothing of the new stream missed (the old one's went out)
                return Verdict(not empty, False)
            return Verdict(
                not empty, True, f"broadcasts from {sender}'s new PubSub actor were lost"
            )
        stream.offset = min(stream.offset, lag)
        expected = stream.seq if empty else stream.seq + 1
        if seq < expected or (seq == stream.seq and not empty):
            return Verdict(False, False)  # delivered already (a route changed midway)
        gap = seq > expected
        stream.seq = seq
        if lag - stream.offset > self.late_after:
            self.late += not empty
            late = lag - stream.offset
            why = f"{sender}'s broadcasts came {late:.1f} s late (held through a netsplit)"
            return self._lost(stream, False, not empty or gap, why)
        if gap:
            return self._lost(stream, not empty, True, f"broadcasts from {sender} were lost")
        if not empty:
            stream.losing = False
        return Verdict(not empty, False)

    def _lost(self, stream: _Stream, deliver: bool, lost: bool, why: str) -> Verdict:
        """A loss is told once per run of lost frames (a netsplit's, all at once)."""
        if not lost:
            return Verdict(deliver, False)
        self.lost += 1
        told = stream.losing
        stream.losing = not deliver
        return Verdict(deliver, not told, why)

    def forget(self, sender: str) -> None:
        self.streams.pop(sender, None)
