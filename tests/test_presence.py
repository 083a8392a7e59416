"""The Presence API on one node (Phoenix's pool_test, shard_test and presence_test, and more)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import whosthere
from tests.support.diffs import expect_diff, expect_quiet, next_diff
from tests.support.processes import sleeper
from tests.support.waiting import wait_until
from whosthere.tracker.pool import shard_for

ME = os.getpid()


@pytest.fixture(scope="module")
def node():
    with whosthere.Node(pool_size=2) as node:
        yield node


@pytest.fixture
def presence(node):
    return node.presence


@pytest.fixture
def topic(request):
    """A topic of this test's own, so tests sharing the node do not see each other."""
    return f"t:{request.node.name}"


def refs(entry):
    return [m["phx_ref"] for m in entry["metas"]]


# -- track / list ---------------------------------------------------------------------------


@pytest.mark.parametrize("pool_size", [1, 2, 8])
def test_track_returns_the_ref_listed_in_the_meta(pool_size):
    with whosthere.Node(pool_size=pool_size) as node:
        presence = node.presence
        for i in range(20):
            ref = presence.track(ME, f"room:{i}", "me", {"name": "me"})
            assert isinstance(ref, str) and len(ref) == 16
            assert presence.list(f"room:{i}") == {"me": {"metas": [{"name": "me", "phx_ref": ref}]}}
        assert node.status()["presences"] == 20


def test_many_topics_across_shards_then_untrack_each(presence, owner):
    topics = [f"many:{i}" for i in range(100)]
    assert {shard_for(t, 2) for t in topics} == {0, 1}
    for t in topics:
        presence.track(owner.pid, t, "k", {})
    for t in topics:
        assert list(presence.list(t)) == ["k"]
    for t in topics:
        presence.untrack(owner.pid, t, "k")
    assert all(presence.list(t) == {} for t in topics)


def test_untrack_pid_removes_everything_in_every_shard(presence, owner):
    topics = [f"all:{i}" for i in range(30)]
    for t in topics:
        presence.track(owner.pid, t, "a", {})
        presence.track(owner.pid, t, "b", {})
    presence.untrack(owner.pid)
    assert all(presence.list(t) == {} for t in topics)
    presence.untrack(owner.pid)  # again: a no-op


def test_duplicate_track_is_refused_other_topic_or_key_is_fine(presence, owner, topic):
    presence.track(owner.pid, topic, "k", {"n": 1})
    with pytest.raises(
        whosthere.AlreadyTracked,
        match=rf"^pid {owner.pid} is already tracked on topic '{topic}' as 'k'$",
    ):
        presence.track(owner.pid, topic, "k", {"n": 2})
    presence.track(owner.pid, topic, "k2", {})
    presence.track(owner.pid, topic + ":other", "k", {})
    assert presence.list(topic)["k"]["metas"][0]["n"] == 1


def test_an_owners_refusals_say_owner_n_of_pid_p(presence, topic):
    with presence.owner() as owner:
        said = rf"owner {owner.id >> 32} of pid {os.getpid()}"
        presence.track(owner, topic, "k", {})
        with pytest.raises(
            whosthere.AlreadyTracked, match=rf"^{said} is already tracked on topic '{topic}'"
        ):
            presence.track(owner, topic, "k", {})
        with pytest.raises(whosthere.NotTracked, match=rf"^{said} is not tracked on topic"):
            presence.update(owner, topic, "nobody", {})
        with pytest.raises(whosthere.NotTracked, match=rf"^{said} is not tracked on topic"):
            presence.update(owner, topic, "nobody", lambda meta: meta)  # read, then write
        [refused] = presence.track_many([(owner, topic, "k", {})], return_exceptions=True)
        assert isinstance(refused, whosthere.AlreadyTracked) and str(refused).startswith(said)
        assert repr(owner) == f"<Owner: {said}>"


def test_untracking_what_is_not_tracked_is_a_no_op(presence, topic):
    assert presence.untrack(ME, topic, "nobody") is None


def test_list_follows_every_change_of_the_topic(presence, topic):
    """The shard keeps a topic's packed list until the topic changes: each change shows."""
    a, b = sleeper(), sleeper()
    try:
        assert presence.list(topic) == {}
        ref_a = presence.track(a.pid, topic, "a", {"v": 1})
        assert presence.list(topic) == {"a": {"metas": [{"v": 1, "phx_ref": ref_a}]}}
        assert presence.list(topic) == presence.list(topic)  # served again, unchanged
        ref_b = presence.track(b.pid, topic, "a", {"v": 2})
        assert refs(presence.list(topic)["a"]) == [ref_a, ref_b]
        ref_a2 = presence.update(a.pid, topic, "a", {"v": 3})
        first = presence.list(topic)["a"]["metas"][0]
        assert first == {"v": 3, "phx_ref": ref_a2, "phx_ref_prev": ref_a}
        b.kill()
        wait_until(lambda: refs(presence.list(topic)["a"]) == [ref_a2])
        presence.untrack(a.pid, topic, "a")
        assert presence.list(topic) == {}
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_keys_are_strings(presence, owner, topic):
    presence.track(owner.pid, topic, 1, {})
    assert list(presence.list(topic)) == ["1"]
    assert presence.get_by_key(topic, 1) == presence.get_by_key(topic, "1")
    with pytest.raises(whosthere.AlreadyTracked):
        presence.track(owner.pid, topic, "1", {})


def test_several_devices_on_one_key(presence, topic):
    owners = [sleeper() for _ in range(3)]
    try:
        for i, p in enumerate(owners):
            presence.track(p.pid, topic, "user", {"device": i})
        entry = presence.get_by_key(topic, "user")
        assert entry is not None
        assert sorted(m["device"] for m in entry["metas"]) == [0, 1, 2]
        presence.untrack(owners[1].pid, topic, "user")
        assert sorted(m["device"] for m in presence.list(topic)["user"]["metas"]) == [0, 2]
    finally:
        for p in owners:
            p.kill()
            p.wait()


def test_get_by_key_of_nothing_is_none(presence, topic):
    assert presence.get_by_key(topic, "nobody") is None
    assert presence.get_by_key("no:such:topic", "k") is None
    assert presence.list("no:such:topic") == {}


def test_channel_form(presence, owner, topic):
    channel = whosthere.Channel(owner.pid, topic)
    with presence.subscribe(topic) as sub:
        ref = presence.track(channel, "u1", {"a": 1})
        expect_diff(sub, joins={"u1": 1})
        assert refs(presence.list(channel)["u1"]) == [ref]
        new = presence.update(channel, "u1", {"a": 2})
        expect_diff(sub, joins={"u1": 1}, leaves={"u1": 1})
        assert presence.get_by_key(channel, "u1")["metas"][0]["phx_ref"] == new
        presence.untrack(channel, "u1")
        expect_diff(sub, leaves={"u1": 1})


# -- update --------------------------------------------------------------------------------


def test_update_with_a_dict_replaces_the_meta_as_one_diff(presence, owner, topic):
    old = presence.track(owner.pid, topic, "u", {"status": "online", "x": 1})
    with presence.subscribe(topic) as sub:
        new = presence.update(owner.pid, topic, "u", {"status": "away"})
        diff = next_diff(sub)
    assert diff == {
        "joins": {"u": {"metas": [{"status": "away", "phx_ref": new, "phx_ref_prev": old}]}},
        "leaves": {"u": {"metas": [{"status": "online", "x": 1, "phx_ref": old}]}},
    }
    assert presence.list(topic)["u"]["metas"] == [
        {"status": "away", "phx_ref": new, "phx_ref_prev": old}
    ]


def test_update_with_a_callable_sees_the_current_meta(presence, owner, topic):
    old = presence.track(owner.pid, topic, "u", {"count": 1})
    seen = []

    def bump(meta):
        seen.append(dict(meta))
        return {"count": meta["count"] + 1, "phx_ref": "ignored"}

    new = presence.update(owner.pid, topic, "u", bump)
    assert seen == [{"count": 1, "phx_ref": old}]
    assert presence.list(topic)["u"]["metas"] == [{"count": 2, "phx_ref": new, "phx_ref_prev": old}]


def test_updates_by_callable_racing_from_threads_lose_nothing(node, owner, topic):
    presence = node.presence
    presence.track(owner.pid, topic, "counter", {"n": 0})

    def add_many():
        for _ in range(25):
            presence.update(owner.pid, topic, "counter", lambda m: {"n": m["n"] + 1})

    threads = [threading.Thread(target=add_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert presence.list(topic)["counter"]["metas"][0]["n"] == 100


def test_update_of_what_is_not_tracked_raises(presence, topic):
    with pytest.raises(whosthere.NotTracked, match=rf"^pid {ME} is not tracked on topic"):
        presence.update(ME, topic, "nobody", {})
    with pytest.raises(whosthere.NotTracked):
        presence.update(ME, topic, "nobody", lambda m: m)


# -- diffs -----------------------------------------------------------------------------------


def test_join_and_leave_diffs_as_in_phoenix(presence, topic):
    owner1, owner2 = sleeper(), sleeper()
    try:
        with presence.subscribe(topic) as sub:
            ref = presence.track(owner1.pid, topic, "u1", {"name": "u1"})
            assert next_diff(sub) == {
                "joins": {"u1": {"metas": [{"name": "u1", "phx_ref": ref}]}},
                "leaves": {},
            }
            presence.track(owner2.pid, topic, "u2", {"name": "u2"})
            expect_diff(sub, joins={"u2": 1})
            owner1.kill()
            assert next_diff(sub) == {
                "joins": {},
                "leaves": {"u1": {"metas": [{"name": "u1", "phx_ref": ref}]}},
            }
            assert list(presence.list(topic)) == ["u2"]
            presence.untrack(owner2.pid, topic, "u2")
            expect_diff(sub, leaves={"u2": 1})
            expect_quiet(sub)
    finally:
        for p in (owner1, owner2):
            p.kill()
            p.wait()


def test_a_subscriber_of_room_1_never_sees_room_10(presence, owner):
    with presence.subscribe("room:1") as sub1, presence.subscribe("room:10") as sub10:
        presence.track(owner.pid, "room:10", "u", {})
        presence.track(owner.pid, "room:1", "u", {})
        expect_diff(sub1, joins={"u": 1})
        expect_diff(sub10, joins={"u": 1})
        expect_quiet(sub1)
        expect_quiet(sub10)
    presence.untrack(owner.pid)


# -- crash-driven leaves -------------------------------------------------------------------

EXITS = {
    "sigkill": lambda p: p.kill(),
    "sigterm": lambda p: p.terminate(),
    "normal exit": lambda p: p.stdin.close(),
    "uncaught exception": lambda p: (p.stdin.write(b"raise\n"), p.stdin.close()),
}
OWNER = (
    "import sys\n"
    "line = sys.stdin.readline()\n"
    "if line.strip() == 'raise':\n"
    "    raise RuntimeError('owner crashed')\n"
)


@pytest.mark.parametrize("how", list(EXITS))
def test_an_owner_exit_makes_each_of_its_presences_leave_once(presence, how):
    topics = [f"exit:{how}:{i}" for i in range(6)]
    assert len({shard_for(t, 2) for t in topics}) == 2, "spread over both shards"
    with subprocess.Popen(
        [sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as proc:
        subs = [presence.subscribe(t) for t in topics]
        try:
            for t in topics:
                presence.track(proc.pid, t, "a", {})
                presence.track(proc.pid, t, "b", {})
            for sub in subs:
                expect_diff(sub, joins={"a": 1})
                expect_diff(sub, joins={"b": 1})
            EXITS[how](proc)
            for sub in subs:
                expect_diff(sub, leaves={"a": 1, "b": 1})
            for sub in subs:
                expect_quiet(sub, 0.1)
            assert all(presence.list(t) == {} for t in topics)
        finally:
            for sub in subs:
                sub.close()


def test_a_worker_tracking_itself_leaves_when_killed(node, topic):
    with node.presence.subscribe(topic) as sub:
        worker = node.spawn(_track_self_and_wait, (topic,))
        diff = expect_diff(sub, joins={"worker": 1})
        assert diff["joins"]["worker"]["metas"][0]["pid"] == worker.pid
        os.kill(worker.pid, signal.SIGKILL)
        expect_diff(sub, leaves={"worker": 1})
        worker.join(5)


def _track_self_and_wait(topic: str) -> None:
    presence = whosthere.Presence.connect()
    presence.track(os.getpid(), topic, "worker", {"pid": os.getpid()})
    signal.pause()


def test_tracking_a_dead_pid_joins_then_leaves(presence, topic):
    proc = sleeper()
    proc.kill()
    proc.wait()
    with presence.subscribe(topic) as sub:
        ref = presence.track(proc.pid, topic, "ghost", {})
        expect_diff(sub, joins={"ghost": 1})
        diff = expect_diff(sub, leaves={"ghost": 1})
        assert diff["leaves"]["ghost"]["metas"][0]["phx_ref"] == ref
    assert presence.list(topic) == {}


def test_untrack_unlinks_and_a_later_exit_changes_nothing(node, owner, topic):
    presence = node.presence
    before = node.status()["links"]["processes"]
    presence.track(owner.pid, topic, "a", {})
    presence.track(owner.pid, topic + ":2", "a", {})
    wait_until(lambda: node.status()["links"]["processes"] >= before + 1, what="linked")
    presence.untrack(owner.pid, topic, "a")
    presence.untrack(owner.pid, topic + ":2", "a")
    wait_until(lambda: node.status()["links"]["processes"] == before, what="unlinked")
    with presence.subscribe(topic) as sub:
        owner.kill()
        owner.wait()
        expect_quiet(sub)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "error", "match"),
    [
        (["not", "a", "dict"], whosthere.InvalidMeta, r"^meta must be a dict, got list$"),
        ({1: "int key"}, whosthere.InvalidMeta, r"^meta keys must be str, got int 1$"),
        ({"x": object()}, whosthere.InvalidMeta, r"^meta cannot be packed with msgpack"),
        (
            {"x": "y" * 70_000},
            whosthere.InvalidMeta,
            r"^meta is 70\d\d\d bytes packed, over the 65536-byte limit$",
        ),
    ],
)
def test_bad_metas_get_a_typed_error_and_lose_nothing(presence, owner, topic, meta, error, match):
    presence.track(owner.pid, topic, "keep", {"ok": True})
    with pytest.raises(error, match=match):
        presence.track(owner.pid, topic, "bad", meta)
    with pytest.raises(error, match=match):
        presence.update(owner.pid, topic, "keep", meta)
    assert presence.list(topic) == {
        "keep": {
            "metas": [{"ok": True, "phx_ref": presence.list(topic)["keep"]["metas"][0]["phx_ref"]}]
        }
    }


def test_wrong_types_get_clear_errors(presence, topic):
    with pytest.raises(
        TypeError, match=r"^pid must be an OS pid \(a positive int\) or an Owner, got 'x'$"
    ):
        presence.track("x", topic, "k", {})
    with pytest.raises(TypeError, match=r"^topic must be a str, got int$"):
        presence.track(ME, 5, "k", {})
    with pytest.raises(TypeError, match=r"^key must be a str or an int, got float$"):
        presence.track(ME, topic, 1.5, {})
    with pytest.raises(TypeError, match=r"^track takes \(pid, topic, \.\.\.\) or \(channel"):
        presence.track(ME, topic)


def test_malformed_requests_to_a_shard_are_refused_and_it_serves_on(node, presence, owner, topic):
    from whosthere.transport.messages import Track
    from whosthere.transport.sockets import Dealer

    presence.track(owner.pid, topic, "keep", {})
    shard = Dealer(presence.info.endpoints[f"shard.{shard_for(topic, 2)}"])
    try:
        with pytest.raises(whosthere.InvalidMeta, match="meta is not msgpack"):
            shard.call(Track(owner.pid, None, topic, "bad", b"\xc1"))
        with pytest.raises(whosthere.InvalidMeta, match="map with str keys"):
            shard.call(Track(owner.pid, None, topic, "bad", b"\x93\x01\x02\x03"))
        with pytest.raises(whosthere.InvalidMeta, match="must not carry phx_ref"):
            shard.call(Track(owner.pid, None, topic, "bad", b"\x81\xa7phx_ref\x01"))
    finally:
        shard.close()
    assert list(presence.list(topic)) == ["keep"]
    assert all(a["restarts"] == 0 for a in node.status()["actors"])


# -- track_many ------------------------------------------------------------------------------


def test_track_many_tracks_across_shards_with_one_diff_per_topic(presence, owner):
    topics = [f"batch:{i}" for i in range(40)]
    assert {shard_for(t, 2) for t in topics} == {0, 1}
    with presence.subscribe(topics[0]) as sub:
        entries = [(owner.pid, t, k, {"n": k}) for t in topics for k in ("a", "b", 7)]
        refs_out = presence.track_many(entries)
        assert len(refs_out) == len(entries) == len(set(refs_out))
        diff = expect_diff(sub, joins={"a": 1, "b": 1, "7": 1})  # one diff for the batch
        expect_quiet(sub)
    for (_, t, k, meta), ref in zip(entries, refs_out, strict=True):
        assert presence.get_by_key(t, k) == {"metas": [{**meta, "phx_ref": ref}]}
    assert diff["joins"]["7"]["metas"] == [{"n": 7, "phx_ref": refs_out[2]}]
    presence.untrack(owner.pid)
    assert presence.track_many([]) == []


def test_track_many_refusals_do_not_stop_the_other_entries(presence, owner, topic):
    presence.track(owner.pid, topic, "dup", {})
    entries = [(owner.pid, topic, k, {}) for k in ("x", "dup", "y")]
    with pytest.raises(whosthere.AlreadyTracked, match="already tracked on topic"):
        presence.track_many(entries)
    assert sorted(presence.list(topic)) == ["dup", "x", "y"]
    presence.untrack(owner.pid, topic, "x")
    out = presence.track_many(entries, return_exceptions=True)
    assert isinstance(out[0], str) and isinstance(out[1], whosthere.AlreadyTracked)
    assert isinstance(out[2], whosthere.AlreadyTracked)
    assert presence.list(topic)["x"]["metas"][0]["phx_ref"] == out[0]


def test_track_many_takes_a_generator_that_reuses_one_meta(presence, owner, topic):
    def entries():
        meta = {}
        for i in range(5):
            meta["n"] = i  # the same dict, changed each time
            yield (owner.pid, topic, f"k{i}", meta)

    presence.track_many(entries())
    assert {k: e["metas"][0]["n"] for k, e in presence.list(topic).items()} == {
        f"k{i}": i for i in range(5)
    }


def test_track_many_cuts_batches_by_bytes(presence, owner, topic):
    big = {"blob": "x" * 60_000}  # 100 x 60 KB: more than one 4 MiB frame
    refs_out = presence.track_many([(owner.pid, topic, f"k{i}", big) for i in range(100)])
    assert len(set(refs_out)) == 100 and len(presence.list(topic)) == 100


def test_track_many_checks_every_entry_before_sending_any(presence, owner, topic):
    good = (owner.pid, topic, "good", {})
    with pytest.raises(TypeError, match="^key must be a str or an int"):
        presence.track_many([good, (owner.pid, topic, 1.5, {})])
    with pytest.raises(whosthere.InvalidMeta, match="meta must be a dict"):
        presence.track_many([good, (owner.pid, topic, "k", [])])
    with pytest.raises(TypeError, match="^pid must be an OS pid"):
        presence.track_many([good, (0, topic, "k", {})])
    assert presence.list(topic) == {}


def test_malformed_track_many_entries_are_refused_one_by_one(presence, owner, topic):
    from whosthere.transport import codec
    from whosthere.transport.messages import TrackMany
    from whosthere.transport.sockets import Dealer
    from whosthere.watch import start_time

    st = start_time(owner.pid)
    shard = Dealer(presence.info.endpoints[f"shard.{shard_for(topic, 2)}"])
    ok = codec.pack_meta({})
    try:
        out = shard.call(
            TrackMany(
                [
                    [owner.pid, st, topic, "a", ok],
                    [owner.pid, st, topic, 5, ok],  # key not a str
                    "garbage",
                    [owner.pid, st, topic, "c", b"\xc1"],  # meta not msgpack
                    [-1, st, topic, "d", ok],
                    [owner.pid, st, topic, "e", ok],
                ]
            )
        )
    finally:
        shard.close()
    assert isinstance(out[0], str) and isinstance(out[5], str)
    assert [o[0] for o in out[1:5]] == [
        "MalformedFrame",
        "MalformedFrame",
        "InvalidMeta",
        "MalformedFrame",
    ]
    assert sorted(presence.list(topic)) == ["a", "e"]


# -- clients ---------------------------------------------------------------------------------


def test_one_presence_shared_by_eight_threads(presence):
    owners = [sleeper() for _ in range(8)]
    errors = []

    def work(i):
        try:
            p = owners[i].pid
            for j in range(50):
                presence.track(p, f"threads:{j % 5}", f"k{i}-{j}", {"i": i})
            for j in range(0, 50, 2):
                presence.untrack(p, f"threads:{j % 5}", f"k{i}-{j}")
        except Exception as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        total = sum(len(presence.list(f"threads:{j}")) for j in range(5))
        assert total == 8 * 25
    finally:
        for p in owners:
            p.kill()
            p.wait()


def test_connect_from_another_process(node, owner, topic):
    code = (
        "import sys, whosthere\n"
        "p = whosthere.Presence.connect()\n"
        f"p.track({owner.pid}, {topic!r}, 'remote', {{'from': 'child'}})\n"
        f"print(list(p.list({topic!r})))\n"
    )
    env = {**os.environ, "WHOSTHERE_ADDRESS": node.address}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.strip() == "['remote']"
    assert node.presence.list(topic)["remote"]["metas"][0]["from"] == "child"


def test_connect_without_an_address_is_node_unavailable(monkeypatch):
    monkeypatch.delenv("WHOSTHERE_ADDRESS", raising=False)
    with pytest.raises(whosthere.NodeUnavailable, match="WHOSTHERE_ADDRESS is not set"):
        whosthere.Presence.connect()


def test_a_pid_tracked_again_with_another_start_time_replaces_the_old_process(node, owner, topic):
    """The linked process is gone if its pid now names another process (pid reuse)."""
    from whosthere.transport import codec
    from whosthere.transport.messages import Track
    from whosthere.transport.sockets import Dealer
    from whosthere.watch import start_time

    presence = node.presence
    real = start_time(owner.pid)
    assert real is not None
    shard = Dealer(presence.info.endpoints[f"shard.{shard_for(topic, 2)}"])
    try:
        with presence.subscribe(topic) as sub:
            shard.call(Track(owner.pid, real - 100, topic, "old", codec.pack_meta({})))
            expect_diff(sub, joins={"old": 1})
            presence.track(owner.pid, topic, "new", {})
            # the leave and the join: one diff if the shard saw the reuse at the track, two
            # if the supervisor told it of the old process's exit first
            diffs = [next_diff(sub)]
            if not (diffs[0]["joins"] and diffs[0]["leaves"]):
                diffs.append(next_diff(sub))
            joined = [k for d in diffs for k in d["joins"]]
            left = [k for d in diffs for k in d["leaves"]]
            assert (joined, left) == (["new"], ["old"])
            assert list(presence.list(topic)) == ["new"]
            owner.kill()
            expect_diff(sub, leaves={"new": 1})
    finally:
        shard.close()
