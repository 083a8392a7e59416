"""`channels.writer`: each connection's frames in order and its close after them, a
fan-out written by one task, a client slow to read holding up no other. Pure: fake ASGI
sends, one event loop per test (`asyncio.run`), no server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whosthere.channels.writer import Outbox, Writer

FACTORIES = ["default"] + (["eager"] if hasattr(asyncio, "eager_task_factory") else [])


class Client:
    """One connection's ASGI `send`, as a server's: it returns without suspending while the
    client keeps up, and waits (flow control) while the client is `paused`."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[Any] | None] = set()  # the tasks its sends ran in
        self.readable = asyncio.Event()
        self.readable.set()
        self.gone = False  # every send fails, as a server's does for a client gone

    async def send(self, message: dict[str, Any]) -> None:
        await self.readable.wait()
        if self.gone:
            raise OSError("the client went away")
        self.got.append(message)
        self.tasks.add(asyncio.current_task())

    def pause(self) -> None:
        self.readable.clear()

    def resume(self) -> None:
        self.readable.set()

    @property
    def texts(self) -> list[str]:
        return [m["text"] for m in self.got if m["type"] == "websocket.send"]

    @property
    def closes(self) -> list[int]:
        return [m["code"] for m in self.got if m["type"] == "websocket.close"]


def run(main: Callable[[], Coroutine[Any, Any, None]], factory: str = "default") -> None:
    async def start() -> None:
        if factory == "eager":
            asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        await main()

    asyncio.run(start())


async def until(done: Callable[[], bool], turns: int = 20) -> None:
    """Let the loop turn until `done()` (fails after `turns` turns)."""
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    assert done(), f"not done after {turns} loop turns"


def pair() -> tuple[Client, Outbox]:
    client = Client()
    return client, Outbox(client.send)


@pytest.mark.parametrize("factory", FACTORIES)
def test_a_broadcast_to_a_thousand_connections_is_written_by_one_task(factory):
    """(Under an eager task factory each put's writer runs to its end in the caller's
    turn instead: a task object per frame, but no task switch.)"""

    async def main() -> None:
        writer = Writer()
        pairs = [pair() for _ in range(1_000)]
        for _, out in pairs:
            writer.put(out, "frame")
        if factory == "eager":  # each writer ran in the caller's turn, to its end
            assert all(c.texts == ["frame"] for c, _ in pairs)
        await until(lambda: all(c.texts == ["frame"] for c, _ in pairs))
        tasks = set().union(*(c.tasks for c, _ in pairs))
        if factory == "default":
            assert len(tasks) == 1 and None not in tasks  # one task, not one per socket
        assert all(not out.queued for _, out in pairs)

    run(main, factory)


@pytest.mark.parametrize("factory", FACTORIES)
def test_frames_go_out_in_order_and_the_close_after_them(factory):
    async def main() -> None:
        writer = Writer()
        client, out = pair()
        for i in range(5):
            writer.put(out, f"f{i}")
        writer.put(out, b"\x00binary")
        writer.close(out, 1001)
        writer.put(out, "after the close")  # dropped
        writer.close(out, 1013)  # the first close stands
        await until(lambda: bool(client.closes))
        assert client.got == [
            *({"type": "websocket.send", "text": f"f{i}"} for i in range(5)),
            {"type": "websocket.send", "bytes": b"\x00binary"},
            {"type": "websocket.close", "code": 1001},
        ]

    run(main, factory)


@pytest.mark.parametrize("factory", FACTORIES)
def test_a_client_slow_to_read_holds_up_no_other(factory):
    async def main() -> None:
        writer = Writer()
        (slow, slow_out), (quick, quick_out) = pair(), pair()
        slow.pause()
        writer.put(slow_out, "s0")
        writer.put(quick_out, "q0")
        await until(lambda: quick.texts == ["q0"])
        for i in range(1, 50):  # while the slow send waits
            writer.put(slow_out, f"s{i}")
            writer.put(quick_out, f"q{i}")
            await until(lambda i=i: quick.texts[-1:] == [f"q{i}"])
        writer.close(slow_out, 1013)
        assert slow.got == [] and len(slow_out.frames) == 49
        slow.resume()
        await until(lambda: bool(slow.closes))
        assert slow.texts == [f"s{i}" for i in range(50)] and slow.closes == [1013]
        assert quick.texts == [f"q{i}" for i in range(50)]
        assert len(slow.tasks) == 1 and not slow.tasks & quick.tasks  # kept apart

    run(main, factory)


@pytest.mark.parametrize("factory", FACTORIES)
def test_flush_waits_for_the_close_and_the_send_is_never_called_after(factory):
    async def main() -> None:
        writer = Writer()
        client, out = pair()
        writer.put(out, "last words")
        writer.close(out, 1009)
        await writer.flush(out, 1.0)
        assert client.texts == ["last words"] and client.closes == [1009]

        stuck, stuck_out = pair()
        stuck.pause()
        writer.put(stuck_out, "never read")
        writer.close(stuck_out, 1013)
        await writer.flush(stuck_out, 0.05)  # gives up on it: its waiting send is cancelled
        await until(lambda: stuck_out.stuck is None and not stuck_out.queued)
        writer.put(stuck_out, "dropped")
        stuck.resume()
        for _ in range(5):
            await asyncio.sleep(0)
        assert stuck.got == []

    run(main, factory)


@pytest.mark.parametrize("factory", FACTORIES)
def test_a_client_gone_drops_its_frames_and_spares_the_others(factory):
    async def main() -> None:
        writer = Writer()
        (gone, gone_out), (other, other_out) = pair(), pair()
        gone.gone = True
        for i in range(3):
            writer.put(gone_out, f"g{i}")
            writer.put(other_out, f"o{i}")
        await until(lambda: len(other.texts) == 3)
        assert gone.got == [] and gone_out.closed and not gone_out.frames
        writer.put(gone_out, "more")  # nothing more is queued for it
        assert not gone_out.frames
        writer.discard(other_out)  # the other leaves too: what it had waiting is dropped
        writer.put(other_out, "late")
        assert other.texts == ["o0", "o1", "o2"] and not other_out.frames

    run(main, factory)


# -- any interleaving ------------------------------------------------------------------------

CLIENTS = 3
op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, CLIENTS - 1)),
    st.tuples(st.just("close"), st.integers(0, CLIENTS - 1)),
    st.tuples(st.just("pause"), st.integers(0, CLIENTS - 1)),
    st.tuples(st.just("resume"), st.integers(0, CLIENTS - 1)),
    st.tuples(st.just("turn"), st.just(0)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=60), st.sampled_from(FACTORIES))
def test_any_interleaving_writes_each_connection_in_order_and_then_its_close(ops, factory):
    async def main() -> None:
        writer = Writer()
        pairs = [pair() for _ in range(CLIENTS)]
        wanted: list[list[dict[str, Any]]] = [[] for _ in range(CLIENTS)]
        closed = [False] * CLIENTS
        for n, (kind, i) in enumerate(ops):
            client, out = pairs[i]
            if kind == "put":
                writer.put(out, f"m{n}")
                if not closed[i]:
                    wanted[i].append({"type": "websocket.send", "text": f"m{n}"})
            elif kind == "close":
                writer.close(out, 4000 + n)
                if not closed[i]:
                    wanted[i].append({"type": "websocket.close", "code": 4000 + n})
                closed[i] = True
            elif kind == "pause":
                client.pause()
            elif kind == "resume":
                client.resume()
            else:
                await asyncio.sleep(0)
            for (c, _), want in zip(pairs, wanted, strict=True):
                assert c.got == want[: len(c.got)]  # a prefix, in order, so far
        for client, _ in pairs:
            client.resume()
        await until(lambda: all(c.got == w for (c, _), w in zip(pairs, wanted, strict=True)))
        await until(lambda: writer.idle and all(not o.queued for _, o in pairs))

    run(main, factory)


@pytest.mark.parametrize("factory", FACTORIES)
def test_a_writer_cancelled_before_it_ran_leaves_the_next_put_a_writer(factory):
    """The loop cancelling the writer (at shutdown, say) does not leave the worker without
    one: a later put starts another, which writes what waited too."""

    async def main() -> None:
        writer = Writer()
        (first, first_out), (second, second_out) = pair(), pair()
        first.pause()  # so that under an eager factory the writer is still there to cancel
        before = asyncio.all_tasks()
        writer.put(first_out, "waits")
        (task,) = asyncio.all_tasks() - before
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await until(lambda: writer.idle)
        first.resume()
        writer.put(second_out, "goes")
        await until(lambda: second.texts == ["goes"])
        if factory == "default":  # it never ran: its outbox waited, and goes now
            await until(lambda: first.texts == ["waits"])

    run(main, factory)
