"""The command line: serve, status, list, watch, demo, bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import whosthere
from tests.support.waiting import wait_until
from whosthere import cli


def whosthere_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "whosthere", *args]


def test_serve_then_status_then_ctrl_c():
    with subprocess.Popen(
        whosthere_cmd("serve", "--name", "cli-node"), stdout=subprocess.PIPE, text=True
    ) as serve:
        assert serve.stdout is not None
        first = serve.stdout.readline()
        assert first.startswith("whosthere node 'cli-node' serving at ipc://")
        address = first.rsplit(" ", 1)[1].strip()
        out = subprocess.run(
            whosthere_cmd("status", "--json", address), capture_output=True, text=True, check=True
        ).stdout
        status = json.loads(out)
        assert status["name"] == "cli-node"
        assert [a["name"] for a in status["actors"]] == [
            "pubsub",
            "shard.0",
            "fetcher.0",
            "fetcher.1",
        ]
        assert status["actors"][0]["stats"] == {"topics": 0, "published": 0}
        assert status["presences"] == 0
        env = {**os.environ, "WHOSTHERE_ADDRESS": address}
        text = subprocess.run(
            whosthere_cmd("status"), capture_output=True, text=True, check=True, env=env
        ).stdout
        assert "node       cli-node" in text
        assert "pubsub" in text
        owner = subprocess.Popen(["sleep", "60"])
        try:
            with subprocess.Popen(
                whosthere_cmd("watch", "lobby", address, "--json"),
                stdout=subprocess.PIPE,
                text=True,
            ) as watch:
                assert watch.stdout is not None
                presence = whosthere.Presence.connect(address)
                wait_until(lambda: _subscribed(address, "lobby"), what="watch subscribed")
                presence.track(owner.pid, "lobby", "alice", {"status": "here"})
                assert list(json.loads(watch.stdout.readline())["joins"]) == ["alice"]
                listed = subprocess.run(
                    whosthere_cmd("list", "lobby", address, "--json"),
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                assert json.loads(listed)["alice"]["metas"][0]["status"] == "here"
                text = subprocess.run(
                    whosthere_cmd("list", "lobby", address),
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                assert text.startswith("lobby: 1 key(s)\n  alice")
                owner.kill()
                assert list(json.loads(watch.stdout.readline())["leaves"]) == ["alice"]
                presence.close()
                watch.send_signal(signal.SIGINT)
                watch.wait(timeout=10)
        finally:
            owner.kill()
            owner.wait()
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=10) == 0


def _subscribed(address: str, topic: str) -> bool:
    status = whosthere.node.node_status(address)
    pubsub = next(a for a in status["actors"] if a["name"] == "pubsub")
    return bool(pubsub["stats"] and pubsub["stats"]["topics"] >= 1)


def test_status_of_nothing_is_a_clear_error(capsys):
    code = cli.main(["status", "--timeout", "0.2", "ipc:///tmp/whosthere-none/supervisor.sock"])
    assert code == 2
    assert capsys.readouterr().err.startswith(
        "whosthere: NodeUnavailable: node at ipc:///tmp/whosthere-none/supervisor.sock did not "
        "answer GetStatus within 0.2 s"
    )


def test_demo_shows_crash_driven_leaves():
    result = subprocess.run(
        whosthere_cmd("demo", "--workers", "4", "--kills", "2", "--duration", "4", "--seed", "7"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count(" join ") == 4
    assert out.count(" KILL ") == 2
    assert out.count("crashed: left") == 2
    assert "2 crash-driven leave(s); kill -> leave diff median" in out
    assert "list('workers') now: 2 present" in out
    summary = out.split("summary", 1)[1]
    assert summary.count(" killed ") == 2


def test_node_spawn_gives_workers_the_address():
    with whosthere.Node() as node:
        proc = node.spawn(os.getenv, ("WHOSTHERE_ADDRESS",))
        proc.join(10)
        assert proc.exitcode == 0
        with node.pubsub.subscribe("spawned") as sub:
            worker = node.spawn(_broadcast_from_worker)
            msg = sub.get(timeout=10)
            assert msg is not None and msg.payload == node.address
            worker.join(10)
        idle = node.spawn(_sleep_forever)
        wait_until(lambda: idle.pid is not None)
    assert idle.exitcode is not None  # stop() ended the workers it spawned


def _broadcast_from_worker() -> None:
    with whosthere.PubSub.connect() as pubsub:
        pubsub.broadcast("spawned", "hi", os.environ["WHOSTHERE_ADDRESS"])


def _sleep_forever() -> None:
    signal.pause()


def test_bench_passes_its_arguments_to_the_benchmarks():
    result = subprocess.run(
        whosthere_cmd("bench", "--help"), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: whosthere bench")
    assert "--only" in result.stdout and "--quick" in result.stdout


def test_bench_without_the_source_checkout_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "bench_script", lambda: tmp_path / "bench" / "run.py")
    assert cli.main(["bench", "--quick"]) == 2
    assert "the benchmarks ship with the source checkout" in capsys.readouterr().err


def test_other_commands_still_refuse_unknown_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["status", "--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
