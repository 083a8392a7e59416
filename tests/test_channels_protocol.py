"""The Channels protocol's edges, frame by frame, from a raw WebSocket client (the phoenix.js
tests cover what the real client does with them)."""

from __future__ import annotations

import json
import os
import time

import pytest
import websockets
from websockets.sync.client import connect

import whosthere
from tests.support.js import channels_server
from tests.support.waiting import wait_until

STRICT = "tests.support.channels_app:strict_app"


def ws_url(url: str, query: str = "vsn=2.0.0&user=raw") -> str:
    return f"{url}/websocket?{query}"


def recv(ws, timeout: float = 5.0) -> list:
    return json.loads(ws.recv(timeout=timeout))


def send(ws, *frame) -> None:
    ws.send(json.dumps(list(frame)))


def until(ws, match, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        frame = recv(ws, max(0.01, deadline - time.monotonic()))
        if match(frame):
            return frame


def refused(url: str, **kwargs) -> int:
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        connect(url, open_timeout=5, **kwargs).close()
    return info.value.response.status_code


def test_the_upgrade_is_refused_with_403_for_what_phoenix_refuses():
    with whosthere.Node() as node, channels_server(node.address, app=STRICT) as (url, _):
        assert refused(ws_url(url, "user=x")) == 403  # no vsn: V1, not served
        assert refused(ws_url(url, "vsn=1.0.0")) == 403
        assert refused(ws_url(url, "vsn=2.1.0")) == 403
        assert refused(ws_url(url, "vsn=2.0.0&token=bad")) == 403  # connect refused
        assert refused(ws_url(url), origin="https://evil.example") == 403
        assert refused(ws_url(url), subprotocols=["mqtt"]) == 403
        with connect(ws_url(url), origin="https://good.example"):
            pass
        with connect(
            ws_url(url),
            origin="https://a.trusted.example",
            subprotocols=["phoenix", "base64url.bearer.phx.dG9r"],
        ) as ws:
            assert ws.subprotocol == "phoenix"
            send(ws, "1", "1", "room:t", "phx_join", {})
            until(ws, lambda f: f[3] == "phx_reply")
            send(ws, "1", "2", "room:t", "whoami", {})
            assert until(ws, lambda f: f[1] == "2")[4]["response"]["token"] == "tok"


def test_without_its_node_a_socket_is_refused_and_the_server_stays_up():
    app = "tests.support.channels_app:unreachable_app"
    with whosthere.Node() as node, channels_server(node.address, app=app) as (url, proc):
        assert refused(ws_url(url)) == 403
        assert refused(ws_url(url)) == 403  # tried again, refused again
        assert proc.poll() is None


def test_frames_as_phoenix_sends_them():
    with whosthere.Node() as node, channels_server(node.address) as (url, _):
        with connect(ws_url(url)) as ws:
            send(ws, None, "1", "phoenix", "heartbeat", {})
            assert recv(ws) == [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]
            send(ws, None, "2", "room:x", "ping", {})  # not joined
            unmatched = {"status": "error", "response": {"reason": "unmatched topic"}}
            assert recv(ws) == [None, "2", "room:x", "phx_reply", unmatched]
            send(ws, "9", "3", "room:x", "phx_leave", {})  # not joined: ok, nothing more
            assert recv(ws) == ["9", "3", "room:x", "phx_reply", {"status": "ok", "response": {}}]
            send(ws, "4", "4", "room:x", "phx_join", {"tab": 1})
            reply = until(ws, lambda f: f[3] == "phx_reply")
            assert reply[:3] == ["4", "4", "room:x"] and reply[4]["status"] == "ok"
            # the state is pushed (join_ref, no ref); the diff of the join is broadcast (no
            # refs), and may come first: the client's Presence holds diffs until a state
            got = {f[3]: f for f in (recv(ws), recv(ws))}
            state, diff = got["presence_state"], got["presence_diff"]
            assert state[:2] == ["4", None] and list(state[4]) == ["raw"]
            assert diff[:2] == [None, None] and list(diff[4]["joins"]) == ["raw"]
            send(ws, "stale", "5", "room:x", "ping", {"n": 1})  # an old join_ref: ignored
            send(ws, "4", "6", "room:x", "ping", {"n": 2})
            assert until(ws, lambda f: f[3] == "phx_reply")[1] == "6"
            send(ws, "7", "7", "room:x", "phx_join", {"tab": 2})  # a duplicate join
            got = [until(ws, lambda f: f[3] in ("phx_reply", "phx_close")) for _ in range(2)]
            assert ["7", "7", "room:x", "phx_reply"] in [f[:4] for f in got]
            assert ["4", "4", "room:x", "phx_close", {}] in got
            send(ws, "7", "8", "room:x", "crash", {})
            err = until(ws, lambda f: f[3] == "phx_error")
            assert err == ["7", "7", "room:x", "phx_error", {"reason": "channel_crash"}]
            send(ws, "7", "9", "room:x", "ping", {})  # the crashed channel is gone
            assert until(ws, lambda f: f[1] == "9")[4]["response"] == {"reason": "unmatched topic"}
            assert node.presence.list("room:x") == {}
            send(ws, "10", "10", "room:x", "phx_join", {})
            until(ws, lambda f: f[3] == "phx_reply" and f[1] == "10")
            send(ws, "10", "11", "room:x", "phx_leave", {})
            assert until(ws, lambda f: f[1] == "11")[:4] == ["10", "11", "room:x", "phx_reply"]
            assert until(ws, lambda f: f[3] == "phx_close")[:2] == ["10", "10"]
        with connect(ws_url(url)) as ws:
            ws.send(bytes([0, 1, 1, 6, 4]) + b"11room:ajoin")  # binary before a join
            assert until(ws, lambda f: f[1] == "1")[4]["response"] == {"reason": "unmatched topic"}
            ws.send("[1, 2, 3")  # not the protocol: the socket closes
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                until(ws, lambda f: False)
            assert closed.value.rcvd.code == 1007


JSON_ONLY = " (a Channels meta reaches phoenix.js as JSON)"


def test_a_meta_json_cannot_carry_is_refused_at_track_and_update_naming_where():
    with (
        whosthere.Node() as node,
        channels_server(node.address) as (url, _),
        connect(ws_url(url)) as ws,
    ):
        send(ws, "1", "1", "room:json", "phx_join", {"tab": 1})
        until(ws, lambda f: f[3] == "phx_reply")
        refusals = {
            ("track", "bytes"): "meta['avatar'] is bytes, which JSON cannot carry",
            ("track", "int_key"): "meta['scores'][1] has the key 7 (int); JSON's are strings",
            ("track", "nan"): "meta['load'] is nan, which JSON cannot carry",
            ("update", "set"): "meta['tags'] is set, which JSON cannot carry",
            ("update_fn", "bytes"): "meta['avatar'] is bytes, which JSON cannot carry",
        }
        for ref, ((how, meta), reason) in enumerate(refusals.items(), 2):
            send(ws, "1", str(ref), "room:json", "meta", {"how": how, "meta": meta})
            reply = until(ws, lambda f, ref=ref: f[1] == str(ref))
            assert reply[4] == {
                "status": "error",
                "response": {"refused": "InvalidMeta", "reason": reason + JSON_ONLY},
            }
        assert list(node.presence.list("room:json")) == ["raw"]  # nothing of those went in
        # a good meta still goes, and every subscriber's client reads it
        send(ws, "1", "20", "room:json", "meta", {"how": "track", "meta": "good"})
        reply, diff = reply_and_diff(ws, "20", "raw:second")
        assert reply[4]["status"] == "ok"
        [meta] = diff[4]["joins"]["raw:second"]["metas"]
        assert {k: meta[k] for k in ("tags", "load", "more")} == {
            "tags": ["a", "b"],
            "load": 0.5,
            "more": {"seen": None, "n": [1, True]},
        }
        send(ws, "1", "21", "room:json", "meta", {"how": "update_fn", "meta": "good"})
        reply, diff = reply_and_diff(ws, "21", "raw")
        assert reply[4]["status"] == "ok"
        assert diff[4]["joins"]["raw"]["metas"][0]["tab"] == 1  # the function kept the rest


def reply_and_diff(ws, ref: str, key: str) -> tuple[list, list]:
    """The reply to push `ref` and the diff that joins `key`, in whichever order they come."""
    got: dict[str, list] = {}
    while len(got) < 2:
        frame = until(
            ws, lambda f: f[1] == ref or (f[3] == "presence_diff" and key in f[4]["joins"])
        )
        got["reply" if frame[1] == ref else "diff"] = frame
    return got["reply"], got["diff"]


def test_idle_oversized_and_disconnected_sockets_are_closed_and_their_presences_leave():
    with whosthere.Node() as node, channels_server(node.address, app=STRICT) as (url, _):
        with connect(ws_url(url, "vsn=2.0.0&user=idle")) as ws:
            send(ws, "1", "1", "room:i", "phx_join", {})
            until(ws, lambda f: f[3] == "phx_reply")
            assert "idle" in node.presence.list("room:i")
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                until(ws, lambda f: False, timeout=8)  # nothing sent: idle after 1 s
            assert closed.value.rcvd.code == 1001
        deadline = time.monotonic() + 5
        while node.presence.list("room:i") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node.presence.list("room:i") == {}
        with connect(ws_url(url)) as ws:
            send(ws, "1", "1", "room:i", "ping", {"big": "x" * 3_000})
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                until(ws, lambda f: False)
            assert closed.value.rcvd.code == 1009
        with connect(ws_url(url, "vsn=2.0.0&user=kick")) as ws:
            send(ws, "1", "1", "room:k", "phx_join", {})
            until(ws, lambda f: f[3] == "phx_reply")
            node.pubsub.broadcast("user_socket:kick", "disconnect", {})
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                until(ws, lambda f: False)
            assert closed.value.rcvd.code == 1001


@pytest.mark.parametrize("ws", ["wsproto", "websockets"])
def test_a_client_that_reads_too_slowly_is_sent_away_not_buffered_for_ever(ws):
    """A raw WebSocket client that stops reading: once 10,000 frames wait for it, its
    channels end (its presences leave) and a close (1013) waits for it to read again."""
    import base64
    import socket as sockets

    with whosthere.Node() as node, channels_server(node.address, ws=ws) as (url, _):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        raw = sockets.create_connection(("127.0.0.1", port), timeout=5)
        raw.setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, 4096)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            raw.sendall(
                (
                    f"GET /socket/websocket?vsn=2.0.0&user=slow HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            assert raw.recv(4096).startswith(b"HTTP/1.1 101")
            join = json.dumps(["1", "1", "room:slow", "phx_join", {}]).encode()
            mask = os.urandom(4)
            raw.sendall(
                bytes([0x81, 0x80 | len(join)])
                + mask
                + bytes(b ^ mask[i % 4] for i, b in enumerate(join))
            )
            deadline = time.monotonic() + 5
            while "slow" not in node.presence.list("room:slow"):
                assert time.monotonic() < deadline, "the join never tracked"
                time.sleep(0.02)
            pad = "x" * 4000
            for i in range(20_000):  # the client reads none of these
                node.pubsub.broadcast("room:slow", "spam", {"i": i, "pad": pad})
            deadline = time.monotonic() + 30
            while node.presence.list("room:slow"):
                assert time.monotonic() < deadline, "the slow client's presence stayed"
                time.sleep(0.05)
        finally:
            raw.close()


def test_a_node_restart_at_its_address_pushes_presence_state_again(tmp_path):
    """DESIGN 12: the endpoint's sockets are tracked again on the new node, and each joined
    channel that shows presences gets a fresh `presence_state` from it."""
    address = f"ipc://{tmp_path}/node.sock"
    node = whosthere.Node(address=address).start()
    try:
        with channels_server(address) as (url, _), connect(ws_url(url)) as ws:
            send(ws, "1", "1", "room:r", "phx_join", {"tab": 1})
            until(ws, lambda f: f[3] == "presence_state")
            node.stop()
            node = whosthere.Node(address=address).start()
            state = until(ws, lambda f: f[3] == "presence_state", timeout=15)
            assert state[:3] == ["1", None, "room:r"]
            listed = whosthere.Presence.connect(address)
            try:
                entry = wait_until(lambda: listed.list("room:r").get("raw"), timeout=10)
                assert [m["tab"] for m in entry["metas"]] == [1]
            finally:
                listed.close()
            send(ws, "1", "2", "room:r", "ping", {})  # the channel goes on
            assert until(ws, lambda f: f[1] == "2")[3] == "phx_reply"
    finally:
        node.stop()
