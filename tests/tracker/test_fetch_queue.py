"""The fetch ordering queue without processes: fetches answer in any order, time is an argument."""

from __future__ import annotations

from whosthere.tracker.fetch_queue import FetchQueue


def made(n: int) -> dict:
    """A diff as the shard made it."""
    return {"joins": {f"k{n}": {"metas": [{"n": n}]}}, "leaves": {}}


def fetched(n: int) -> dict:
    return {"joins": {f"k{n}": {"metas": [{"n": n}], "fetched": True}}, "leaves": {}}


def test_a_topic_is_released_in_the_order_made_though_fetches_answer_out_of_order():
    q = FetchQueue(timeout=5.0)
    ids = [q.add("a", made(n), now=0.0) for n in range(3)]
    assert q.fetched(ids[2], fetched(2)) == ("a", [])
    assert q.fetched(ids[1], fetched(1)) == ("a", [])
    assert q.in_flight == 1
    assert q.fetched(ids[0], fetched(0)) == ("a", [fetched(0), fetched(1), fetched(2)])
    assert q.in_flight == 0 and q.failures == 0
    assert q._topics == {}  # nothing kept for a topic with nothing in flight
    again = q.add("a", made(3), now=1.0)  # the emptied topic starts afresh
    assert q.fetched(again, fetched(3)) == ("a", [fetched(3)])


def test_a_slow_fetch_holds_back_its_own_topic_only():
    q = FetchQueue(timeout=5.0)
    slow = q.add("a", made(0), now=0.0)
    a1 = q.add("a", made(1), now=0.0)
    b0 = q.add("b", made(10), now=0.0)
    b1 = q.add("b", made(11), now=0.0)
    assert q.fetched(a1, fetched(1)) == ("a", [])
    assert q.fetched(b0, fetched(10)) == ("b", [fetched(10)])
    assert q.fetched(b1, fetched(11)) == ("b", [fetched(11)])
    assert q.in_flight == 1
    assert q.fetched(slow, fetched(0)) == ("a", [fetched(0), fetched(1)])


def test_a_failed_fetch_releases_its_diff_as_made():
    q = FetchQueue(timeout=5.0)
    a0 = q.add("a", made(0), now=0.0)
    a1 = q.add("a", made(1), now=0.0)
    assert q.fetched(a1, fetched(1)) == ("a", [])
    assert q.fetched(a0, None) == ("a", [made(0), fetched(1)])
    assert q.failures == 1 and q.in_flight == 0


def test_an_overdue_fetch_releases_its_diff_as_made_and_counts_as_a_failure():
    q = FetchQueue(timeout=5.0)
    a0 = q.add("a", made(0), now=0.0)
    a1 = q.add("a", made(1), now=1.0)
    q.add("b", made(10), now=2.0)
    assert q.fetched(a1, fetched(1)) == ("a", [])
    assert q.expire(now=4.999) == []
    assert q.failures == 0 and q.in_flight == 2
    assert q.expire(now=5.0) == [("a", [made(0), fetched(1)])]  # due at its deadline
    assert q.failures == 1 and q.in_flight == 1
    assert q.fetched(a0, fetched(0)) is None  # a late answer: its diff went out already
    assert q.failures == 1
    assert q.expire(now=7.5) == [("b", [made(10)])]
    assert q.failures == 2 and q.in_flight == 0


def test_overdue_fetches_expire_oldest_first_each_with_what_it_releases():
    q = FetchQueue(timeout=1.0)
    q.add("a", made(0), now=0.0)
    b0 = q.add("b", made(10), now=0.1)
    q.add("a", made(1), now=0.2)
    q.add("c", made(20), now=5.0)  # not overdue yet
    assert q.fetched(b0, fetched(10)) == ("b", [fetched(10)])
    assert q.expire(now=2.0) == [("a", [made(0)]), ("a", [made(1)])]
    assert q.failures == 2 and q.in_flight == 1


def test_an_unknown_id_is_ignored():
    q = FetchQueue(timeout=5.0)
    fid = q.add("a", made(0), now=0.0)
    assert q.fetched(fid + 1, fetched(0)) is None
    assert q.fetched(fid - 1, None) is None
    assert q.failures == 0 and q.in_flight == 1


def test_ids_are_unique_and_a_new_queue_starts_elsewhere():
    q, restarted = FetchQueue(timeout=5.0), FetchQueue(timeout=5.0)
    ids = [q.add(f"t{n % 7}", made(n), now=0.0) for n in range(1000)]
    assert len(set(ids)) == 1000
    assert not set(ids) & {restarted.add("t", made(0), now=0.0) for _ in range(1000)}


def test_a_restarted_fetcher_gets_its_fetches_again_once_then_they_go_out_as_made():
    q = FetchQueue(timeout=5.0)
    ids = [q.add("t", {"joins": {"k": i}, "leaves": {}}, now=0.0) for i in range(4)]
    mine = [fid for fid in ids if fid % 2 == 0]
    again, given_up = q.lost(0, 2, now=1.0)
    assert [fid for fid, _, _ in again] == mine and given_up == []
    assert all(topic == "t" for _, topic, _ in again)
    again, given_up = q.lost(0, 2, now=2.0)  # lost a second time: released unfetched
    assert again == []
    assert q.failures == len(mine) and q.in_flight == len(ids) - len(mine)
    released = [d for _, diffs in given_up for d in diffs]
    for fid in ids:  # the others come back: everything goes out in the order made
        if fid % 2:
            got = q.fetched(fid, {"joins": {"fetched": True}, "leaves": {}})
            if got is not None:
                released += got[1]
    assert len(released) == 4
