from __future__ import annotations

import os
import stat

from whosthere.transport import runtime_dir


def test_node_directory_is_private_and_locked_while_held():
    path, fd = runtime_dir.create("a node/with odd:name")
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert stat.S_IMODE(runtime_dir.base_dir().stat().st_mode) == 0o700
        assert runtime_dir.is_live(path)
        assert path not in runtime_dir.clean_stale()
    finally:
        os.close(fd)
    assert not runtime_dir.is_live(path)
    assert path in runtime_dir.clean_stale()
    assert not path.exists()


def test_a_directory_being_created_is_not_taken_for_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("WHOSTHERE_RUNTIME_DIR", str(tmp_path))
    fresh = tmp_path / "new-node"
    fresh.mkdir()
    assert runtime_dir.clean_stale() == []
    old = tmp_path / "old-node"
    old.mkdir()
    os.utime(old, (0, 0))
    assert runtime_dir.clean_stale() == [old]
