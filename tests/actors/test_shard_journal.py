"""The shard's journal files: recovery after a torn write, and compaction by a forked child."""

from __future__ import annotations

import logging
import os
import time

from tests.tracker.test_journal import fingerprint, meta
from whosthere.actors import shard_journal
from whosthere.actors.shard_journal import ShardJournal
from whosthere.tracker.state import State

log = logging.getLogger("test")


def fresh(tmp_path) -> tuple[ShardJournal, State, dict]:
    journal = ShardJournal(tmp_path, "shard.0", log)
    state, starts = State(("n", 7)), {}
    journal.start(state, starts, recovered=False)
    return journal, state, starts


def test_a_torn_last_write_is_cut_off_and_the_rest_recovered(tmp_path, caplog):
    journal, state, _ = fresh(tmp_path)
    for i in range(5):
        state.join(100 + i, "t", f"k{i}", meta(i))
        journal.recorder(("k", 100 + i, 1.5))
        journal.flush()
    journal.close()
    path = tmp_path / "shard.0.journal.1"
    whole = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")  # a frame header promising 64 bytes, then less
    with caplog.at_level(logging.WARNING):
        state2, starts2 = ShardJournal(tmp_path, "shard.0", log).recover(record_delta=True)
    assert fingerprint(state2) == fingerprint(state) and starts2 == dict.fromkeys(
        range(100, 105), 1.5
    )
    assert path.stat().st_size == whole  # the torn tail is gone
    assert "cut off" in caplog.text


def test_an_unreadable_dump_starts_a_new_replica_with_a_log_line(tmp_path, caplog):
    journal, _, _ = fresh(tmp_path)
    journal.close()
    (tmp_path / "shard.0.state").write_bytes(b"\x01" * 8 + b"not msgpack at all \xc1")
    with caplog.at_level(logging.ERROR):
        assert ShardJournal(tmp_path, "shard.0", log).recover(record_delta=True) is None
    assert "new replica" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing left to trip the next start


def test_compaction_dumps_in_a_child_and_drops_the_old_journal(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_journal, "_COMPACT_MIN_BYTES", 1)
    journal, state, starts = fresh(tmp_path)
    for i in range(200):
        state.join(100 + i % 7, "t", f"k{i}", meta(i))
        if i % 3 == 0:
            state.leave(100 + i % 7, "t", f"k{i}")
        journal.flush()
        journal.maybe_compact(state, starts)
    deadline = time.monotonic() + 10
    while journal.dumper is not None and time.monotonic() < deadline:
        time.sleep(0.01)
        journal.maybe_compact(state, starts)  # reaps the child
    assert journal.dumper is None and journal.gen > 1
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["shard.0.journal." + str(journal.gen), "shard.0.state"]
    journal.close()
    state2, _ = ShardJournal(tmp_path, "shard.0", log).recover(record_delta=True)
    assert fingerprint(state2) == fingerprint(state)


def test_a_crash_during_a_dump_replays_the_old_dump_and_both_journals(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_journal, "_COMPACT_MIN_BYTES", 1)
    journal, state, starts = fresh(tmp_path)
    for i in range(20):
        state.join(1, "t", f"a{i}", meta(i))
    journal.flush()
    monkeypatch.setattr(os, "fork", lambda: 4_000_000)  # a child that never writes its dump
    monkeypatch.setattr(journal, "_reap", lambda: None)
    journal.maybe_compact(state, starts)
    state.join(1, "t", "b", meta(2))
    journal.flush()
    assert (tmp_path / "shard.0.journal.1").exists() and (tmp_path / "shard.0.journal.2").exists()
    os.close(journal.fd)  # the shard dies here
    state2, _ = ShardJournal(tmp_path, "shard.0", log).recover(record_delta=True)
    assert fingerprint(state2) == fingerprint(state)


def test_a_failed_write_stops_journaling_and_leaves_no_journal_to_recover(tmp_path, caplog):
    journal, state, _ = fresh(tmp_path)
    state.join(1, "t", "a", meta(1))
    journal.flush()
    os.close(journal.fd)  # the next write fails (EBADF), as a full disk would
    state.join(1, "t", "b", meta(2))
    with caplog.at_level(logging.ERROR):
        journal.flush()
    assert journal.failed and "journaling stopped" in caplog.text
    assert ShardJournal(tmp_path, "shard.0", log).recover(record_delta=True) is None
    journal.fd = -1
