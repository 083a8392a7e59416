"""`whosthere serve` imports the user's modules as uvicorn does (the app's directory first,
no PYTHONPATH), in every HTTP worker and in the node's own processes: `--channels
module:app`, `--presence module:Class`, `--app-dir DIR`."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import whosthere
from tests.support.js import free_port, process_group, wait_for_port
from tests.support.waiting import wait_until
from whosthere import cli
from whosthere.node import node_status

MYAPP = """
import os
from pathlib import Path

import whosthere

Path(__file__).with_name(f"loaded-{os.getpid()}").touch()  # who imported it


class RoomPresence(whosthere.Presence):
    def fetch(self, topic, presences):
        for entry in presences.values():
            entry["fetched_by"] = "myapp"
        return presences


class NotAPresence:
    pass


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = f"myapp {scope['path']} from pid {os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory with `myapp.py`, a Presence subclass and an ASGI app, as a user has."""
    (tmp_path / "myapp.py").write_text(MYAPP)
    yield tmp_path
    sys.modules.pop("myapp", None)  # the tests that load it in this process


def _clean_env() -> dict[str, str]:
    """This run's environment without PYTHONPATH (the conftest sets one)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _console_script() -> str:
    """The installed `whosthere` command: unlike `python -m`, it puts no directory of the
    caller's on sys.path, so finding `myapp` is serve's doing."""
    return str(Path(sys.executable).with_name("whosthere"))


def _read_address(serve: subprocess.Popen[str], until: str) -> str:
    assert serve.stdout is not None
    address = ""
    for line in serve.stdout:
        if "WHOSTHERE_ADDRESS=" in line:
            address = line.strip().split("=", 1)[1]
        if until in line:
            return address
    raise AssertionError(f"serve exited ({serve.wait()}) before printing {until!r}")


def _fetched_join(address: str) -> dict[str, object]:
    """A join on a fresh topic as a subscriber gets it: through the node's fetchers."""
    presence = whosthere.Presence.connect(address)
    try:
        with presence.subscribe("room:apps") as sub, presence.owner() as owner:
            presence.track(owner, "room:apps", "ada", {"status": "here"})
            msg = sub.get(timeout=10)
            assert msg is not None and msg.event == "presence_diff"
            entry: dict[str, object] = msg.payload["joins"]["ada"]
            return entry
    finally:
        presence.close()


def _worker_pids(serve_pid: int) -> list[int]:
    """uvicorn's worker processes under `serve` (multiprocessing spawn children)."""
    children = psutil.Process(serve_pid).children()
    return [c.pid for c in children if "spawn_main" in " ".join(c.cmdline())]


def test_serve_imports_the_app_and_the_presence_class_from_the_current_directory(app_dir):
    port = free_port()
    cmd = [
        _console_script(),
        "serve",
        "--presence",
        "myapp:RoomPresence",
        "--http",
        f"127.0.0.1:{port}",
        "--channels",
        "myapp:app",
        "--workers",
        "2",
    ]
    env = _clean_env()
    with process_group(cmd, cwd=app_dir, env=env, stdout=subprocess.PIPE, text=True) as serve:
        address = _read_address(serve, "the live page")
        wait_for_port(port, serve)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=10) as reply:
            assert reply.read().decode().startswith("myapp /hello from pid ")
        workers = wait_until(
            lambda: (pids := _worker_pids(serve.pid)) and len(pids) == 2 and pids,
            timeout=15,
            what="two HTTP workers",
        )
        loaded = {int(p.name.split("-")[1]) for p in app_dir.glob("loaded-*")}
        wait_until(
            lambda: set(workers) <= {int(p.name.split("-")[1]) for p in app_dir.glob("loaded-*")},
            timeout=15,
            what=f"both workers {workers} to import myapp (so far {loaded})",
        )
        entry = _fetched_join(address)
        assert entry["fetched_by"] == "myapp"  # the node's fetchers ran RoomPresence.fetch
        status = node_status(address)
        assert status["config"]["presence"]["module"] == "myapp"


def test_serve_finds_the_presence_class_in_app_dir_from_anywhere(app_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    cmd = [_console_script(), "serve", "--presence", "myapp:RoomPresence"]
    cmd += ["--app-dir", str(app_dir), "--fetchers", "1"]
    env = _clean_env()
    with process_group(cmd, cwd=elsewhere, env=env, stdout=subprocess.PIPE, text=True) as serve:
        address = _read_address(serve, "Ctrl-C stops it")
        # the node's processes run in `elsewhere`: the class's ref names where myapp is
        assert _fetched_join(address)["fetched_by"] == "myapp"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "myapp:app",
            "--presence myapp:app: <function app at 0x…> is not a whosthere.Presence subclass",
        ),
        (
            "myapp:NotAPresence",
            "--presence myapp:NotAPresence: <class 'myapp.NotAPresence'> is not a "
            "whosthere.Presence subclass",
        ),
        ("myapp:Nope", "--presence myapp:Nope: myapp has no 'Nope'"),
        ("nosuchapp:RoomPresence", "--presence nosuchapp:RoomPresence: no module named "),
        ("myapp", "--presence wants module:attribute, got 'myapp'"),
    ],
)
def test_a_bad_presence_is_refused_in_one_line(app_dir, monkeypatch, capsys, spec, message):
    monkeypatch.chdir(app_dir)
    monkeypatch.setattr(sys, "path", list(sys.path))  # serve puts the app's directory first
    assert cli.main(["serve", "--presence", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    head, _, tail = message.partition("0x…")
    assert err.startswith("whosthere serve: " + head)
    assert tail in err


def test_a_missing_presence_module_is_one_line_and_no_traceback(tmp_path):
    result = subprocess.run(
        [_console_script(), "serve", "--presence", "nosuchapp:RoomPresence"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "whosthere serve: --presence nosuchapp:RoomPresence: no module named 'nosuchapp' "
        f"(looked in {tmp_path} first)\n"
    )
