"""Steps: how the I/O-free client core asks its drivers to do I/O.

A presence call that takes more than one message or waits on the user's code (an update that
reads the meta first and retries, a `list` through the user's `fetch`, `track_many`'s
batches) is written once, in `presence_core`, as a generator: it yields the step it needs
done and is sent back the step's result (or has the step's error raised at the `yield`).
`Presence` runs such a generator with blocking calls, `aio.AsyncPresence` with awaits: the
logic, the error texts and the messages on the wire have one copy, and unit tests drive it
with no socket at all. This is the shape of h11 and wsproto (STYLE section 11).

A call of one message needs no generator: the core returns its `Call`, and the driver sends
it (the hot path stays a function call and a send).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Call(NamedTuple):
    """Send `msg` to shard `shard` and wait for its reply: the step's result is the reply's
    value; an error the shard sent back is raised at the `yield`."""

    shard: int  # the shard's index in the pool (`PresenceCore.shard_of`)
    msg: tuple[Any, ...]  # a `transport.messages` request
    batchable: bool = False  # the shard takes it inside a `Calls` frame (`ShardActor.batchable`)


class Gather(NamedTuple):
    """Send every call at once (pipelined), then wait for all: the step's result is their
    replies in order, where a call failed with a `WhosthereError`, that error in its place.
    Any other error is raised at the `yield`."""

    calls: list[Call]


Replies = list[Any]  # a `Gather`'s result: each call's reply, or its `WhosthereError`


class Pause(NamedTuple):
    """Sleep `seconds` (the update's backoff between two lost races)."""

    seconds: float


class Settle(NamedTuple):
    """Await `value`, what a user callback returned from an `async def`: the step's result is
    its result (the sync client runs it as `loading.settle` does)."""

    value: Awaitable[Any]


Step = Call | Gather | Pause | Settle
Steps = Generator[Step, Any, T]  # a call of the core: steps out, results in, its result at the end


def settled(value: Any) -> Generator[Step, Any, Any]:
    """`value`, awaited first (a `Settle` step) if a user callback returned an awaitable."""
    if inspect.isawaitable(value):
        value = yield Settle(value)
    return value


# The two drivers' loops, side by side: the same loop, one blocking and one awaiting. Each
# client passes how it performs a step (`Presence._perform`, `AsyncPresence._perform`).


def run(steps: Steps[T], perform: Callable[[Step], Any]) -> T:
    """Run a call of the core to its end: `perform` does each step and returns its result;
    an `Exception` it raises is raised into the call where it waits (which may catch it)."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        value, error = None, None
        try:
            value = perform(step)
        except Exception as exc:
            error = exc


async def run_async(steps: Steps[T], perform: Callable[[Step], Awaitable[Any]]) -> T:
    """`run` on an event loop: `perform` returns an awaitable of each step's result."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            result: T = done.value
            return result
        value, error = None, None
        try:
            value = await perform(step)
        except Exception as exc:
            error = exc
