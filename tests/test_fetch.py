"""fetch, init and handle_metas: the user's callbacks in the node's processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import pytest

import whosthere
from tests.support.diffs import expect_diff, expect_quiet, next_diff
from tests.support.nodes import alive
from tests.support.presences import (
    AsyncCallbacksPresence,
    BrokenPresence,
    ExtraPresence,
    HandleMetasWithoutInit,
    MetasPresence,
    SlowPresence,
)
from tests.support.processes import sleeper


def test_default_fetch_is_the_identity():
    presences = {"u": {"metas": [{"phx_ref": "x"}]}}
    assert whosthere.Presence.fetch(None, "t", presences) is presences  # type: ignore[arg-type]


def test_list_get_by_key_and_diffs_go_through_fetch(owner):
    with whosthere.Node(presence=ExtraPresence) as node:
        presence = node.presence
        assert isinstance(presence, ExtraPresence)
        assert presence.list("lobby") == {}
        with presence.subscribe("lobby") as sub:
            ref = presence.track(owner.pid, "lobby", "u1", {"name": "u1"})
            meta = {"name": "u1", "phx_ref": ref}
            assert next_diff(sub) == {
                "joins": {"u1": {"metas": [meta], "extra": "extra"}},
                "leaves": {},
            }
            assert presence.list("lobby") == {"u1": {"metas": [meta], "extra": "extra"}}
            assert presence.get_by_key("lobby", "u1") == {"metas": [meta], "extra": "extra"}
            assert presence.get_by_key("lobby", "u2") is None
            owner.kill()
            assert next_diff(sub) == {
                "joins": {},
                "leaves": {"u1": {"metas": [meta], "extra": "extra"}},
            }


def test_diffs_keep_the_order_of_each_topic_though_fetches_finish_out_of_order():
    owners = [sleeper() for _ in range(2)]
    topics = ["order:a", "order:b"]
    try:
        with whosthere.Node(presence=SlowPresence, fetchers=3) as node:
            presence = node.presence
            subs = {t: presence.subscribe(t) for t in topics}
            for i in range(100):  # 200 operations per topic, interleaved
                for t, o in zip(topics, owners, strict=True):
                    presence.track(o.pid, t, "k", {"i": i})
                for t, o in zip(topics, owners, strict=True):
                    presence.untrack(o.pid, t, "k")
            for sub in subs.values():
                for i in range(100):
                    diff = expect_diff(sub, joins={"k": 1})
                    assert diff["joins"]["k"]["metas"][0]["i"] == i
                    assert diff["joins"]["k"]["fetched"] is True
                    expect_diff(sub, leaves={"k": 1})
                expect_quiet(sub)
                sub.close()
    finally:
        for o in owners:
            o.kill()
            o.wait()


def test_a_fetch_that_raises_is_logged_and_the_diff_still_delivered(capfd, owner):
    with whosthere.Node(presence=BrokenPresence) as node:
        presence = node.presence
        with presence.subscribe("boom:1") as boom, presence.subscribe("fine") as fine:
            presence.track(owner.pid, "boom:1", "u", {})
            diff = expect_diff(boom, joins={"u": 1})
            assert "fetched" not in diff["joins"]["u"]  # unfetched
            presence.track(owner.pid, "fine", "u", {})
            assert expect_diff(fine, joins={"u": 1})["joins"]["u"]["fetched"] is True
        assert all(a["restarts"] == 0 for a in node.status()["actors"])
    err = capfd.readouterr().err
    assert "fetch raised on topic 'boom:1'" in err
    assert "RuntimeError: fetch exploded" in err


def test_a_fetch_that_hangs_is_published_unfetched_after_the_timeout(owner):
    with whosthere.Node(presence=BrokenPresence, fetch_timeout=0.5) as node:
        presence = node.presence
        with presence.subscribe("hang:1") as sub:
            presence.track(owner.pid, "hang:1", "u", {})
            diff = expect_diff(sub, joins={"u": 1}, timeout=2.5)
            assert "fetched" not in diff["joins"]["u"]
        stats = next(a for a in node.status()["actors"] if a["name"] == "shard.0")["stats"]
        assert stats["fetch_failures"] == 1


def test_fetchers_pids_are_the_fetcher_processes():
    with whosthere.Node(fetchers=3) as node:
        pids = node.presence.fetchers_pids()
        assert len(pids) == 3
        assert alive(set(pids)) == set(pids)


def test_handle_metas_builds_per_topic_presences(owner):
    others = [sleeper() for _ in range(2)]
    try:
        with whosthere.Node(presence=MetasPresence) as node:
            presence = node.presence
            with presence.subscribe("metas:room") as reports:

                def report():
                    msg = reports.get(timeout=5)
                    assert msg is not None and msg.event == "handle_metas"
                    return msg.payload

                r1 = presence.track(owner.pid, "room", "u1", {"n": 1})
                assert report() == {"presences": {"u1": [{"n": 1, "phx_ref": r1}]}, "calls": 1}
                r2 = presence.track(others[0].pid, "room", "u1", {"n": 2})
                presence.track(others[1].pid, "room", "u2", {"n": 3})
                report()
                got = report()
                assert [m["phx_ref"] for m in got["presences"]["u1"]] == [r1, r2]
                assert list(got["presences"]) == ["u1", "u2"]
                presence.untrack(owner.pid, "room", "u1")
                assert [m["phx_ref"] for m in report()["presences"]["u1"]] == [r2]
                presence.untrack(others[0].pid)
                presence.untrack(others[1].pid)
                report()
                assert report() == {"presences": {}, "calls": 6}
    finally:
        for p in others:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_handle_metas_sees_every_change_made_right_after_start(owner):
    """`start()` returns once the client actor holds every shard's state: the changes made
    at once after it each reach `handle_metas`, as in Phoenix (20 fresh nodes in a row)."""
    for run in range(20):
        with whosthere.Node(presence=MetasPresence, pool_size=2) as node:
            presence = node.presence
            with presence.subscribe("room") as diffs, presence.subscribe("metas:room") as reports:
                presence.track(owner.pid, "room", "u1", {})
                expect_diff(diffs, joins={"u1": 1})
                presence.track(owner.pid, "room", "u2", {})
                expect_diff(diffs, joins={"u2": 1})
                presence.untrack(owner.pid, "room", "u1")
                expect_diff(diffs, leaves={"u1": 1})
                presence.untrack(owner.pid, "room", "u2")
                expect_diff(diffs, leaves={"u2": 1})
                seen = []
                for _ in range(4):
                    msg = reports.get(timeout=5)
                    assert msg is not None, f"run {run}: handle_metas calls seen: {seen}"
                    seen.append(sorted(msg.payload["presences"]))
                assert seen == [["u1"], ["u1", "u2"], ["u2"], []], f"run {run}"


def test_handle_metas_that_raises_is_logged_and_the_client_lives_on(capfd, owner):
    with whosthere.Node(presence=MetasPresence) as node:
        presence = node.presence
        with presence.subscribe("metas:after") as reports:
            presence.track(owner.pid, "crash:1", "u", {})
            presence.track(owner.pid, "after", "u", {})
            msg = reports.get(timeout=5)
            assert msg is not None and msg.payload["calls"] == 1  # the crash kept no state
        assert all(a["restarts"] == 0 for a in node.status()["actors"])
    assert "ValueError: handle_metas exploded" in capfd.readouterr().err


def test_handle_metas_without_init_starts_from_an_empty_state(owner):
    with (
        whosthere.Node(presence=HandleMetasWithoutInit) as node,
        node.presence.subscribe("metas:room") as reports,
    ):
        node.presence.track(owner.pid, "room", "u", {})
        msg = reports.get(timeout=5)
        assert msg is not None and msg.payload["state"] == {}


def test_a_presence_class_must_be_importable_by_the_node():
    class Local(whosthere.Presence):
        pass

    with pytest.raises(TypeError, match="defined inside a function"):
        whosthere.Node(presence=Local)
    with pytest.raises(TypeError, match="must be a whosthere.Presence subclass"):
        whosthere.Node(presence=dict)  # type: ignore[arg-type]


def test_a_presence_defined_in_a_script_works(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent("""
        import os, whosthere

        class AppPresence(whosthere.Presence):
            def fetch(self, topic, presences):
                return {k: {**v, "app": True} for k, v in presences.items()}

        if __name__ == "__main__":
            with whosthere.Node(presence=AppPresence) as node:
                with node.presence.subscribe("t") as sub:
                    node.presence.track(os.getpid(), "t", "me", {})
                    print(sub.get(timeout=10).payload["joins"]["me"]["app"])
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "True"


def test_a_slow_fetch_holds_back_its_own_topic_only(owner):
    with whosthere.Node(presence=BrokenPresence, fetch_timeout=5) as node:
        presence = node.presence
        with presence.subscribe("hang:1") as hang, presence.subscribe("fine") as fine:
            presence.track(owner.pid, "hang:1", "u", {})
            presence.track(owner.pid, "fine", "u", {})
            started = time.monotonic()
            expect_diff(fine, joins={"u": 1}, timeout=2)
            assert time.monotonic() - started < 2.0  # not behind the 3 s fetch
            expect_diff(hang, joins={"u": 1}, timeout=5)


def test_callbacks_may_be_async_def(owner):
    """An async fetch runs on the fetcher's loop (diffs), in the caller (list: a loop of its
    own; whosthere.aio: the caller's); async init and handle_metas on the client actor's."""
    with whosthere.Node(presence=AsyncCallbacksPresence) as node:
        presence = node.presence
        with presence.subscribe("room") as diffs, presence.subscribe("metas:room") as reports:
            presence.track(owner.pid, "room", "u1", {"n": 1})
            assert next_diff(diffs)["joins"]["u1"]["async"] is True
            report = reports.get(timeout=5)
            assert report is not None and report.payload == {"keys": ["u1"], "calls": 101}
            assert presence.list("room")["u1"]["async"] is True
            assert presence.get_by_key("room", "u1")["async"] is True

            async def from_a_loop() -> None:
                with pytest.raises(TypeError, match="use whosthere.aio"):
                    presence.list("room")  # the sync client cannot await it inside a loop
                aio = await AsyncCallbacksPresence.connect_async(node.address)
                async with aio:
                    assert (await aio.list("room"))["u1"]["async"] is True

            asyncio.run(from_a_loop())
