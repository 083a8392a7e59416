"""examples/chat runs as its README says, and the phoenix.js client chats in it."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.js import (
    JsClient,
    free_port,
    node_missing,
    process_group,
    synced,
    wait_for_port,
)

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=str(node_missing()))
APP = Path(__file__).resolve().parent.parent / "examples" / "chat" / "app.py"


def test_the_chat_example_shows_who_is_online_and_carries_messages():
    port = free_port()
    cmd = [sys.executable, str(APP), "--port", str(port)]
    with process_group(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and "chat: http" in proc.stdout.readline()
        wait_for_port(port, proc)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/", timeout=5) as page:
            assert b"/phoenix.mjs" in page.read()
        with urllib.request.urlopen(base + "/phoenix.mjs", timeout=5) as js_file:
            assert b"Presence" in js_file.read()
        with JsClient() as js:
            url = f"ws://127.0.0.1:{port}/socket"
            for who in ("alice", "bob"):
                js.send(cmd="connect", socket=who, url=url, params={"user": who})
                js.send(
                    cmd="join",
                    socket=who,
                    chan=who,
                    topic="room:lobby",
                    presence=True,
                    events=["new_msg"],
                )
            js.wait(synced("alice", lambda s: sorted(s) == ["alice", "bob"]))
            js.send(cmd="push", chan="bob", event="new_msg", payload={"body": "hi"}, id="m")
            got = js.wait(lambda e: e["ev"] == "msg" and e["chan"] == "alice")
            assert got["payload"] == {"user": "bob", "body": "hi"}
            js.send(cmd="connect", socket="nobody", url=url, params={"user": ""})
            js.wait(lambda e: e["ev"] == "error" and e["socket"] == "nobody", what="refused")
