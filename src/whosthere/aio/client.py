"""Finding a running node from an event loop: `client.lookup` without blocking the loop."""

from __future__ import annotations

from whosthere.aio.dealer import AsyncDealer
from whosthere.client import NodeInfo, door_answers, node_info, resolve_address
from whosthere.transport.messages import Lookup
from whosthere.transport.sockets import DEFAULT_TIMEOUT


async def lookup(address: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> NodeInfo:
    """Ask the node at `address` (default `$WHOSTHERE_ADDRESS`) for its endpoints. Raises
    `NodeUnavailable`."""
    address = resolve_address(address)
    dealer = AsyncDealer(address, timeout=timeout, what="node")
    try:
        with door_answers(address):
            reply = await dealer.call(Lookup())
    finally:
        await dealer.aclose()
    return node_info(address, reply)
