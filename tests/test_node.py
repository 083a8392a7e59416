"""`Node.stop()`: every step runs whatever fails, and a second stop finishes what was left."""

from __future__ import annotations

import time

import pytest

import whosthere
from whosthere import node as node_module


class Broken(Exception):
    pass


def _depart_fails(address: str, timeout: float) -> None:
    raise Broken("depart failed")


def test_a_failed_graceful_permdown_still_stops_workers_clients_and_the_tree(monkeypatch):
    monkeypatch.setattr(node_module, "depart", _depart_fails)
    node = whosthere.Node(listen="tcp://127.0.0.1:0", permdown_on_shutdown=True).start()
    try:
        worker = node.spawn(time.sleep, (60,))
        presence, pubsub = node.presence, node.pubsub
        with pytest.raises(Broken, match="^depart failed$"):
            node.stop()
        assert not worker.is_alive()
        assert not node.alive
        assert node.runtime_dir is not None and not node.runtime_dir.exists()
        for client in (presence, pubsub):  # closed: later calls refused at once
            with pytest.raises(whosthere.NodeUnavailable, match="is closed"):
                client.broadcast("t", "e", {}) if client is pubsub else client.list("t")
        node.stop()  # nothing left to do: no error
    finally:
        node.stop()


def test_a_second_stop_retries_only_the_steps_that_failed(monkeypatch):
    node = whosthere.Node().start()
    try:
        presence = node.presence
        closes = []

        def close() -> None:
            closes.append(len(closes))
            if len(closes) == 1:
                raise Broken("close failed")

        monkeypatch.setattr(presence, "close", close)
        worker = node.spawn(time.sleep, (60,))
        with pytest.raises(Broken, match="^close failed$"):
            node.stop()
        assert not worker.is_alive() and not node.alive  # the steps after it ran
        node.stop()
        assert closes == [0, 1]  # retried once, and it worked
        node.stop()
        assert closes == [0, 1]  # everything done: nothing runs again
    finally:
        monkeypatch.undo()
        node.stop()
