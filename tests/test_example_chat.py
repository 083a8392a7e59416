"""examples/chat runs as its README says, and the phoenix.js client chats in it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.js import JsClient, free_port, node_missing, synced

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=str(node_missing()))
APP = Path(__file__).resolve().parent.parent / "examples" / "chat" / "app.py"


def test_the_chat_example_shows_who_is_online_and_carries_messages():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(APP), "--port", str(port)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout is not None and "chat: http" in proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(base + "/", timeout=1) as page:
                    assert b"/phoenix.mjs" in page.read()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        with urllib.request.urlopen(base + "/phoenix.mjs", timeout=5) as js_file:
            assert b"Presence" in js_file.read()
        with JsClient() as js:
            url = f"ws://127.0.0.1:{port}/socket"
            for who in ("alice", "bob"):
                js.send(cmd="connect", socket=who, url=url, params={"user": who})
                js.send(cmd="join", socket=who, chan=who, topic="room:lobby", presence=True,
                        events=["new_msg"])  # fmt: skip
            js.wait(synced("alice", lambda s: sorted(s) == ["alice", "bob"]))
            js.send(cmd="push", chan="bob", event="new_msg", payload={"body": "hi"}, id="m")
            got = js.wait(lambda e: e["ev"] == "msg" and e["chan"] == "alice")
            assert got["payload"] == {"user": "bob", "body": "hi"}
            js.send(cmd="connect", socket="nobody", url=url, params={"user": ""})
            js.wait(lambda e: e["ev"] == "error" and e["socket"] == "nobody", what="refused")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
