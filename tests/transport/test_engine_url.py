"""The Redis engine's URL: what is accepted, what status shows, the names on the server."""

from __future__ import annotations

import pytest

from whosthere.transport.engine_url import (
    broadcast_channel,
    check_engine,
    database,
    lease_key,
    node_channel,
    redacted,
)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://:secret@10.0.0.5:6380/3",
        "rediss://user:pw@redis.example:6379",
        "unix:///run/redis/redis.sock?db=2",
    ],
)
def test_urls_redis_py_reads_are_accepted(url):
    assert check_engine(url) == url


@pytest.mark.parametrize(
    "url",
    ["", "tcp://127.0.0.1:6379", "localhost:6379", "redis://", "unix://", "redis://h:1/x"],
)
def test_anything_else_is_a_value_error(url):
    with pytest.raises(ValueError, match="engine"):
        check_engine(url)


def test_the_password_never_shows():
    assert redacted("redis://:secret@h:1/0") == "redis://:***@h:1/0"
    assert redacted("rediss://u:secret@h:1") == "rediss://u:***@h:1"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
    with pytest.raises(ValueError) as caught:
        check_engine("tcp://:secret@h:1")
    assert "secret" not in str(caught.value)


def test_channels_carry_the_database_since_pub_sub_ignores_it():
    assert database("redis://h:1/3") == 3
    assert database("redis://h:1") == 0
    assert database("unix:///r.sock?db=5") == 5
    assert broadcast_channel(3) != broadcast_channel(0)
    assert node_channel(3, "a") != node_channel(0, "a") != node_channel(0, "b")
    assert lease_key("a") != lease_key("b")
