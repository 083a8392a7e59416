"""Who is online in a chat room: whosthere's Channels in a Starlette app, and the real
`phoenix` JS client in the browser.

    .venv/bin/python examples/chat/app.py    # after: pip install -e '.[test]' (README)

then open http://127.0.0.1:4000/?user=alice in one tab and ?user=bob in another. It starts
an embedded node; the browser's phoenix.js comes from js/node_modules (installed with npm on
the first run).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Mount, Route

import whosthere
from whosthere.channels import Channel, ChannelSocket, Endpoint, Refuse, Socket

HERE = Path(__file__).resolve().parent
JS = HERE.parent.parent / "js"


class ChatSocket(Socket):
    async def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> Any:
        user = params.get("user", "").strip()
        if not user or len(user) > 40:
            raise Refuse("a user name of 1 to 40 characters, please")
        return {"user": user}


class RoomChannel(Channel):
    async def join(self, topic: str, params: Any, socket: ChannelSocket) -> Any:
        user = socket.assigns["user"]
        await self.presence.track(socket, user, {"online_at": time.time()})
        await self.push_presence_state(socket)
        return {"user": user}

    async def handle_in(self, event: str, payload: Any, socket: ChannelSocket) -> Any:
        if event != "new_msg" or not isinstance(payload.get("body"), str):
            return None
        body = payload["body"][:500]
        await self.broadcast(socket, "new_msg", {"user": socket.assigns["user"], "body": body})
        return {}


channels = Endpoint(socket=ChatSocket, channels={"room:*": RoomChannel}, check_origin=False)


async def page(request: Any) -> FileResponse:
    return FileResponse(HERE / "index.html")


async def phoenix_js(request: Any) -> FileResponse:
    return FileResponse(
        JS / "node_modules" / "phoenix" / "priv" / "static" / "phoenix.mjs",
        media_type="text/javascript",
    )


app = Starlette(
    routes=[Route("/", page), Route("/phoenix.mjs", phoenix_js), Mount("/socket", app=channels)]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4000)
    args = parser.parse_args()
    if not (JS / "node_modules" / "phoenix").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True)
    with whosthere.Node(name="chat") as node:
        channels.address = node.address
        print(f"chat: http://{args.host}:{args.port}/?user=alice", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws="wsproto")


if __name__ == "__main__":
    main()
