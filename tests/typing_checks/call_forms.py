"""What a user's type checker makes of the presence calls' forms (checked by mypy in
`tests/test_repo.py`: each line marked `wrong` must be an error, every other line clean)."""

from __future__ import annotations

from typing import Any

import whosthere
import whosthere.aio


def sync_forms(presence: whosthere.Presence, tab: whosthere.Owner) -> list[str]:
    refs = [
        presence.track(1234, "room", "u1", {"a": 1}),
        presence.track(tab, "room", 7, {"a": 1}),
        presence.track(whosthere.Channel(tab, "room"), "u1", {"a": 1}),
        presence.update(1234, "room", "u1", {"a": 2}),
        presence.update(1234, "room", "u1", lambda meta: {**meta, "a": 3}),
        presence.update(whosthere.Channel(tab, "room"), "u1", {"a": 2}),
    ]
    presence.untrack(1234, "room", "u1")
    presence.untrack(whosthere.Channel(tab, "room"), "u1")
    presence.untrack(tab)
    presence.track(1234, "room", "u1")  # wrong: no meta
    presence.track("room", "u1", {})  # wrong: a topic is not a channel
    presence.untrack(1234, "room")  # wrong: no key
    return refs


async def async_forms(presence: whosthere.aio.AsyncPresence) -> str:
    async def away(meta: dict[str, Any]) -> dict[str, Any]:
        return {**meta, "status": "away"}

    async with presence.owner() as tab:
        await presence.track(tab, "room", "u1", {})
        await presence.untrack(tab, "room", "u1")
        await presence.update(1234, "room", "u1", {"a": 1})
        await presence.untrack(tab)
        await presence.update(tab, "room", "u1")  # wrong: no meta
        return await presence.update(1234, "room", "u1", away)
