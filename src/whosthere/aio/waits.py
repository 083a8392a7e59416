"""Waiting on an `asyncio.Event` with a deadline, without ever losing a cancel.

`asyncio.wait_for` on Python 3.11 returns the result when the awaited thing finishes in the
same loop turn as a cancel of the waiting task, and the cancel is gone: a reader in
`async for msg in sub` under a stream of messages would then never stop. `asyncio.timeout`
counts cancel requests (`Task.cancelling`), so a cancel from outside always wins.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` seconds (None: for ever) pass; whether it is set.
    A cancel of the caller always raises `CancelledError`, whatever else happened."""
    if timeout is None:
        await event.wait()
        return True
    if timeout <= 0:
        return event.is_set()
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
