"""`channels.joined`: a joined channel's typed mailbox, handled in order, one record at a
time. Pure: a fake connection, worker and presence client, one event loop per test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from whosthere.channels import frames
from whosthere.channels.channel import Channel, ChannelSocket
from whosthere.channels.joined import Joined
from whosthere.channels.mailbox import End, In, Join, Leave

TOPIC = "room:1"
STATE = {"u1": {"metas": [{"phx_ref": "r1"}]}}


class Owner:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class PresenceClient:
    def __init__(self) -> None:
        self.owners: list[Owner] = []

    def owner(self) -> Owner:
        self.owners.append(Owner())
        return self.owners[-1]

    async def list(self, topic: str) -> dict[str, Any]:
        return STATE


class Fanout:
    def __init__(self) -> None:
        self.members: dict[str, set[Any]] = {}

    async def add(self, topic: str, member: Any) -> None:
        self.members.setdefault(topic, set()).add(member)

    def remove(self, topic: str, member: Any) -> None:
        self.members.get(topic, set()).discard(member)


class Worker:
    def __init__(self) -> None:
        self.presence = PresenceClient()
        self.fanout = Fanout()


class Endpoint:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def presence_client(self) -> Any:
        return self.worker.presence

    async def broadcast(self, topic: str, event: str, payload: Any, *, exclude: Any = None) -> None:
        raise AssertionError("not broadcast here")


class Connection:
    """What a joined channel sees of its connection; keeps what it was sent, decoded."""

    def __init__(self) -> None:
        self.worker = Worker()
        self.endpoint = Endpoint(self.worker)
        self.assigns: dict[str, Any] = {"user": "u1"}
        self.channels: dict[str, Joined] = {}
        self.sent: list[list[Any]] = []

    def post(self, frame: str | bytes) -> None:
        assert isinstance(frame, str)
        self.sent.append(json.loads(frame))


class Room(Channel):
    intercept = ("shout",)

    async def join(self, topic: str, params: Any, socket: ChannelSocket) -> Any:
        socket.push("early", {})  # held until the join's reply has gone
        if params.get("presence"):
            await self.push_presence_state(socket)
        return {"joined": True}

    async def handle_in(self, event: str, payload: Any, socket: ChannelSocket) -> Any:
        if event == "boom":
            raise RuntimeError("a handler bug")
        await asyncio.sleep(0)  # a handler that waits keeps the next mail waiting
        return {"echo": payload}

    async def handle_out(self, event: str, payload: Any, socket: ChannelSocket) -> None:
        socket.push(event, {**payload, "seen": True})


def msg(ref: str, event: str, payload: Any = None) -> frames.Frame:
    return frames.Frame("1", ref, TOPIC, event, {} if payload is None else payload)


async def until(done: Callable[[], bool], turns: int = 50) -> None:
    for _ in range(turns):
        if done():
            return
        await asyncio.sleep(0)
    assert done(), f"not done after {turns} loop turns"


def joined_on(conn: Connection) -> Joined:
    joined = Joined(conn, Room, TOPIC, "1")
    conn.channels[TOPIC] = joined
    return joined


def test_the_mail_is_handled_in_order_each_record_by_its_kind():
    async def main() -> None:
        conn = Connection()
        joined = joined_on(conn)
        joined.submit(Join(msg("1", "phx_join", {"presence": True})))
        joined.submit(In(msg("2", "ping", {"n": 1})))
        joined.on_broadcast("shout", {"a": 1}, "unused: intercepted")
        joined.on_broadcast("plain", {}, '[null,null,"room:1","plain",{}]')
        joined.resend_state()  # before the join made the channel: nothing
        await until(lambda: joined.task is None)
        joined.resend_state()  # it showed presences: the state again
        joined.submit(Leave(msg("3", "phx_leave")))
        await until(lambda: joined.ended and joined.task is None)
        ok = {"status": "ok", "response": {}}
        assert conn.sent == [
            ["1", "1", TOPIC, "phx_reply", {"status": "ok", "response": {"joined": True}}],
            [None, None, TOPIC, "plain", {}],  # held from before the reply, in order
            ["1", None, TOPIC, "early", {}],
            ["1", None, TOPIC, "presence_state", STATE],
            ["1", "2", TOPIC, "phx_reply", {"status": "ok", "response": {"echo": {"n": 1}}}],
            ["1", None, TOPIC, "shout", {"a": 1, "seen": True}],
            ["1", None, TOPIC, "presence_state", STATE],
            ["1", "3", TOPIC, "phx_reply", ok],
            ["1", "1", TOPIC, "phx_close", {}],
        ]
        assert conn.channels == {} and conn.worker.fanout.members[TOPIC] == set()
        assert [o.closed for o in conn.worker.presence.owners] == [True]

    asyncio.run(main())


def test_no_state_is_sent_again_to_a_channel_that_never_showed_one():
    async def main() -> None:
        conn = Connection()
        joined = joined_on(conn)
        joined.submit(Join(msg("1", "phx_join")))
        await until(lambda: joined.task is None)
        joined.resend_state()
        assert joined.task is None and [f[3] for f in conn.sent] == ["phx_reply", "early"]

    asyncio.run(main())


def test_a_crash_ends_the_channel_and_drops_the_mail_after_it():
    async def main() -> None:
        conn = Connection()
        joined = joined_on(conn)
        joined.submit(Join(msg("1", "phx_join")))
        joined.submit(In(msg("2", "boom")))
        joined.submit(In(msg("3", "ping")))  # never handled
        await until(lambda: joined.ended and joined.task is None)
        joined.submit(End("closed"))  # too late: dropped
        assert joined.task is None and not joined.queue
        assert conn.sent[-1] == ["1", "1", TOPIC, "phx_error", {"reason": "channel_crash"}]
        assert "3" not in [f[1] for f in conn.sent]

    asyncio.run(main())


def test_mail_records_of_different_kinds_never_compare_equal():
    m = msg("2", "ping")
    assert In(m) != Leave(m) and In(m) == In(m)
