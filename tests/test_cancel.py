"""A cancelled reader stops, always: subscriptions and links, asyncio and sync.

`asyncio.wait_for` on Python 3.11 drops a cancel that lands in the loop turn the awaited
thing finishes in; a reader in `async for msg in sub` under a stream of messages then never
stopped. The storm runs under each Python release of the machine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

import whosthere
from tests.support import pythons
from whosthere.aio.waits import wait_event

STORM = pythons.ROOT / "tests" / "support" / "cancel_storm.py"


@pytest.mark.parametrize("turns", range(6))
@pytest.mark.parametrize("timeout", [None, 10.0])
def test_a_cancel_in_the_turn_the_event_is_set_is_kept(turns, timeout):
    """Every interleaving of `set` and `cancel` within a few loop turns ends in a cancel."""

    async def main() -> None:
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_event(event, timeout))
        await asyncio.sleep(0)  # it waits
        event.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        if not waiter.done():
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        else:
            assert waiter.result() is True

    asyncio.run(main())


def test_wait_event_times_out_and_says_so():
    async def main() -> None:
        event = asyncio.Event()
        assert await wait_event(event, 0.01) is False
        assert await wait_event(event, 0) is False
        event.set()
        assert await wait_event(event, 0) is True

    asyncio.run(main())


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_no_cancelled_reader_keeps_running_under_a_storm(version):
    """1,000 `async for` / `get(timeout)` readers cancelled as messages pour in, 100
    `AsyncLinks` readers cancelled as linked processes die, and sync readers given Ctrl-C
    under a storm: each stops."""
    python = pythons.client_python(version)
    with whosthere.Node(pool_size=1) as node:
        run = subprocess.run(
            [python, str(STORM), node.address, "1000", "100", "40"],
            env=pythons.env_for_checkout(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["python"].startswith(version)
    for kind in ("subscriptions", "links"):
        assert result[kind]["kept_running"] == 0, result
        assert result[kind]["not_cancelled"] == 0, result
    assert result["sync"] == {"subscription_missed": 0, "links_missed": 0}, result
    assert result["subscriptions"]["messages"] > 0 and result["links"]["exits"] > 0, result
