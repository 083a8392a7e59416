"""What `whosthere serve --http` runs: the live page at `/`, its Channels at
`/whosthere/socket`, and the user's app (`--channels module:app`) for everything else.

Built from the environment so that every uvicorn worker process builds the same:
`WHOSTHERE_ADDRESS` (the node) and `WHOSTHERE_CHANNELS` (`module:attribute`, optional).
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from whosthere.channels.apps import CHANNELS_ENV, load_app
from whosthere.channels.dashboard import dashboard_endpoint
from whosthere.channels.endpoint import not_found

DASHBOARD_PREFIX = "/whosthere/socket"


def build(user_app: Any = None) -> Any:
    """The composite ASGI app."""
    dashboard = dashboard_endpoint()
    page = resources.files("whosthere.channels").joinpath("static/dashboard.html").read_bytes()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan":
            if user_app is not None:
                await user_app(scope, receive, send)
            else:
                await dashboard(scope, receive, send)
        elif path.startswith(DASHBOARD_PREFIX + "/"):
            await dashboard(scope, receive, send)
        elif scope["type"] == "http" and path in ("/", "/index.html"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/html; charset=utf-8"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": page})
        elif user_app is not None:
            await user_app(scope, receive, send)
        else:
            await not_found(scope, receive, send)

    return app


def _from_env() -> Any:
    spec = os.environ.get(CHANNELS_ENV)
    return build(load_app(spec) if spec else None)


app = _from_env()
