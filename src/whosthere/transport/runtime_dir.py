"""The private runtime directory of a node: where its ipc:// socket files live.

Every node gets its own directory (mode 0700) under a per-user base directory. The directory
holds a `lock` file that the node's supervisor keeps locked (flock) while it lives: the kernel
drops the lock when the supervisor dies, however it dies, so a later node start can tell a
stale directory from a live one and remove it (`clean_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

LOCK_NAME = "lock"
IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; keep a margin
_UNLOCKED_GRACE_S = 60.0  # a directory without a lock file may be one that is being created


def base_dir() -> Path:
    """The per-user directory holding node directories (created 0700 if missing).

    `WHOSTHERE_RUNTIME_DIR` overrides it; else `$XDG_RUNTIME_DIR/whosthere`, else
    `<tmp>/whosthere-<uid>`.
    """
    override = os.environ.get("WHOSTHERE_RUNTIME_DIR")
    if override:
        base = Path(override)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "whosthere"
    else:
        base = Path(tempfile.gettempdir()) / f"whosthere-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = base.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"runtime base {base} is not a directory owned by uid {os.getuid()}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(base, 0o700)
    return base


def create(name: str, address: str | None = None) -> tuple[Path, int]:
    """A new node directory and an open, locked fd on its lock file.

    The caller passes the fd to the supervisor (which then holds the lock) and closes its own
    copy; the directory counts as live as long as any copy of that fd is open.

    A node with a fixed `address` (whose lock the caller holds) gets the same directory at
    every start, named after the address: its actors' endpoints stay where they were, so
    the sockets of clients that outlived a restart reconnect by themselves (ZeroMQ dials an
    ipc:// path again until something listens there). What an earlier node left is removed.
    """
    base = base_dir()
    clean_stale(base)
    if address is not None:
        digest = hashlib.sha256(address.encode()).hexdigest()[:16]
        path = base / f"at-{digest}"
        if path.exists():
            if is_live(path):
                raise OSError(f"runtime directory {path} of {address} is held by a live node")
            remove(path)
        path.mkdir(mode=0o700)
    else:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:24] or "node"
        path = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=base))
    # Lock first, then give the file its name: nobody can see the lock file unlocked.
    fd = os.open(path / f"{LOCK_NAME}.new", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(path / f"{LOCK_NAME}.new", path / LOCK_NAME)
    longest = ipc_endpoint(path, "x" * 24)
    if len(longest) - len("ipc://") > IPC_PATH_MAX:
        remove(path)
        os.close(fd)
        raise OSError(
            f"runtime directory {path} is too long for ipc:// socket paths "
            f"(max {IPC_PATH_MAX} bytes); set WHOSTHERE_RUNTIME_DIR to a shorter directory"
        )
    return path, fd


def ipc_endpoint(path: Path, name: str) -> str:
    """The ipc:// endpoint of socket `name` inside node directory `path`."""
    return f"ipc://{path / name}.sock"


def is_live(path: Path) -> bool:
    """Whether a node still holds `path` (its lock file is locked, or it is just being made)."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return _young(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _young(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < _UNLOCKED_GRACE_S
    except FileNotFoundError:
        return False


def clean_stale(base: Path | None = None) -> list[Path]:
    """Remove the directories of nodes that died without cleaning up; returns them."""
    base = base or base_dir()
    removed = []
    for entry in base.iterdir():
        if entry.is_dir() and not entry.is_symlink() and not is_live(entry):
            remove(entry)
            removed.append(entry)
    return removed


def remove(path: Path) -> None:
    """Remove a node directory and everything in it (missing is fine)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
