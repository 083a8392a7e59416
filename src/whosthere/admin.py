"""Requests that manage a running node rather than use it: its status, its departure.

Any process of the host may make them, given the node's address (`whosthere status` does).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from whosthere.client import lookup
from whosthere.errors import NodeUnavailable, WhosthereError
from whosthere.topology import CLUSTER, is_shard, shard_name
from whosthere.transport.messages import Depart, GetStats, GetStatus
from whosthere.transport.sockets import DEFAULT_TIMEOUT, Dealer

log = logging.getLogger("whosthere.node")


def node_status(address: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The status of the node at `address`: its tree, each actor's counters, link counts."""
    dealer = Dealer(address, timeout=timeout, what="node")
    try:
        status: dict[str, Any] = dealer.call(GetStatus())
    finally:
        dealer.close()
    endpoints = lookup(address, timeout).endpoints
    presences = 0
    for actor in status["actors"]:
        endpoint = endpoints.get(actor["name"])
        if endpoint is None:
            continue
        conn = Dealer(endpoint, timeout=min(timeout, 1.0), what=f"actor {actor['name']}")
        try:
            actor["stats"] = conn.call(GetStats())
        except NodeUnavailable:
            actor["stats"] = None  # restarting right now
        finally:
            conn.close()
        if is_shard(actor["name"]) and actor["stats"]:
            presences += actor["stats"]["presences"]
    status["presences"] = presences
    by_name = {a["name"]: a.get("stats") or {} for a in status["actors"]}
    if CLUSTER in by_name:  # each peer replica as shard 0 sees it; the connections
        status["peers"] = by_name.get(shard_name(0), {}).get("replicas", {})
        status["cluster"] = by_name[CLUSTER]
    return status


def depart(address: str, timeout: float) -> None:
    """Graceful permdown of every shard at once: each tells its peers to drop its replica
    and answers once they acknowledge (or its goodbye window passes). Failures are logged:
    the node is stopping anyway, and peers fall back on down_period."""
    deadline = time.monotonic() + timeout
    info = lookup(address, timeout)
    pool_size = int(info.settings["pool_size"])
    dealers = [Dealer(info.endpoints[shard_name(i)], what="shard") for i in range(pool_size)]
    try:
        refs = [d.request(Depart(), deadline, timeout) for d in dealers]
        for i, (dealer, ref) in enumerate(zip(dealers, refs, strict=True)):
            try:
                missing = dealer.result(ref, Depart(), deadline, timeout)
            except WhosthereError as exc:
                log.warning("graceful permdown of shard %d failed: %s", i, exc)
                continue
            if missing:
                log.warning(
                    "graceful permdown of shard %d: no acknowledgement from %s (they "
                    "drop this node after down_period)",
                    i,
                    ", ".join(missing),
                )
    finally:
        for dealer in dealers:
            dealer.close()
