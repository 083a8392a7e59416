"""The ASGI names the channels modules share: a message is a dict, and the server hands the
app a `receive` and a `send` coroutine function (the ASGI 3 spec; no dependency for it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

Scope: TypeAlias = dict[str, Any]
AsgiMessage: TypeAlias = dict[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[AsgiMessage]]
Send: TypeAlias = Callable[[AsgiMessage], Awaitable[None]]
