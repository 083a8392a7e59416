"""Phoenix Channels for whosthere: the phoenix.js client's protocol, as an ASGI app.

from whosthere.channels import Endpoint, Channel, Socket, Refuse

class RoomChannel(Channel):
    async def join(self, topic, params, socket):
        await self.presence.track(socket, socket.assigns["user"], {"online_at": now()})
        await self.push_presence_state(socket)
        return {}

app = Endpoint(socket=UserSocket, channels={"room:*": RoomChannel})   # uvicorn app:app
"""

from whosthere.channels.channel import Channel, ChannelSocket, Refuse, Reply, Socket, Stop
from whosthere.channels.endpoint import Endpoint

__all__ = ["Channel", "ChannelSocket", "Endpoint", "Refuse", "Reply", "Socket", "Stop"]
