"""`whosthere serve --http`: the live page, opened in headless Chromium, shows a join and a
SIGKILLed worker's leave as they happen (the page is itself a Channels client)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.browser import browser, chromium_missing
from tests.support.js import serve_http

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))


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
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, address], stdout=subprocess.PIPE, text=True
        )
        try:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "tracked"
            page.wait(
                "!!document.querySelector('li.presence[data-key=\"worker-1\"]')",
                what="the worker's join",
            )
            page.wait(
                "document.getElementById('topics').textContent.includes('room:dash')",
                what="the topic in the overview",
            )
            worker.kill()
            worker.wait()
            page.wait(
                "!document.querySelector('li.presence[data-key=\"worker-1\"]')",
                what="the killed worker's leave",
            )
            row = page.wait(
                f"[...document.querySelectorAll('#exits tr.exit')]"
                f".map(r => r.textContent).find(t => t.startsWith('{worker.pid}'))",
                what="the exit",
            )
            assert "room:dash" in row and " ms" in row
        finally:
            worker.kill()
            worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
