"""The unmodified phoenix npm client (Socket, Channel, Presence over `ws`) against
`whosthere.channels` under uvicorn, on a real node (DESIGN section 7)."""

from __future__ import annotations

import os
import signal

import pytest

import whosthere
from tests.support.js import JsClient, channels_server, node_missing, synced

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=str(node_missing()))


def test_join_gets_presence_state_and_diffs_of_others():
    with whosthere.Node() as node, channels_server(node.address) as (url, _), JsClient() as js:
        js.send(cmd="connect", socket="a", url=url, params={"user": "alice"})
        js.send(cmd="join", socket="a", chan="a1", topic="room:1", params={"tab": 1}, presence=True)
        joined = js.wait(lambda e: e["ev"] == "join_ok" and e["chan"] == "a1")
        assert joined["response"]["joined"] == "room:1"
        js.wait(synced("a1", lambda s: list(s) == ["alice"]), what="alice sees herself")
        js.send(cmd="connect", socket="b", url=url, params={"user": "bob"})
        js.send(cmd="join", socket="b", chan="b1", topic="room:1", params={"tab": 1}, presence=True)
        js.wait(synced("a1", lambda s: sorted(s) == ["alice", "bob"]), what="alice sees bob")
        js.wait(synced("b1", lambda s: sorted(s) == ["alice", "bob"]), what="bob sees both")
        assert sorted(node.presence.list("room:1")) == ["alice", "bob"]
        before = js.mark()
        js.send(cmd="leave", chan="b1")
        js.wait(synced("a1", lambda s: list(s) == ["alice"]), what="bob's leave", after=before)


def joined(chan: str):
    return lambda e: e["ev"] == "join_ok" and e["chan"] == chan


def reply(id_: str):
    return lambda e: e["ev"] == "reply" and e["id"] == id_


def count(js: JsClient, match) -> int:
    return sum(1 for e in js.events if match(e))


def metas(state: dict, key: str) -> list:
    return state.get(key, [])


def test_two_tabs_of_one_user_are_two_metas_and_a_closed_tab_leaves_only_its_own():
    with whosthere.Node() as node, channels_server(node.address) as (url, _), JsClient() as js:
        for tab in (1, 2):
            js.send(cmd="connect", socket=f"t{tab}", url=url, params={"user": "alice"})
            js.send(
                cmd="join",
                socket=f"t{tab}",
                chan=f"c{tab}",
                topic="room:tabs",
                params={"tab": tab},
                presence=True,
            )
            js.wait(joined(f"c{tab}"))
        two = js.wait(synced("c1", lambda s: len(metas(s, "alice")) == 2), what="two metas")
        assert sorted(m["tab"] for m in two["state"]["alice"]) == [1, 2]
        assert len({m["phx_ref"] for m in two["state"]["alice"]}) == 2
        js.send(cmd="push", chan="c2", event="away", payload={}, id="away")  # an update

        def tab2_away(state: dict) -> bool:
            return [m.get("away") for m in metas(state, "alice") if m["tab"] == 2] == [True]

        away = js.wait(synced("c1", tab2_away), what="the update")
        updated = next(m for m in away["state"]["alice"] if m["tab"] == 2)
        assert updated["phx_ref_prev"] in {m["phx_ref"] for m in two["state"]["alice"]}
        before = js.mark()
        js.send(cmd="disconnect", socket="t2")  # the tab is closed
        one = js.wait(
            synced("c1", lambda s: len(metas(s, "alice")) == 1), what="tab 2 left", after=before
        )
        assert one["state"]["alice"][0]["tab"] == 1
        listed = node.presence.list("room:tabs")
        assert [m["tab"] for m in listed["alice"]["metas"]] == [1]


def test_replies_pushes_broadcasts_and_intercepts():
    with whosthere.Node() as node, channels_server(node.address) as (url, _), JsClient() as js:
        for who in ("a", "b"):
            js.send(cmd="connect", socket=who, url=url, params={"user": who}, authToken="s3cret")
            js.send(cmd="join", socket=who, chan=who, topic="room:talk", events=["shout", "edited"])
            js.wait(joined(who))
        js.send(cmd="push", chan="a", event="ping", payload={"n": 1}, id="p1")
        assert js.wait(reply("p1"))["response"] == {"pong": {"n": 1}}
        js.send(cmd="push", chan="a", event="whoami", payload={}, id="p2")
        assert js.wait(reply("p2"))["response"]["token"] == "s3cret"  # the authToken
        js.send(cmd="push", chan="a", event="nope", payload={}, id="p3")
        got = js.wait(reply("p3"))
        assert (got["status"], got["response"]) == ("error", {"reason": "asked for it"})
        js.send(cmd="push", chan="a", event="shout", payload={"body": "hi"}, id="p4")
        for who in ("a", "b"):
            js.wait(lambda e, w=who: e["ev"] == "msg" and e["chan"] == w and e["event"] == "shout")
        not_me = {"body": "not me"}
        js.send(cmd="push", chan="a", event="shout_from", payload=not_me, id="p5")
        js.wait(lambda e: e["ev"] == "msg" and e["chan"] == "b" and e["payload"] == not_me)
        js.send(cmd="push", chan="a", event="edit", payload={"body": "x"}, id="p6")
        got = js.wait(lambda e: e["ev"] == "msg" and e["chan"] == "b" and e["event"] == "edited")
        assert got["payload"] == {"body": "x", "intercepted": True}
        js.send(cmd="push", chan="a", event="no such event", payload={}, id="p9")
        got = js.wait(reply("p9"))  # Refuse in handle_in: an error reply, the channel stays
        assert (got["status"], got["response"]) == (
            "error",
            {"reason": "unknown event no such event"},
        )
        js.send(cmd="push", chan="a", event="upload", binary=[1, 2, 3], id="p7")
        assert js.wait(reply("p7"))["response"] == {"binary": [3, 2, 1]}
        js.settle()
        to_sender = [
            e for e in js.events if e["ev"] == "msg" and e["chan"] == "a" and e["payload"] == not_me
        ]
        assert not to_sender, "broadcast_from reached its sender"
        # a Python subscriber of the topic hears the channels' broadcasts too
        with node.pubsub.subscribe("room:talk") as sub:
            js.send(cmd="push", chan="b", event="shout", payload={"body": "py"}, id="p8")
            msg = sub.get(timeout=5)
            assert (msg.event, msg.payload) == ("shout", {"body": "py"})


def test_a_refused_join_and_a_crashing_handler_touch_no_other_channel():
    with whosthere.Node() as node, channels_server(node.address) as (url, _), JsClient() as js:
        js.send(cmd="connect", socket="s", url=url, params={"user": "carol"})
        js.send(cmd="join", socket="s", chan="ok", topic="room:calm", presence=True)
        js.wait(joined("ok"))
        js.send(cmd="join", socket="s", chan="no", topic="room:closed", params={"refuse": True})
        got = js.wait(lambda e: e["ev"] == "join_error" and e["chan"] == "no")
        assert got["response"] == {"reason": "not allowed"}
        js.send(cmd="join", socket="s", chan="nowhere", topic="lobby")  # no such route
        got = js.wait(lambda e: e["ev"] == "join_error" and e["chan"] == "nowhere")
        assert got["response"] == {"reason": "unmatched topic"}
        js.send(cmd="join", socket="s", chan="boom", topic="room:boom", presence=True)
        js.wait(joined("boom"))
        js.wait(synced("boom", lambda s: "carol" in s))
        js.send(cmd="push", chan="boom", event="crash", payload={}, id="c1")
        js.wait(lambda e: e["ev"] == "chan_error" and e["chan"] == "boom", what="phx_error")
        # the client rejoins by itself, and gets its presence back
        js.wait(lambda e: count(js, joined("boom")) >= 2, what="the rejoin")
        js.send(cmd="push", chan="ok", event="ping", payload={}, id="still")
        assert js.wait(reply("still"))["status"] == "ok"
        assert "carol" in node.presence.list("room:calm")
        js.wait(lambda e: "carol" in node.presence.list("room:boom"), what="tracked again")
        js.send(cmd="push", chan="ok", event="stop", payload={}, id="bye")
        assert js.wait(reply("bye"))["response"] == {"bye": True}
        js.wait(lambda e: e["ev"] == "chan_close" and e["chan"] == "ok", what="phx_close")
        js.wait(lambda e: "carol" not in node.presence.list("room:calm"), what="stop untracks")


def test_a_sigkilled_worker_process_takes_its_sockets_presences_away():
    with (
        whosthere.Node() as node,
        channels_server(node.address, workers=2) as (url, _),
        JsClient() as js,
    ):
        workers: dict[int, list[str]] = {}
        for i in range(40):  # until both workers hold sockets
            name = f"u{i}"
            js.send(cmd="connect", socket=name, url=url, params={"user": name})
            js.send(cmd="join", socket=name, chan=name, topic="room:kill", presence=True)
            js.wait(joined(name))
            js.send(cmd="push", chan=name, event="whoami", payload={}, id=name)
            workers.setdefault(js.wait(reply(name))["response"]["worker"], []).append(name)
            if len(workers) == 2 and i >= 3:
                break
        assert len(workers) == 2, "uvicorn gave every socket to one worker"
        (victim, doomed), (_, survivors) = sorted(workers.items(), key=lambda kv: -len(kv[1]))
        watcher = survivors[0]
        everyone = set(doomed) | set(survivors)
        js.wait(synced(watcher, lambda s: set(s) == everyone), what="everyone seen")
        before = js.mark()
        os.kill(victim, signal.SIGKILL)
        gone = js.wait(
            synced(watcher, lambda s: not set(doomed) & set(s)),
            what="the dead worker's leaves",
            after=before,
        )
        assert set(survivors) <= set(gone["state"])


def test_a_restarted_server_gets_its_clients_back_with_presence_state():
    with whosthere.Node() as node, JsClient() as js:
        with channels_server(node.address) as (url, _):
            for who in ("ann", "ben"):
                js.send(
                    cmd="connect",
                    socket=who,
                    url=url,
                    params={"user": who},
                    heartbeatIntervalMs=200,
                )
                js.send(cmd="join", socket=who, chan=who, topic="room:again", presence=True)
                js.wait(joined(who))
            js.wait(synced("ann", lambda s: sorted(s) == ["ann", "ben"]))
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            js.send(cmd="connect", socket="beat", url=url, frames=True, heartbeatIntervalMs=100)
            js.wait(
                lambda e: (
                    e["ev"] == "frame"
                    and e["msg"]["topic"] == "phoenix"
                    and e["msg"]["payload"] == {"status": "ok", "response": {}}
                ),
                what="a heartbeat reply",
            )
        js.wait(lambda e: e["ev"] == "close" and e["socket"] == "ann", what="the server gone")
        assert node.presence.list("room:again") == {}
        before, mark = count(js, joined("ann")), js.mark()
        with channels_server(node.address, port=port):
            js.wait(lambda e: count(js, joined("ann")) > before, what="the rejoin", timeout=15)
            js.wait(synced("ann", lambda s: sorted(s) == ["ann", "ben"]), timeout=15, after=mark)
            js.wait(lambda e: sorted(node.presence.list("room:again")) == ["ann", "ben"])


def test_two_nodes_see_each_others_sockets_and_broadcasts():
    from tests.test_cluster import cluster

    with (
        cluster(2) as (n0, n1),
        channels_server(n0.address) as (url0, _),
        channels_server(n1.address) as (url1, _),
        JsClient() as js,
    ):
        for who, url in (("zoe", url0), ("yan", url1)):
            js.send(cmd="connect", socket=who, url=url, params={"user": who})
            js.send(
                cmd="join", socket=who, chan=who, topic="room:far", presence=True, events=["shout"]
            )
            js.wait(joined(who))
        for who in ("zoe", "yan"):
            js.wait(synced(who, lambda s: sorted(s) == ["yan", "zoe"]), what=f"{who} sees both")
        js.send(cmd="push", chan="zoe", event="shout", payload={"body": "hello"}, id="s")
        js.wait(lambda e: e["ev"] == "msg" and e["chan"] == "yan" and e["event"] == "shout")
        before = js.mark()
        js.send(cmd="leave", chan="zoe")
        js.wait(
            synced("yan", lambda s: list(s) == ["yan"]),
            what="zoe's leave on the far node",
            after=before,
        )


def test_mounted_in_starlette():
    import urllib.request

    app = "tests.support.channels_app:starlette_app"
    with (
        whosthere.Node() as node,
        channels_server(node.address, app=app) as (url, _),
        JsClient() as js,
    ):
        home = url.replace("ws://", "http://").rsplit("/socket", 1)[0] + "/"
        with urllib.request.urlopen(home, timeout=5) as page:
            assert b"Starlette" in page.read()
        js.send(cmd="connect", socket="s", url=url, params={"user": "mounted"})
        js.send(cmd="join", socket="s", chan="m", topic="room:m", presence=True)
        js.wait(joined("m"))
        js.wait(synced("m", lambda s: list(s) == ["mounted"]))


def test_under_hypercorn():
    with (
        whosthere.Node() as node,
        channels_server(node.address, server="hypercorn") as (url, _),
        JsClient() as js,
    ):
        for who in ("h1", "h2"):
            js.send(cmd="connect", socket=who, url=url, params={"user": who})
            js.send(
                cmd="join", socket=who, chan=who, topic="room:h", presence=True, events=["shout"]
            )
        js.wait(synced("h1", lambda s: sorted(s) == ["h1", "h2"]))
        js.send(cmd="push", chan="h2", event="shout", payload={"body": "hyper"}, id="s")
        js.wait(lambda e: e["ev"] == "msg" and e["chan"] == "h1" and e["event"] == "shout")
        before = js.mark()
        js.send(cmd="disconnect", socket="h2")
        js.wait(synced("h1", lambda s: list(s) == ["h1"]), after=before, what="h2's leave")


def test_whosthere_serve_http_runs_the_channels_app():
    from tests.support.js import serve_http

    with serve_http("tests.support.channels_app:app") as (page, _), JsClient() as js:
        url = page.replace("http://", "ws://") + "socket"
        js.send(cmd="connect", socket="s", url=url, params={"user": "served"})
        js.send(cmd="join", socket="s", chan="c", topic="room:served", presence=True)
        js.wait(synced("c", lambda s: list(s) == ["served"]), timeout=15)
