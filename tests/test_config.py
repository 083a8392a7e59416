"""The node's configuration and topology without processes: checked once, carried whole."""

from __future__ import annotations

import json

import pytest

from whosthere.config import ClusterConfig, NodeConfig
from whosthere.loading import class_ref, load_class
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
    ("field", "value"),
    [("pool_size", 0), ("pool_size", 1.5), ("fetchers", 0), ("max_seconds", 0), ("meta_limit", 0)],
)
def test_node_options_are_checked_on_creation(field, value):
    with pytest.raises(ValueError):
        NodeConfig(name="a", presence=REF, **{field: value})


def test_a_cluster_without_listen_is_none_and_a_wildcard_is_refused():
    assert ClusterConfig.create(None, (), None, None) is None
    with pytest.raises(ValueError, match="cluster endpoints"):
        ClusterConfig.create("tcp://0.0.0.0:7000", (), "cookie", None)
    wild = ClusterConfig.create("tcp://0.0.0.0:7000", "tcp://127.0.0.1:1", "c", "tcp://10.0.0.5:0")
    assert wild == ClusterConfig("tcp://0.0.0.0:7000", "tcp://10.0.0.5:0", ("tcp://127.0.0.1:1",))


def test_the_topology_names_every_actor_once_in_start_order():
    alone = Topology(NodeConfig(name="a", presence=REF, pool_size=2, runtime_dir="/r"))
    assert [r.name for r in alone.roles()] == [
        "pubsub", "shard.0", "shard.1", "fetcher.0", "fetcher.1",
    ]  # fmt: skip
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
