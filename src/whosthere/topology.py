"""A node's topology: which actors it runs, under which names, at which endpoints.

One place for what the supervisor starts, what actors dial and what clients look up: an
actor's name ("shard.0") is made and read only here. Every endpoint is an ipc:// socket
file in the node's private runtime directory, but the node's address (its client door)
when `address=` fixes it (`transport.client_door`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from whosthere.config import NodeConfig
from whosthere.transport.runtime_dir import ipc_endpoint

SUPERVISOR = "supervisor"
PUBSUB = "pubsub"
PUBSUB_PUB = "pubsub_pub"  # the PubSub actor's XPUB socket, as clients look it up
CLIENT = "client"  # the presence client actor (init / handle_metas)
CLUSTER = "cluster"
# Each shard tells this node's subscribers of this topic, event "exit", which presences an
# exited owner process took away: {pid, presences, topics, seen_at, left_at} (wall clock:
# when the supervisor saw the process gone, when the shard sent the leaves).
EXITS_TOPIC = "whosthere:exits"
_SHARD = "shard."
_FETCHER = "fetcher."


def shard_name(index: int) -> str:
    return f"{_SHARD}{index}"


def fetcher_name(index: int) -> str:
    return f"{_FETCHER}{index}"


def is_shard(name: str) -> bool:
    return name.startswith(_SHARD)


def is_fetcher(name: str) -> bool:
    return name.startswith(_FETCHER)


@dataclass(frozen=True)
class Role:
    """One actor of the node: its name, its class ("module:Class"), its slot in a pool."""

    name: str
    actor: str
    index: int = 0


class Topology:
    """The actors and endpoints of the node `config` describes (once it has a runtime dir)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.dir = Path(config.runtime_dir)
        self.supervisor = self.endpoint(SUPERVISOR)  # the supervisor's mailbox, as actors dial it
        # the node's address, where clients send `Lookup`: the supervisor's mailbox, also
        # bound at the fixed `address` when there is one
        self.address = config.address or self.supervisor
        self.pubsub = self.endpoint(PUBSUB)
        self.pubsub_pub = self.endpoint("pubsub-pub")
        self.shards = [self.endpoint(shard_name(i)) for i in range(config.pool_size)]
        self.fetchers = [self.endpoint(fetcher_name(i)) for i in range(config.fetchers)]
        self.client = self.endpoint(CLIENT) if config.presence_client else ""
        self.cluster = self.endpoint(CLUSTER) if config.cluster is not None else ""

    def endpoint(self, name: str) -> str:
        return ipc_endpoint(self.dir, name)

    def roles(self) -> list[Role]:
        """The actors in start order. The cluster actor (the mesh's, or the Redis engine's)
        is first up, last down: a departing shard's goodbye still goes out."""
        cluster = self.config.cluster
        engine = cluster is not None and cluster.engine
        actor = "redis_engine:RedisEngineActor" if engine else "cluster:ClusterActor"
        roles = [Role(CLUSTER, f"whosthere.actors.{actor}")] if self.cluster else []
        roles.append(Role(PUBSUB, "whosthere.actors.pubsub_actor:PubSubActor"))
        roles += [
            Role(shard_name(i), "whosthere.actors.shard:ShardActor", i)
            for i in range(self.config.pool_size)
        ]
        roles += [
            Role(fetcher_name(i), "whosthere.actors.fetcher:FetcherActor", i)
            for i in range(self.config.fetchers)
        ]
        if self.client:
            roles.append(Role(CLIENT, "whosthere.actors.presence_client:PresenceClientActor"))
        return roles

    def endpoints(self) -> dict[str, str]:
        """Actor name -> mailbox endpoint, and the PubSub's XPUB: what `Lookup` answers."""
        endpoints = {role.name: self.endpoint(role.name) for role in self.roles()}
        return {**endpoints, PUBSUB_PUB: self.pubsub_pub}
