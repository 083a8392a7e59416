"""Every message that crosses a socket, as a typed record.

A message travels as one msgpack array: its tag (see `codec.TAGS`) followed by its fields in
order. Field annotations are checked on decode (`codec.decode`), so a handler only ever sees
fields of the declared types; `tuple` fields arrive as tuples, not lists. Some fields also
carry a limit (`Annotated` with a marker below), checked on decode and, for requests from
clients, before sending (`codec.encode(checked=True)`): a bad value is refused at the door,
never stored where it would break later readers.

Request envelope (DEALER -> ROUTER): frames `[ref, body]`; `ref` is empty for a cast and a
per-socket request id for a call, echoed back with the reply `[ref, Ok | Failed]`. A frame
with an empty ref coming back to a DEALER is a push (e.g. `ProcessesExited`).
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

# -- field markers (what `codec` checks beyond the type) ------------------------------------

NAME = "name"  # a topic, key or event: at most `codec.MAX_NAME_BYTES` in UTF-8
NAMES = "names"  # a list of such names
FINITE = "finite"  # a number that is neither NaN nor infinite (NaN != NaN: never matched)
PAYLOAD = "payload"  # a value others unpack: containers at most `codec.MAX_DEPTH` deep

Name = Annotated[str, NAME]
Names = Annotated[list[str], NAMES]
StartTime = Annotated[int | float | None, FINITE]
Payload = Annotated[Any, PAYLOAD]

# -- replies -------------------------------------------------------------------------------


class Ok(NamedTuple):
    """A call succeeded."""

    value: Any  # whatever the handler returned


class Failed(NamedTuple):
    """A call failed in the actor; the caller raises `kind` again."""

    kind: str  # the exception's class name (a WhosthereError subclass, or ActorError)
    message: str  # str(exception)
    traceback: str  # the actor's formatted traceback, "" for expected errors


# -- every actor -----------------------------------------------------------------------------


class Ping(NamedTuple):
    """Liveness check; the reply is the actor's pid."""


class GetStats(NamedTuple):
    """The actor's counters, as a dict (shown by `node.status()`)."""


MAX_CALLS = 1_000  # calls in one `Calls` batch


class Calls(NamedTuple):
    """Several calls in one frame, each as its own call would be sent (an encoded message):
    the reply is the list of their encoded replies (`Ok` or `Failed`), in order. What an
    asyncio client's concurrent calls to one actor become; the actor names the messages it
    takes this way (`Actor.batchable`)."""

    items: list[Any]  # [encoded message, ...]


# -- supervisor ------------------------------------------------------------------------------


class ActorReady(NamedTuple):
    """An actor has bound its sockets and serves (sent once per incarnation)."""

    name: str  # the actor's name in the tree
    pid: int  # its OS pid


class ActorFailed(NamedTuple):
    """An actor cannot serve, for a reason the user must hear (e.g. its node's name is taken
    on the Redis engine): the supervisor stops the node with this error."""

    name: str
    pid: int
    kind: str  # a WhosthereError subclass's name
    message: str


class Lookup(NamedTuple):
    """What a client needs to talk to the node: its name and the actors' endpoints."""


class GetStatus(NamedTuple):
    """The process tree: supervisor pid, each actor's pid and restarts, link counts."""


class Link(NamedTuple):
    """Watch OS processes; the sender is pushed `ProcessesExited` when one exits.

    Linking what is linked already is a no-op; a pid that is already gone (or whose start
    time differs, i.e. the pid was reused) is reported as exited at once.
    """

    pids: list[Any]  # [[pid, start_time], ...]; start_time as read by the linker


class Unlink(NamedTuple):
    """Stop watching these processes for the sender."""

    pids: list[Any]  # [[pid, start_time], ...]


class ProcessesExited(NamedTuple):
    """Pushed to a linker: these linked processes exited (each reported once)."""

    exits: list[Any]  # [[pid, start_time], ...]
    seen_at: float = 0.0  # wall clock when the supervisor saw them gone (0: not told)


class Shutdown(NamedTuple):
    """Ask the supervisor to stop the node."""

    reason: str


# -- pubsub ----------------------------------------------------------------------------------


class Subscribe(NamedTuple):
    """Confirm a SUB socket's subscription to `topics` (one round trip for any number).

    The subscriber subscribes its SUB socket to every topic and then to a fresh `inbox`
    filter; the PubSub actor answers once it has seen the inbox subscription (so the topics'
    are in place too) with `[epoch, [each topic's current sequence number]]`.
    """

    topics: Names
    inbox: Name  # unique token subscribed right after the topics


MAILBOX_PREFIX = "mailbox."  # starts the token of a subscription's lifelong inbox filter


class Sync(NamedTuple):
    """Ask the PubSub actor to publish a `Mark` with the last sequence numbers of `topics`
    on the subscription's lifelong inbox (`MAILBOX_PREFIX` + token): a cast. Published on the
    same pipe as the messages, the mark follows every message numbered before it, so a
    number the subscriber has not seen by then was lost (see `pubsub.Subscription`)."""

    inbox: Name  # the subscription's lifelong inbox token
    topics: Names


class PeerBroadcasts(NamedTuple):
    """PubSub actor -> every peer's PubSub actor: the cluster-wide broadcasts of one wake-up,
    numbered in the sender's stream (`actors.broadcast_bridge`). An empty one repeats the
    last number, so that a loss shows."""

    epoch: int  # the sending PubSub actor's incarnation
    seq: int
    sent_at: Annotated[float, FINITE]  # the sender's monotonic clock: tells a late frame
    items: list[Any]  # [[topic, event, payload as msgpack bytes], ...]


class Mark(NamedTuple):
    """What the PubSub actor publishes on a subscription's lifelong inbox: when it sees that
    inbox subscribed (the subscription connected, or reconnected to a restarted actor: a new
    epoch), with no `seqs`; in answer to `Sync`, with the last number of each topic asked."""

    epoch: int  # the actor's incarnation
    seqs: dict[str, int]  # topic -> last sequence number published on it in `epoch`


class ShardRestarted(NamedTuple):
    """Shard -> PubSub actor: a shard came back from its journal. Diffs it made just before
    its crash may never have gone out, so every subscriber of its topics hears of a loss
    (`MessagesLost`) and resyncs with `list`."""

    shard: int
    pool_size: int


class Broadcast(NamedTuple):
    """Publish `event` with `payload` to the subscribers of `topic`."""

    topic: Name
    event: Name
    payload: Payload
    local: bool  # True: this node's subscribers only (never bridged to peers)


class PublishMany(NamedTuple):
    """Publish several messages whose payloads are packed already (a shard's diffs, one
    frame per loop wake-up): the PubSub actor splices each payload into its `Published`
    without unpacking it."""

    items: list[Any]  # [[topic, event, payload as msgpack bytes], ...]
    local: bool


class Published(NamedTuple):
    """What a subscriber receives on its SUB socket (after the topic frame)."""

    epoch: int  # the PubSub actor's incarnation; a change means messages may be lost
    seq: int  # per topic, starts at 1 in each epoch, +1 per message
    event: str
    payload: Any


# -- tracker shard ---------------------------------------------------------------------------
# Metas travel packed (msgpack map bytes, see `codec.pack_meta`): the shard stores them as
# they are and adds phx_ref / phx_ref_prev to the packed map.


class Track(NamedTuple):
    """Track `pid` on `topic` under `key`; the reply is the new phx_ref."""

    pid: int
    start_time: StartTime  # the pid's process start time, as read by the client
    topic: Name
    key: Name
    meta: bytes  # packed meta, without phx_ref


class TrackMany(NamedTuple):
    """Several tracks in one frame; the reply has one item per entry, in order: the new
    phx_ref, or [error class name, message] for an entry that was refused."""

    entries: list[Any]  # [[pid, start_time, topic, key, packed meta], ...]: `codec.track_entry`


class Untrack(NamedTuple):
    """Untrack one presence (no-op if absent)."""

    pid: int
    topic: Name
    key: Name


class UntrackPid(NamedTuple):
    """Untrack every presence of `pid` in the shard."""

    pid: int


class UntrackMany(NamedTuple):
    """Untrack every presence of each of `pids` (owners) in the shard: many owners closed at
    once (concurrent `close()`s of an asyncio client) in one message. The reply is how many
    presences left."""

    pids: list[Any]  # [owner, ...]


class Update(NamedTuple):
    """Replace a presence's meta; the reply is the new phx_ref."""

    pid: int
    topic: Name
    key: Name
    meta: bytes  # packed meta, without phx_ref
    expect_ref: str | None  # only if the current phx_ref is this one (update by callable)


class GetMeta(NamedTuple):
    """The packed meta of one presence (for update by callable); `NotTracked` if absent."""

    pid: int
    topic: Name
    key: Name


class ListTopic(NamedTuple):
    """The presences of a topic, packed in the list shape `{key: {"metas": [...]}}` (bytes:
    the shard concatenates stored metas and keeps the result until the topic changes)."""

    topic: Name


class ListTopics(NamedTuple):
    """The shard's topics with the most presences: [[topic, presences], ...], most first."""

    limit: int


class GetByKey(NamedTuple):
    """The packed metas of one key of a topic."""

    topic: Name
    key: Name


class Fetch(NamedTuple):
    """Shard -> fetcher worker: run the user's `fetch` on a diff."""

    shard: int  # the shard to answer (`Fetched`)
    id: int  # the diff's place in the shard's order
    topic: Name
    joins: dict[str, Any]  # in the list shape
    leaves: dict[str, Any]


class Fetched(NamedTuple):
    """Fetcher worker -> shard: the fetched diff, or why there is none."""

    id: int
    payload: dict[str, Any] | None  # {"joins": ..., "leaves": ...}; None if fetch failed
    error: str  # "" on success


class MetasDiff(NamedTuple):
    """Shard -> presence client actor: a published diff, for `handle_metas`."""

    topic: Name
    diff: dict[str, Any]  # {"joins": ..., "leaves": ...}, as published
    shard: int  # the sender: its diffs count only after its `MetasState`


class FetcherReady(NamedTuple):
    """Fetcher worker -> every shard: started. A restart (incarnation above 0): what was
    in flight to the slot died with the last one, and is sent again."""

    fetcher: int
    incarnation: int  # the slot's restarts before this fetcher (`ActorSpec.incarnation`)


class MetasResync(NamedTuple):
    """Presence client actor -> every shard: (re)started; send every current presence."""


class MetasState(NamedTuple):
    """Shard -> presence client actor: one part of everything the shard lists, sent after
    `MetasResync` or once the actor has caught up after falling behind. Part 0 begins it;
    the actor turns the whole into one diff per topic against what it knew. Live diffs
    follow the last part, on the same connection."""

    shard: int
    part: int
    last: bool
    topics: dict[str, Any]  # topic -> {key: {"metas": [...]}}, as `list` shows it


# -- cluster ---------------------------------------------------------------------------------
# Between the cluster actors of two nodes (over tcp, CURVE-authenticated with the cookie), and
# between a shard and its node's cluster actor. A shard's replication messages travel packed
# inside `ClusterCast` / `PeerCast` / `FromPeer`: the cluster actor routes them unopened.


# The greetings keep their shape for ever: they are how two versions meet
# (`transport.wire_version`).


class PeerHello(NamedTuple):
    """Cluster actor -> peer: who I am; repeated until answered, and on every reconnect."""

    name: str
    pool_size: int
    listen: str  # where I accept peers
    # the listen addresses I know (a cluster meshes itself), then my version (a map;
    # `wire_version.with_version`)
    peers: list[Any]


class PeerWelcome(NamedTuple):
    """The answer to a compatible `PeerHello`."""

    name: str
    peers: list[Any]  # as PeerHello's: addresses, then the version


class PeerRefused(NamedTuple):
    """The answer to an incompatible `PeerHello` (another wire protocol or pool_size), with
    why."""

    name: str
    reason: str


class DropPeers(NamedTuple):
    """Test hook to the cluster actor: lose all traffic with these peer nodes (a netsplit)."""

    names: list[str]


class EngineFrame(NamedTuple):
    """Every frame a node publishes on the Redis engine: a `PeerHello`, `PeerRefused` or
    `PeerCast` (or a `Fragment` of one) from `sender`, signed with the cookie's key when the
    cluster has one (`mac`: HMAC-SHA256 of sender and body; empty without a cookie)."""

    sender: str
    body: bytes
    mac: bytes


PUBSUB_INDEX = -1  # `ClusterCast`/`PeerCast` index of the PubSub actor (shards: 0..N-1)


class ClusterCast(NamedTuple):
    """Shard (or PubSub actor) -> its cluster actor: deliver `payload` to shard `index`
    (`PUBSUB_INDEX`: the PubSub actor) of node `to` (`"*"`: every peer node)."""

    to: str
    slot: int
    payload: bytes  # an encoded replication message


class PeerCast(NamedTuple):
    """Cluster actor -> peer cluster actor: hand `payload` to shard `index` (or, at
    `PUBSUB_INDEX`, to the PubSub actor)."""

    sender: str  # node name
    slot: int
    payload: bytes


class FromPeer(NamedTuple):
    """Cluster actor -> shard: a replication message from node `sender` (-> PubSub actor:
    a `PeerBroadcasts`, or a fragment of one)."""

    sender: str
    payload: bytes


class Heartbeat(NamedTuple):
    """Shard i -> shard i of every peer, each broadcast_period: its pending delta (or None)
    and its clocks. Deltas and clocks in the lists of `tracker.wire`."""

    replica: list[Any]  # [node name, vsn]
    delta: list[Any] | None
    clocks: list[Any]
    sent_at: StartTime  # the sender's monotonic clock: tells a late-delivered one from a new one


class TransferReq(NamedTuple):
    """Ask a peer replica for what its clock shows this one lacks."""

    ref: int
    replica: list[Any]
    clocks: list[Any]


class TransferAck(NamedTuple):
    """The answer to a `TransferReq`: a delta generation, or the whole state."""

    ref: int
    replica: list[Any]
    delta: list[Any] | None  # a generation, or None when `snapshot` is sent
    snapshot: list[Any] | None


class Depart(NamedTuple):
    """To a shard: announce a graceful permdown to the peers, and replicate no more."""


class GracefulPermdown(NamedTuple):
    """A replica going away for good: drop its presences now (answered by `GoodbyeAck`)."""

    replica: list[Any]


class GoodbyeAck(NamedTuple):
    """A peer replica has dropped the departing one; the goodbye is repeated until then."""

    replica: list[Any]


class Fragment(NamedTuple):
    """One piece of a replication message too large for one frame (a whole-state transfer
    of a big shard). The pieces of one message travel in order on one route."""

    ident: int  # the same for every piece of one message
    part: int
    parts: int
    data: bytes
