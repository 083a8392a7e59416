"""The packed-list cache: replies kept by topic, all dropped past the byte cap.

With `entry_overhead=0` an entry costs its reply plus its (one-character) topic."""

from __future__ import annotations

from whosthere.tracker.list_cache import EMPTY, ListCache


def test_a_reply_is_kept_until_its_topic_is_dropped():
    c = ListCache(max_bytes=100, entry_overhead=0)
    assert c.get("a") is None
    c.put("a", b"aaaa")
    c.put("b", b"bb")
    assert c.get("a") == b"aaaa" and c.bytes == 8
    c.drop("a")
    assert c.get("a") is None and c.get("b") == b"bb" and c.bytes == 3
    c.drop("a")  # dropping what is not kept changes nothing
    assert c.bytes == 3


def test_replies_up_to_the_cap_are_kept_and_one_more_drops_all_others():
    c = ListCache(max_bytes=13, entry_overhead=0)
    c.put("a", b"aaaa")
    c.put("b", b"bbbb")
    c.put("c", b"cc")  # exactly at the cap
    assert [c.get(t) for t in "abc"] == [b"aaaa", b"bbbb", b"cc"] and c.bytes == 13
    c.put("d", b"d")
    assert [c.get(t) for t in "abcd"] == [None, None, None, b"d"] and c.bytes == 2


def test_a_reply_over_the_cap_alone_is_kept_until_the_next_put():
    c = ListCache(max_bytes=13, entry_overhead=0)
    c.put("a", b"a")
    c.put("big", b"x" * 20)
    assert c.get("a") is None and c.get("big") == b"x" * 20 and c.bytes == 23
    c.put("b", b"b")
    assert c.get("big") is None and c.get("b") == b"b" and c.bytes == 2


def test_putting_a_topic_again_counts_its_bytes_once():
    c = ListCache(max_bytes=12, entry_overhead=0)
    c.put("a", b"aaaa")
    c.put("a", b"AAAA")
    assert c.get("a") == b"AAAA" and c.bytes == 5
    c.put("b", b"bbbbbb")  # at the cap, not over it
    assert c.get("a") == b"AAAA" and c.get("b") == b"bbbbbb" and c.bytes == 12


def test_an_empty_reply_is_not_kept():
    # listing millions of topics that do not exist must not pin the shard's memory
    c = ListCache(max_bytes=1000)
    for i in range(100):
        c.put(f"nobody:{i}", EMPTY)
    assert len(c) == 0 and c.bytes == 0 and c.get("nobody:0") is None


def test_an_entry_counts_its_topic_and_overhead():
    c = ListCache(max_bytes=1000, entry_overhead=100)
    c.put("topic", b"xy")
    assert c.bytes == 2 + 5 + 100
    c.drop("topic")
    assert c.bytes == 0
