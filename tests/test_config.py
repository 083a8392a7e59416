"""The node's configuration and topology without processes: checked once, carried whole."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from whosthere.actors.base import ActorSpec
from whosthere.config import ClusterConfig, NodeConfig
from whosthere.errors import ActorError, NotTracked, from_wire
from whosthere.loading import class_ref, import_root, load_class
from whosthere.presence import Presence
from whosthere.topology import PUBSUB_PUB, Topology, fetcher_name, is_fetcher, is_shard, shard_name
from whosthere.tracker.options import TrackerOptions

REF = {"module": "whosthere.presence", "qualname": "Presence"}


def test_a_configuration_survives_the_command_line_whole():
    config = NodeConfig(
        name="a",
        presence=REF,
        custom_fetch=True,
        pool_size=3,
        cluster=ClusterConfig("tcp://127.0.0.1:7000", None, ("tcp://127.0.0.1:7001",)),
        tracker=TrackerOptions.from_options({"broadcast_period": 0.1, "max_delta_sizes": [5]}),
        runtime_dir="/tmp/x",
    )
    again = NodeConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert again == config
    assert again.tracker.max_delta_sizes == (5,) and again.cluster.peers == (
        "tcp://127.0.0.1:7001",
    )


def test_down_period_follows_broadcast_period_unless_given():
    assert TrackerOptions.from_options({}).down_period == 30.0
    assert TrackerOptions.from_options({"broadcast_period": 0.5}).down_period == 10.0
    assert TrackerOptions.from_options({"broadcast_period": 0.5, "down_period": 2}).down_period == 2


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"broadcast_perio": 1}, TypeError, "unknown Node option"),
        ({"broadcast_period": 1.0, "down_period": 1.5}, ValueError, "at least twice"),
        ({"down_period": 10.0, "permdown_period": 10.0}, ValueError, "greater than"),
    ],
)
def test_tracker_options_name_the_rule_broken(options, error, match):
    with pytest.raises(error, match=match):
        TrackerOptions.from_options(options)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("pool_size", 0, "pool_size must be a positive int"),
        ("pool_size", 1.5, "pool_size must be a positive int"),
        ("fetchers", 0, "must be positive"),
        ("max_seconds", 0, "max_seconds > 0"),
        ("meta_limit", 0, "must be positive"),
    ],
)
def test_node_options_are_checked_on_creation(field, value, match):
    with pytest.raises(ValueError, match=match):
        NodeConfig(name="a", presence=REF, **{field: value})


def test_whole_numbers_given_as_floats_are_taken_as_ints_and_strings_refused():
    config = NodeConfig(name="a", fetchers=2.0, pubsub_hwm=1e5, max_restarts=3.0)
    assert (config.fetchers, config.pubsub_hwm, config.max_restarts) == (2, 100_000, 3)
    assert all(type(v) is int for v in (config.fetchers, config.pubsub_hwm, config.max_restarts))
    with pytest.raises(TypeError, match="fetchers must be a number"):
        NodeConfig(name="a", fetchers="2")


def test_tracker_options_made_directly_derive_down_period_too():
    assert TrackerOptions(broadcast_period=0.1).down_period == pytest.approx(2.0)
    with pytest.raises(TypeError, match="max_delta_sizes must be a sequence"):
        TrackerOptions(max_delta_sizes=5)


def test_an_actor_spec_survives_the_command_line_whole():
    config = NodeConfig(name="a", pool_size=2, cluster=ClusterConfig("tcp://127.0.0.1:7000"))
    spec = ActorSpec(
        name="shard.1",
        actor="whosthere.actors.shard:ShardActor",
        endpoint="ipc:///r/s.sock",
        runtime_dir="/r",
        supervisor="ipc:///r/supervisor.sock",
        parent_pid=1,
        node_name="a",
        index=1,
        config=config.started("/r"),
    )
    again = ActorSpec.from_json_dict(json.loads(json.dumps(spec.to_json_dict())))
    assert again == spec and again.node.runtime_dir == "/r" and again.index == 1
    bare = ActorSpec("echo", "m:C", "ipc:///e", "/r", "", 1, "test", options={"x": 1})
    assert ActorSpec.from_json_dict(json.loads(json.dumps(bare.to_json_dict()))) == bare
    with pytest.raises(TypeError, match="runs outside a node"):
        _ = bare.node


def test_a_cluster_without_listen_is_none_and_a_wildcard_is_refused():
    assert ClusterConfig.create(None, (), None, None) is None
    with pytest.raises(ValueError, match="cluster endpoints"):
        ClusterConfig.create("tcp://0.0.0.0:7000", (), "cookie", None)
    wild = ClusterConfig.create("tcp://0.0.0.0:7000", "tcp://127.0.0.1:1", "c", "tcp://10.0.0.5:0")
    assert wild == ClusterConfig("tcp://0.0.0.0:7000", "tcp://10.0.0.5:0", ("tcp://127.0.0.1:1",))


def test_the_topology_names_every_actor_once_in_start_order():
    alone = Topology(NodeConfig(name="a", presence=REF, pool_size=2, runtime_dir="/r"))
    assert [r.name for r in alone.roles()] == [
        "pubsub",
        "shard.0",
        "shard.1",
        "fetcher.0",
        "fetcher.1",
    ]
    assert alone.address == "ipc:///r/supervisor.sock" and alone.client == alone.cluster == ""
    assert alone.shards == ["ipc:///r/shard.0.sock", "ipc:///r/shard.1.sock"]
    assert alone.endpoints()[PUBSUB_PUB] == alone.pubsub_pub
    full = Topology(
        NodeConfig(
            name="a",
            presence=REF,
            presence_client=True,
            fetchers=1,
            cluster=ClusterConfig("tcp://127.0.0.1:7000"),
            runtime_dir="/r",
        )
    )
    names = [r.name for r in full.roles()]
    assert names == ["cluster", "pubsub", "shard.0", "fetcher.0", "client"]
    assert [r.index for r in full.roles() if is_shard(r.name) or is_fetcher(r.name)] == [0, 0]
    assert shard_name(3) == "shard.3" and fetcher_name(1) == "fetcher.1"
    assert not is_shard("fetcher.0") and not is_fetcher("shard.0")


class Local(Presence):
    pass


def test_a_user_class_is_named_for_other_processes_and_loaded_back():
    assert load_class(class_ref(Local)) is Local

    def make() -> type:
        class Inner(Presence):
            pass

        return Inner

    with pytest.raises(TypeError, match="inside a function"):
        class_ref(make())


def test_a_class_names_the_directory_its_module_came_from(tmp_path, monkeypatch):
    """A process without that directory on its path (an actor started elsewhere) finds it."""
    package = tmp_path / "rooms_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "live.py").write_text(
        "import whosthere\nclass LivePresence(whosthere.Presence):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from rooms_pkg.live import LivePresence

    try:
        ref = class_ref(LivePresence)
        assert ref == {
            "module": "rooms_pkg.live",
            "qualname": "LivePresence",
            "root": str(tmp_path),
        }
        assert import_root("rooms_pkg") == str(tmp_path)  # a package: its __init__.py
        assert import_root("sys") is None  # built in: no directory to name
        code = (
            "import json, sys\nfrom whosthere.loading import load_class\n"
            "assert sys.argv[2] not in sys.path\n"
            "print(load_class(json.loads(sys.argv[1])).__qualname__)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(ref), str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
        ).stdout
        assert out == "LivePresence\n"
    finally:
        for name in ("rooms_pkg", "rooms_pkg.live"):
            sys.modules.pop(name, None)


def test_a_class_of_a_script_is_loaded_without_running_the_script(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        "import whosthere\n"
        "class AppPresence(whosthere.Presence):\n    pass\n"
        "if __name__ == '__main__':\n    raise SystemExit('the script ran')\n"
    )
    try:
        cls = load_class({"module": "__main__", "qualname": "AppPresence", "path": str(script)})
        assert cls.__name__ == "AppPresence" and issubclass(cls, Presence)
    finally:
        sys.modules.pop("__whosthere_main__", None)


def test_an_error_from_the_wire_comes_back_as_its_own_class():
    known = from_wire("NotTracked", "no such presence", "Traceback ...")
    assert type(known) is NotTracked and str(known) == "no such presence"
    assert known.remote_traceback == "Traceback ..."
    unknown = from_wire("KeyError", "'x'")
    assert type(unknown) is ActorError and str(unknown) == "KeyError: 'x'"
    assert unknown.remote_traceback is None
    assert type(from_wire("MessagesLost", "m")) is ActorError  # not built from two strings
