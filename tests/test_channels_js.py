"""The unmodified phoenix npm client (Socket, Channel, Presence over `ws`) against
`whosthere.channels` under uvicorn, on a real node (DESIGN section 7)."""

from __future__ import annotations

import pytest

import whosthere
from tests.support.js import JsClient, channels_server, node_missing, synced

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=str(node_missing()))


def test_join_gets_presence_state_and_diffs_of_others():
    with whosthere.Node() as node, channels_server(node.address) as (url, _), JsClient() as js:
        js.send(cmd="connect", socket="a", url=url, params={"user": "alice"})
        js.send(cmd="join", socket="a", chan="a1", topic="room:1", params={"tab": 1},
                presence=True)  # fmt: skip
        joined = js.wait(lambda e: e["ev"] == "join_ok" and e["chan"] == "a1")
        assert joined["response"]["joined"] == "room:1"
        js.wait(synced("a1", lambda s: list(s) == ["alice"]), what="alice sees herself")
        js.send(cmd="connect", socket="b", url=url, params={"user": "bob"})
        js.send(cmd="join", socket="b", chan="b1", topic="room:1", params={"tab": 1},
                presence=True)  # fmt: skip
        js.wait(synced("a1", lambda s: sorted(s) == ["alice", "bob"]), what="alice sees bob")
        js.wait(synced("b1", lambda s: sorted(s) == ["alice", "bob"]), what="bob sees both")
        assert sorted(node.presence.list("room:1")) == ["alice", "bob"]
        js.send(cmd="leave", chan="b1")
        js.wait(synced("a1", lambda s: list(s) == ["alice"]), what="bob's leave")
