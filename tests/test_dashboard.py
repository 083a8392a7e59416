"""`whosthere serve --http`: the live page, opened in headless Chromium, shows a join and a
SIGKILLed worker's leave as they happen (the page is itself a Channels client)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.browser import browser, chromium_missing
from tests.support.js import free_port, process_group, wait_for_port

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))


@contextlib.contextmanager
def serve_http() -> Iterator[tuple[str, str]]:
    """`whosthere serve --http` on a free port: yields (page URL, node address)."""
    port = free_port()
    cmd = [sys.executable, "-m", "whosthere", "serve", "--http", f"127.0.0.1:{port}"]
    with process_group(cmd, stdout=subprocess.PIPE, text=True) as proc:
        address = ""
        assert proc.stdout is not None
        for line in proc.stdout:
            if "WHOSTHERE_ADDRESS=" in line:
                address = line.strip().split("=", 1)[1]
            if "the live page" in line:
                break
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/", address


WORKER = """
import os, sys, time, whosthere
presence = whosthere.Presence.connect(sys.argv[1])
presence.track(os.getpid(), "room:dash", "worker-1", {"role": "demo"})
print("tracked", flush=True)
time.sleep(60)
"""


def test_the_live_page_shows_a_join_and_a_killed_workers_leave():
    with serve_http() as (url, address), browser(url + "?topic=room:dash") as page:
        page.wait("document.getElementById('state').textContent === 'live'", what="live")
        page.wait("document.querySelectorAll('#tree tr.actor').length >= 3", what="the tree")
        worker = subprocess.Popen([sys.executable, "-c", WORKER, address],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "tracked"
            page.wait("!!document.querySelector('li.presence[data-key=\"worker-1\"]')",
                      what="the worker's join")  # fmt: skip
            page.wait("document.getElementById('topics').textContent.includes('room:dash')",
                      what="the topic in the overview")  # fmt: skip
            worker.kill()
            worker.wait()
            page.wait("!document.querySelector('li.presence[data-key=\"worker-1\"]')",
                      what="the killed worker's leave")  # fmt: skip
            row = page.wait(f"[...document.querySelectorAll('#exits tr.exit')]"
                            f".map(r => r.textContent).find(t => t.startsWith('{worker.pid}'))",
                            what="the exit")  # fmt: skip
            assert "room:dash" in row and " ms" in row
        finally:
            worker.kill()
            worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
