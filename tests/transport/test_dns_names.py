"""The `dns:` and `srv:` spellings of `peers=`: checked at `Node(...)`, resolved by the
system's resolver, our own addresses told apart. (Resolution against a real DNS server:
tests/test_discovery.py.)"""

from __future__ import annotations

import pytest

from whosthere.config import PEERS_ENV, ClusterConfig, NodeConfig
from whosthere.node import Node
from whosthere.transport.dns_names import (
    DnsName,
    ResolutionFailed,
    dns_name,
    resolve,
    tcp_endpoint,
)
from whosthere.transport.endpoints import own_endpoints

LISTEN = "tcp://127.0.0.1:7000"


@pytest.mark.parametrize(
    ("peer", "name"),
    [
        (
            "dns:whosthere.default.svc.cluster.local:7000",
            DnsName("dns", "whosthere.default.svc.cluster.local", 7000),
        ),
        ("dns:localhost:1", DnsName("dns", "localhost", 1)),
        ("dns:svc.example.:65535", DnsName("dns", "svc.example.", 65535)),
        ("srv:_whosthere._tcp.svc.example", DnsName("srv", "_whosthere._tcp.svc.example", 0)),
        ("tcp://10.0.0.1:7000", None),
    ],
)
def test_the_spellings_of_a_dns_peer(peer, name):
    assert dns_name(peer) == name
    if name is not None:
        assert str(name) == peer


@pytest.mark.parametrize(
    ("peer", "match"),
    [
        ("dns:svc.example", "dns:NAME:PORT wants"),
        ("dns::7000", "dns:NAME:PORT wants"),
        ("dns:svc.example:", "port must be 1-65535"),
        ("dns:svc.example:0", "port must be 1-65535"),
        ("dns:svc.example:70000", "port must be 1-65535"),
        ("dns:svc.example:x7", "port must be 1-65535"),
        ("dns:svc..example:7000", "dns:NAME:PORT wants"),
        ("dns:svc example:7000", "dns:NAME:PORT wants"),
        ("srv:", "srv:NAME wants a DNS name"),
        ("srv:a b", "srv:NAME wants a DNS name"),
        ("srv:_w._tcp.example:7000", "srv:NAME wants a DNS name"),
    ],
)
def test_a_malformed_dns_peer_is_a_clear_value_error_at_node(peer, match):
    with pytest.raises(ValueError, match=match):
        Node(listen=LISTEN, peers=[peer])


def test_dns_peers_and_the_discovery_period_reach_the_actors_whole():
    node = Node(
        listen=LISTEN, peers=["dns:svc.example:7000", "srv:_w._tcp.x"], discovery_period=0.3
    )
    config = NodeConfig.from_json(node.config.to_json())
    assert config.cluster == ClusterConfig(
        LISTEN, None, ("dns:svc.example:7000", "srv:_w._tcp.x"), 0.3
    )
    assert Node(listen=LISTEN).config.cluster.discovery_period == 5.0


@pytest.mark.parametrize(
    ("period", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
def test_the_discovery_period_is_checked(period, error):
    with pytest.raises(error, match="discovery_period"):
        Node(listen=LISTEN, discovery_period=period)
    with pytest.raises(error, match="discovery_period"):
        Node(discovery_period=period)  # alone: checked all the same


def test_peers_come_from_the_environment_when_none_are_given(monkeypatch):
    monkeypatch.setenv(PEERS_ENV, " dns:svc.example:7000, tcp://127.0.0.1:7001,,")
    assert Node(listen=LISTEN).peers == ("dns:svc.example:7000", "tcp://127.0.0.1:7001")
    assert Node(listen=LISTEN, peers=["srv:_w._tcp.x"]).peers == ("srv:_w._tcp.x",)
    assert Node().peers == ()  # a node alone has no peers, whatever the environment says
    monkeypatch.setenv(PEERS_ENV, "dns:svc.example")
    with pytest.raises(ValueError, match="dns:NAME:PORT wants"):
        Node(listen=LISTEN)


def test_a_name_resolves_through_etc_hosts_to_tcp_endpoints():
    found = resolve(DnsName("dns", "localhost", 7000))
    assert "tcp://127.0.0.1:7000" in found
    assert found == sorted(found) and all(a.startswith("tcp://") for a in found)


def test_a_name_that_does_not_resolve_says_why():
    with pytest.raises(ResolutionFailed, match="no-such-name.invalid"):
        resolve(DnsName("dns", "no-such-name.invalid", 7000))


def test_an_ipv6_address_is_spelt_in_brackets():
    assert tcp_endpoint("fd00::1", 7) == "tcp://[fd00::1]:7"
    assert tcp_endpoint("10.0.0.1", 7) == "tcp://10.0.0.1:7"


def test_a_node_bound_to_a_wildcard_is_every_local_address_at_its_port():
    local = ["127.0.0.1", "10.1.0.5", "fd00::0002", "02:fc:00:00:00:01"]
    own = own_endpoints("tcp://10.1.0.5:7000", "tcp://0.0.0.0:7000", local)
    assert own == {
        "tcp://10.1.0.5:7000",
        "tcp://0.0.0.0:7000",
        "tcp://127.0.0.1:7000",
        "tcp://[fd00::2]:7000",
    }
    assert own_endpoints("tcp://a.example:1", "tcp://10.1.0.5:7000", local) == {
        "tcp://a.example:1",
        "tcp://10.1.0.5:7000",
    }
