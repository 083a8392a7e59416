"""The packed-list cache: replies kept by topic, all dropped past the byte cap."""

from __future__ import annotations

from whosthere.tracker.list_cache import ListCache


def test_a_reply_is_kept_until_its_topic_is_dropped():
    c = ListCache(max_bytes=100)
    assert c.get("a") is None
    c.put("a", b"aaaa")
    c.put("b", b"bb")
    assert c.get("a") == b"aaaa" and c.bytes == 6
    c.drop("a")
    assert c.get("a") is None and c.get("b") == b"bb" and c.bytes == 2
    c.drop("a")  # dropping what is not kept changes nothing
    assert c.bytes == 2


def test_replies_up_to_the_cap_are_kept_and_one_more_drops_all_others():
    c = ListCache(max_bytes=10)
    c.put("a", b"aaaa")
    c.put("b", b"bbbb")
    c.put("c", b"cc")  # exactly at the cap
    assert [c.get(t) for t in "abc"] == [b"aaaa", b"bbbb", b"cc"] and c.bytes == 10
    c.put("d", b"d")
    assert [c.get(t) for t in "abcd"] == [None, None, None, b"d"] and c.bytes == 1


def test_a_reply_over_the_cap_alone_is_kept_until_the_next_put():
    c = ListCache(max_bytes=10)
    c.put("a", b"a")
    c.put("big", b"x" * 20)
    assert c.get("a") is None and c.get("big") == b"x" * 20 and c.bytes == 20
    c.put("b", b"b")
    assert c.get("big") is None and c.get("b") == b"b" and c.bytes == 1


def test_putting_a_topic_again_counts_its_bytes_once():
    c = ListCache(max_bytes=10)
    c.put("a", b"aaaa")
    c.put("a", b"AAAA")
    assert c.get("a") == b"AAAA" and c.bytes == 4
    c.put("b", b"bbbbbb")  # at the cap, not over it
    assert c.get("a") == b"AAAA" and c.get("b") == b"bbbbbb" and c.bytes == 10
