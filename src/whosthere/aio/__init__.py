"""whosthere for asyncio: the client API as coroutines, on `zmq.asyncio` (DESIGN section 6).

    presence = await whosthere.aio.connect(address)          # or RoomPresence.connect_async
    async with presence.owner() as tab:
        await presence.track(tab, "room:1", "alice", {"status": "online"})
        print(await presence.list("room:1"))
    async with presence.subscribe("room:1") as sub:
        async for msg in sub: ...
    pubsub = await whosthere.aio.connect_pubsub(address)
    await pubsub.broadcast("room:1", "shout", {"body": "hi"})
    async with whosthere.aio.links(address) as links:      # Erlang-style links
        await links.link(pid)
        exit = await links.get()

Thread-safety: an `AsyncPresence` belongs to the event loop it is first used in; another
thread (another loop) connects its own. Calls from many tasks of that loop run concurrently
over one socket per shard. Nothing here blocks the loop; every call has a deadline.
"""

from whosthere.aio.client import lookup
from whosthere.aio.links import AsyncLinks, links
from whosthere.aio.presence import AsyncOwner, AsyncPresence, connect, connect_pubsub
from whosthere.aio.pubsub import AsyncPubSub, AsyncSubscription

__all__ = [
    "AsyncLinks",
    "AsyncOwner",
    "AsyncPresence",
    "AsyncPubSub",
    "AsyncSubscription",
    "connect",
    "connect_pubsub",
    "links",
    "lookup",
]
