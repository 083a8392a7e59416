"""Finding a running node from any process: its address and what its actors listen on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from whosthere.errors import NodeUnavailable
from whosthere.transport.messages import Lookup
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Dealer

ADDRESS_ENV = "WHOSTHERE_ADDRESS"


@dataclass(frozen=True)
class NodeInfo:
    """What `Lookup` tells a client about a node."""

    name: str
    address: str  # the supervisor's endpoint, which names the node
    endpoints: dict[str, str]  # actor name -> mailbox endpoint (and "pubsub_pub")
    settings: dict[str, Any] = field(default_factory=dict)  # pool_size, meta_limit, ...


def resolve_address(address: str | None) -> str:
    """`address`, or `$WHOSTHERE_ADDRESS`; `NodeUnavailable` if neither is set."""
    address = address or os.environ.get(ADDRESS_ENV)
    if not address:
        raise NodeUnavailable(f"no node address given and ${ADDRESS_ENV} is not set")
    return address


def lookup(address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> NodeInfo:
    """Ask the node at `address` for its endpoints. Raises `NodeUnavailable`."""
    address = resolve_address(address)
    dealer = Dealer(address, timeout=timeout, what="node")
    try:
        info = dealer.call(Lookup())
    finally:
        dealer.close()
    return NodeInfo(info["name"], info["address"], dict(info["endpoints"]), info["settings"])
