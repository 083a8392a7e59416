"""A stable address (DESIGN 12): a node's client door at a fixed ipc:// path.

Who may serve there (one live node; a dead one's socket is stale; a user's file is never
touched), the socket's mode, giving it back on stop only if still ours, and clients that
dial the wrong kind of address failing at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import whosthere
import whosthere.aio
from tests.support.waiting import wait_until
from whosthere.client import lookup
from whosthere.errors import NodeStartError, NodeUnavailable
from whosthere.transport import client_door
from whosthere.transport.client_address import check_node_address, client_address_problem
from whosthere.transport.runtime_dir import IPC_PATH_MAX

FAST = 1.0  # seconds: a wide smoke margin for "at once", well under the 3 s call timeout
SOCKET_MODE = stat.S_IFSOCK | 0o600
FILE_MODE = stat.S_IFREG | 0o644


@pytest.fixture
def place() -> Iterator[Path]:
    """A short private directory for a node's socket (ipc paths are short), removed after."""
    path = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _address(place: Path) -> str:
    return f"ipc://{place}/whosthere.sock"


# -- what an address may be (pure) -------------------------------------------------------


def test_a_node_address_is_an_absolute_ipc_path():
    assert check_node_address("ipc:///run/app/whosthere.sock") == "ipc:///run/app/whosthere.sock"


@pytest.mark.parametrize(
    ("address", "error", "text"),
    [
        ("tcp://127.0.0.1:7000", ValueError, "is a tcp:// address, which is a cluster listen"),
        ("inproc://x", ValueError, "must be an ipc:// path such as"),
        ("ipc://relative.sock", ValueError, "must name a socket file by its absolute path"),
        ("ipc:///run/app/", ValueError, "must name a socket file by its absolute path"),
        (
            "ipc:///" + "x" * IPC_PATH_MAX,
            ValueError,
            f"ipc:// socket path is at most {IPC_PATH_MAX}",
        ),
        (7, TypeError, "address must be a str such as 'ipc:///run/app/whosthere.sock', got 7"),
    ],
)
def test_a_wrong_node_address_is_refused_at_node(address, error, text):
    with pytest.raises(error, match=text.replace("(", r"\(").replace("?", r"\?")):
        whosthere.Node(address=address)


def test_what_a_client_can_tell_of_an_address_before_dialling():
    cluster = client_address_problem("tcp://127.0.0.1:7000", None)
    assert cluster is not None
    assert cluster.startswith("tcp://127.0.0.1:7000 is a cluster address (a node's listen=")
    assert "clients connect to the node's ipc:// address (node.address, $WHOSTHERE_ADDRESS" in (
        cluster
    )
    assert "is not an ipc:// address" in (client_address_problem("http://x", None) or "")
    assert client_address_problem("ipc:///a/file", FILE_MODE) == (
        "/a/file is not a socket, so not a node's client door: clients connect to the node's "
        "ipc:// address (node.address, $WHOSTHERE_ADDRESS, whosthere serve --address)"
    )
    assert client_address_problem("ipc:///a/sock", SOCKET_MODE) is None
    assert client_address_problem("ipc:///not/yet/there", None) is None  # a node may start


# -- the node side -----------------------------------------------------------------------


def test_a_node_at_a_fixed_address_serves_clients_there(place, owner):
    address = _address(place)
    with whosthere.Node(address=address) as node:
        assert node.address == address
        assert os.lstat(place / "whosthere.sock").st_mode == SOCKET_MODE
        assert node.status()["address"] == address
        presence = whosthere.Presence.connect(address)
        presence.track(owner.pid, "room:1", "alice", {"at": "door"})
        assert presence.list("room:1")["alice"]["metas"][0]["at"] == "door"
        presence.close()
        worker = node.spawn(_lookup_by_environment, (address,))
        worker.join(10)
        assert worker.exitcode == 0
    assert os.listdir(place) == []  # the socket and its lock file are given back


def _lookup_by_environment(expected: str) -> None:
    assert os.environ["WHOSTHERE_ADDRESS"] == expected
    assert lookup().address == expected


def test_a_restarted_node_serves_at_the_same_address(place, owner):
    address = _address(place)
    with whosthere.Node(address=address, name="first"):
        pass
    with whosthere.Node(address=address, name="second"):
        presence = whosthere.Presence.connect(address)
        assert presence.info.name == "second"
        presence.track(owner.pid, "room:1", "bob", {})
        assert list(presence.list("room:1")) == ["bob"]
        presence.close()
    assert os.listdir(place) == []


def test_a_second_live_node_at_the_address_is_refused(place):
    address = _address(place)
    with whosthere.Node(address=address, name="first"):
        second = whosthere.Node(address=address, name="second")
        with pytest.raises(NodeStartError, match=f"^a node already serves {address} "):
            second.start()
        assert lookup(address).name == "first"
    assert os.listdir(place) == []


def test_two_starts_at_once_at_one_address_have_one_winner(place):
    address = _address(place)
    barrier = threading.Barrier(8)
    won: list[client_door.ClientDoor] = []
    refused: list[str] = []

    def start() -> None:
        barrier.wait()
        try:
            won.append(client_door.claim(address))
        except NodeStartError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert len(refused) == 7
    assert all(text.startswith(f"a node already serves {address}") for text in refused)
    won[0].release()
    assert os.listdir(place) == []


def test_a_start_that_locks_a_lock_file_just_unlinked_locks_the_new_one(place, monkeypatch):
    address = _address(place)
    old = client_door.claim(address)
    real_flock = client_door.fcntl.flock

    def old_stops_first(fd: int, operation: int) -> None:
        monkeypatch.setattr(client_door.fcntl, "flock", real_flock)
        old.release()  # between the new start's open() and its flock(): it locked a ghost
        real_flock(fd, operation)

    monkeypatch.setattr(client_door.fcntl, "flock", old_stops_first)
    new = client_door.claim(address)
    lock = place / "whosthere.sock.lock"
    assert os.fstat(new.lock_fd).st_ino == os.lstat(lock).st_ino
    assert client_door._lock(str(lock), create=True) is None  # held: no second winner
    new.release()
    assert os.listdir(place) == []


def test_a_killed_node_leaves_a_stale_socket_the_next_node_removes(place):
    address = _address(place)
    sock = place / "whosthere.sock"
    old = whosthere.Node(address=address, name="old").start()
    try:
        os.kill(old.pid, signal.SIGKILL)  # its actors die with it; nobody removes the file
        wait_until(lambda: not old.alive, what="the old supervisor gone")
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        with whosthere.Node(address=address, name="new"):
            assert lookup(address).name == "new"
            old.stop()  # the old node's stop leaves the new node's door alone
            assert stat.S_ISSOCK(os.lstat(sock).st_mode)
            assert lookup(address).name == "new"
    finally:
        old.stop()
    assert os.listdir(place) == []


def test_a_node_stopped_after_its_supervisor_was_killed_gives_the_door_back(place):
    old = whosthere.Node(address=_address(place)).start()
    os.kill(old.pid, signal.SIGKILL)
    wait_until(lambda: not old.alive, what="the supervisor gone")
    old.stop()
    assert os.listdir(place) == []


def test_a_file_at_the_address_is_refused_and_left_intact(place):
    path = place / "whosthere.sock"
    path.write_text("the user's own")
    with pytest.raises(
        NodeStartError, match="exists and is not a socket \\(left as it is\\)$"
    ) as raised:
        whosthere.Node(address=_address(place)).start()
    assert str(raised.value).startswith(f"cannot serve at {_address(place)}: {path} exists")
    assert path.read_text() == "the user's own"
    assert os.listdir(place) == ["whosthere.sock"]  # no lock file left either


def test_a_socket_some_other_program_listens_on_is_refused_and_left_alone(place):
    path = place / "whosthere.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(str(path))
        other.listen(1)
        with pytest.raises(
            NodeStartError,
            match=f"something that is not a whosthere node listens at {path} ",
        ):
            whosthere.Node(address=_address(place)).start()
        assert os.listdir(place) == ["whosthere.sock"]
    finally:
        other.close()


def test_a_missing_directory_is_named(place):
    address = f"ipc://{place}/not-made/whosthere.sock"
    with pytest.raises(NodeStartError) as raised:
        whosthere.Node(address=address).start()
    assert str(raised.value) == (
        f"cannot serve at {address}: directory {place}/not-made does not exist"
    )


# -- the client side: the wrong kind of address fails at once ----------------------------


def _fails_at_once(call, text: str) -> None:
    began = time.monotonic()
    with pytest.raises(NodeUnavailable, match=text):
        call()
    assert time.monotonic() - began < FAST


def test_a_cluster_address_is_no_client_door():
    text = r"^tcp://127\.0\.0\.1:7000 is a cluster address \(a node's listen=, where peers meet\)"
    _fails_at_once(lambda: lookup("tcp://127.0.0.1:7000", timeout=3), text)
    _fails_at_once(lambda: whosthere.Presence.connect("tcp://127.0.0.1:7000", timeout=3), text)
    _fails_at_once(lambda: asyncio.run(whosthere.aio.lookup("tcp://127.0.0.1:7000", 3)), text)


def test_a_file_that_is_not_a_socket_is_no_client_door(place):
    path = place / "notes.txt"
    path.write_text("")
    text = f"^{path} is not a socket, so not a node's client door"
    _fails_at_once(lambda: lookup(f"ipc://{path}", timeout=3), text)
    _fails_at_once(lambda: asyncio.run(whosthere.aio.lookup(f"ipc://{path}", 3)), text)


def test_an_actor_mailbox_is_no_client_door():
    with whosthere.Node() as node:
        shard = lookup(node.address).endpoints["shard.0"]
        text = (
            f"^{shard} is not a node's client door \\(it answered Lookup with MalformedFrame: "
            "shard.0 does not handle Lookup\\); clients connect to the node's address"
        )
        _fails_at_once(lambda: lookup(shard, timeout=3), text)
        _fails_at_once(lambda: asyncio.run(whosthere.aio.lookup(shard, 3)), text)


def test_where_nothing_listens_yet_the_lookup_waits_its_timeout(place):
    address = _address(place)
    with pytest.raises(NodeUnavailable, match="did not answer Lookup within 0.2 s"):
        lookup(address, timeout=0.2)


# -- whosthere serve --address -----------------------------------------------------------


def test_serve_at_a_fixed_address(place):
    address = _address(place)
    command = [sys.executable, "-m", "whosthere"]
    with subprocess.Popen(
        [*command, "serve", "--address", address], stdout=subprocess.PIPE, text=True
    ) as serve:
        assert serve.stdout is not None
        assert serve.stdout.readline().endswith(f" serving at {address}\n")
        out = subprocess.run(
            [*command, "status", "--json", address], capture_output=True, text=True, check=True
        ).stdout
        assert json.loads(out)["address"] == address
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 0
    assert os.listdir(place) == []
