"""The command line: serve, status, list, watch, demo, bench."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys

import pytest

import whosthere
from tests.support.served import Served, cleanup, owner
from tests.support.waiting import wait_until
from whosthere import cli, serve_flags
from whosthere.cli import HTTP_GRACE_S
from whosthere.config import NodeConfig
from whosthere.node import DEPART_TIMEOUT, STOP_TIMEOUT
from whosthere.tracker.options import TrackerOptions
from whosthere.transport.messages import DropPeers
from whosthere.transport.sockets import Dealer

LISTEN = "tcp://127.0.0.1:0"


def whosthere_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "whosthere", *args]


def whosthere_out(*args: str) -> str:
    """What `whosthere ARGS` prints (it must succeed)."""
    return subprocess.run(whosthere_cmd(*args), capture_output=True, text=True, check=True).stdout


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
        assert status["actors"][0]["stats"] == {"topics": 0, "subscribers": 0, "published": 0}
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


# -- serve's flags: one per Node option ------------------------------------------------------

# Node keywords with flags of another shape: `--presence module:Class`, `--peer` (repeated)
HAND_WRITTEN_FLAGS = {"presence": "--presence", "peers": "--peer"}


def _serve_flags() -> dict[str, argparse.Action]:
    serve = cli.parser()._subparsers._group_actions[0].choices["serve"]
    return {flag: action for action in serve._actions for flag in action.option_strings}


def test_every_node_option_has_a_serve_flag():
    flags = _serve_flags()
    params = inspect.signature(whosthere.Node.__init__).parameters
    names = [n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD] + [
        f.name for f in dataclasses.fields(TrackerOptions)
    ]
    assert "max_restarts" in names and "broadcast_period" in names  # the lists were read
    missing = [
        name
        for name in names
        if HAND_WRITTEN_FLAGS.get(name, "--" + name.replace("_", "-")) not in flags
    ]
    assert missing == []
    assert {"--durable", "--no-durable", "--permdown-on-shutdown"} <= set(flags)


def test_serve_flags_show_the_nodes_defaults_and_docstring():
    flags = _serve_flags()
    assert flags["--fetchers"].help == (
        f"fetcher worker processes that run `fetch` on diffs (default: {NodeConfig.fetchers})"
    )
    assert flags["--durable"].help.endswith("(default: --durable)")
    assert "With --no-durable a restarted shard starts empty" in flags["--durable"].help
    assert flags["--permdown-period"].help == (
        "seconds of silence before a down peer is forgotten for good "
        f"(default: {TrackerOptions.permdown_period})"
    )
    for flag in ("--max-restarts", "--broadcast-period", "--max-delta-sizes", "--name"):
        assert flags[flag].default is argparse.SUPPRESS  # not given: the Node's own default
    assert flags["--permdown-on-shutdown"].default is True  # serve's, unlike the Node's
    assert flags["--permdown-on-shutdown"].help.endswith("(default: --permdown-on-shutdown)")


def test_serve_passes_only_the_flags_given():
    args = cli.parser().parse_args(
        ["serve", "--fetchers", "3", "--no-durable", "--max-delta-sizes", "5,50", "--peer", "x"]
    )
    assert serve_flags.given_node_options(args) == {
        "fetchers": 3,
        "durable": False,
        "max_delta_sizes": (5, 50),
        "permdown_on_shutdown": True,  # serve's own default (SERVE_DEFAULTS)
    }
    stays = cli.parser().parse_args(["serve", "--no-permdown-on-shutdown"])
    assert serve_flags.given_node_options(stays) == {"permdown_on_shutdown": False}
    assert args.peer == ["x"] and args.presence is None


def test_serve_refuses_a_bad_option_value_in_one_line(capsys):
    assert cli.main(["serve", "--fetchers", "0"]) == 2
    assert capsys.readouterr().err == (
        "whosthere serve: fetchers, fetch_timeout and meta_limit must be positive\n"
    )


def test_serve_runs_the_node_with_the_options_given(tmp_path):
    cmd = whosthere_cmd(
        "serve",
        "--name",
        "flags-node",
        "--fetchers",
        "1",
        "--fetch-timeout",
        "2.5",
        "--meta-limit",
        "1000",
        "--pubsub-hwm",
        "500",
        "--max-restarts",
        "7",
        "--no-durable",
        "--broadcast-period",
        "0.25",
        "--max-delta-sizes",
        "10,20",
    )
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as serve:
        try:
            assert serve.stdout is not None
            address = serve.stdout.readline().rsplit(" ", 1)[1].strip()
            out = whosthere_out("status", "--json", address)
            config = json.loads(out)["config"]
            assert [a["name"] for a in json.loads(out)["actors"]] == [
                "pubsub",
                "shard.0",
                "fetcher.0",
            ]
            assert (config["name"], config["fetchers"], config["fetch_timeout"]) == (
                "flags-node",
                1,
                2.5,
            )
            assert (config["meta_limit"], config["pubsub_hwm"], config["max_restarts"]) == (
                1000,
                500,
                7,
            )
            assert config["durable"] is False
            assert config["tracker"]["broadcast_period"] == 0.25
            assert config["tracker"]["max_delta_sizes"] == [10, 20]
            # not given: the defaults of NodeConfig and TrackerOptions
            assert config["start_timeout"] == NodeConfig.start_timeout
            assert config["tracker"]["permdown_period"] == TrackerOptions.permdown_period
            presence = whosthere.Presence.connect(address)
            try:
                with pytest.raises(whosthere.InvalidMeta, match="over the 1000-byte limit"):
                    presence.track(os.getpid(), "t", "k", {"blob": "x" * 2000})
            finally:
                presence.close()
        finally:
            serve.send_signal(signal.SIGINT)
            assert serve.wait(timeout=10) == 0


# A value unlike the default for every option `serve` passes to the Node, and where the
# node's config shows it (None: the serve process's own, not the node's: call_timeout is
# its clients' timeout, and the cookie must never show).
_EVERY_FLAG = {
    "pool_size": ("2", ("pool_size",), 2),
    "name": ("knobs", ("name",), "knobs"),
    "listen": ("tcp://127.0.0.1:0", ("cluster", "listen"), "tcp://127.0.0.1:0"),
    "max_restarts": ("7", ("max_restarts",), 7),
    "max_seconds": ("9.5", ("max_seconds",), 9.5),
    "start_timeout": ("20", ("start_timeout",), 20.0),
    "call_timeout": ("7.5", None, None),
    "pubsub_hwm": ("500", ("pubsub_hwm",), 500),
    "max_pidfds": ("100", ("max_pidfds",), 100),
    "fetchers": ("1", ("fetchers",), 1),
    "fetch_timeout": ("2.5", ("fetch_timeout",), 2.5),
    "meta_limit": ("1000", ("meta_limit",), 1000),
    "log_level": ("INFO", ("log_level",), "INFO"),
    "durable": (False, ("durable",), False),
    "cookie": ("s3cret-knobs", None, None),
    "advertise": ("tcp://127.0.0.1:0", ("cluster", "advertise"), "tcp://127.0.0.1:0"),
    "discovery_period": ("7.5", ("cluster", "discovery_period"), 7.5),
    "address": ("ipc://{tmp}/knobs.sock", ("address",), "ipc://{tmp}/knobs.sock"),
    "broadcast_period": ("0.25", ("tracker", "broadcast_period"), 0.25),
    "max_silent_periods": ("3", ("tracker", "max_silent_periods"), 3),
    "down_period": ("4", ("tracker", "down_period"), 4.0),
    "permdown_period": ("9", ("tracker", "permdown_period"), 9.0),
    "clock_sample_periods": ("3", ("tracker", "clock_sample_periods"), 3),
    "max_delta_sizes": ("10,20", ("tracker", "max_delta_sizes"), [10, 20]),
    "permdown_on_shutdown": (False, ("tracker", "permdown_on_shutdown"), False),
}


_APART = {"engine"}  # exclusive with --listen: test_serve_over_a_redis_engine


def test_serve_over_a_redis_engine(redis_server, tmp_path):
    """`--engine`: the node meets its peers through Redis, and says so."""
    address = f"ipc://{tmp_path}/engine.sock"
    cmd = whosthere_cmd("serve", "--engine", redis_server.url, "--address", address)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as serve:
        try:
            assert serve.stdout is not None
            assert serve.stdout.readline().rsplit(" ", 1)[1].strip() == address
            status = json.loads(whosthere_out("status", "--json", address))
            assert status["config"]["cluster"]["engine"] == redis_server.url
            assert status["cluster"]["engine"]["lease"] == "held"
            assert f"cluster    through {redis_server.url}" in whosthere_out("status", address)
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=10) == 0


def test_every_serve_flag_reaches_the_node(tmp_path):
    """Each option, given on the command line, is the one the running node has."""
    flags = serve_flags.node_flags()
    # a new option: add it here (or, if it excludes another, to _APART with its own test)
    assert sorted([*_EVERY_FLAG, *_APART]) == sorted(f.name for f in flags)
    cmd = whosthere_cmd("serve", "--peer", "tcp://127.0.0.1:1")
    for flag in (f for f in flags if f.name not in _APART):
        value = _EVERY_FLAG[flag.name][0]
        if isinstance(value, bool):
            cmd.append(flag.flag if value else f"--no-{flag.flag[2:]}")
        else:
            cmd += [flag.flag, value.format(tmp=tmp_path)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as serve:
        try:
            assert serve.stdout is not None
            address = serve.stdout.readline().rsplit(" ", 1)[1].strip()
            assert address == f"ipc://{tmp_path}/knobs.sock"
            out = whosthere_out("status", "--json", address)
            assert "s3cret-knobs" not in out
            config = json.loads(out)["config"]
            assert config["cluster"]["peers"] == ["tcp://127.0.0.1:1"]
            for name, (_, where, want) in _EVERY_FLAG.items():
                if where is None:
                    continue
                got = config
                for part in where:
                    got = got[part]
                assert got == (want.format(tmp=tmp_path) if isinstance(want, str) else want), name
        finally:
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("signum", "http"),
    [
        (signal.SIGINT, []),
        (signal.SIGINT, ["--http", "127.0.0.1:0"]),  # uvicorn in serve's own process
        (signal.SIGTERM, ["--http", "127.0.0.1:0", "--workers", "2"]),  # and its workers
    ],
    ids=["sigint", "sigint-http", "sigterm-http-workers"],
)
def test_serve_says_goodbye_on_a_signal(signum, http, tmp_path):
    """Ctrl-C and SIGTERM alike (with uvicorn's workers in the foreground too): the node's
    presences leave its peer at once, long before down_period, and serve exits 0 soon."""
    slow = {"broadcast_period": 0.05, "down_period": 30.0, "permdown_period": 60.0}
    flags = (*(f"--{k.replace('_', '-')}={v}" for k, v in slow.items()), "--fetchers=1", *http)
    servers: list[Served] = []
    owners: list[subprocess.Popen[str]] = []
    with (
        whosthere.Node(name="peer", listen=LISTEN, **slow) as peer,
        cleanup(servers, owners),
    ):
        address = f"ipc://{tmp_path}/served.sock"
        assert peer.cluster_address is not None
        served = Served.start(
            "served", address, "tcp://127.0.0.1:0", [peer.cluster_address], flags=flags
        )
        servers.append(served)
        owners.append(owner(address, "room", "k"))
        wait_until(lambda: "k" in peer.presence.list("room"), timeout=10)
        took = served.terminate(timeout=20, signum=signum)
        assert took < 5 + (HTTP_GRACE_S if http else 0), f"serve took {took:.1f} s to stop"
        assert peer.presence.list("room") == {}  # at once: its goodbye, not down_period
        assert peer.status()["peers"] == {}  # forgotten, not down


def test_serve_stops_in_time_when_its_goodbye_is_not_acknowledged(tmp_path):
    """The peer hears nothing from it any more (a netsplit): serve gives up on the goodbye
    after its window, says which peer drops it after down_period, and stops."""
    slow = {"broadcast_period": 0.05, "down_period": 30.0, "permdown_period": 60.0}
    flags = (*(f"--{k.replace('_', '-')}={v}" for k, v in slow.items()), "--fetchers=1")
    servers: list[Served] = []
    owners: list[subprocess.Popen[str]] = []
    with (
        whosthere.Node(name="peer", listen=LISTEN, **slow) as peer,
        cleanup(servers, owners),
    ):
        assert peer.cluster_address is not None
        address = f"ipc://{tmp_path}/served.sock"
        served = Served.start("served", address, LISTEN, [peer.cluster_address], flags=flags)
        servers.append(served)
        owners.append(owner(address, "room", "k"))
        wait_until(lambda: "k" in peer.presence.list("room"), timeout=10)
        dealer = Dealer(peer.presence.info.endpoints["cluster"])
        try:
            dealer.call(DropPeers(["served"]))
        finally:
            dealer.close()
        took = served.terminate(timeout=20)
        assert took < DEPART_TIMEOUT + STOP_TIMEOUT + 1, f"serve took {took:.1f} s to stop"
        assert served.reader is not None
        served.reader.join(5)
        log = "".join(served.lines)
        assert "shard.0: no goodbye acknowledgement from peer" in log
        assert "graceful permdown of shard 0: no acknowledgement from peer" in log
        assert "k" in peer.presence.list("room")  # until down_period: it never heard
