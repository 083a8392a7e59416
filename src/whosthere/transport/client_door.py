"""A node's client door at a fixed ipc:// path (`Node(address=...)`): claimed, bound, given back.

Who holds the path. A lock file beside the socket (`<path>.lock`) is flocked by the node's
supervisor for its whole life, and the kernel drops the lock when that process dies, however
it dies. So the lock held means a live node serves there ("a node already serves ..."), and
the lock free means a socket file left there is stale. Probing with connect() alone would be
racy: two nodes starting at once could both find nothing and both bind (and ZeroMQ's own ipc
bind unlinks whatever is at the path first, a live node's socket or a user's file). Under the
lock one start at a time decides; a stale socket is removed only once a connect() to it is
refused (one that answers belongs to some other program: refused and left alone). A path that
is not a socket is never removed.

The lock file's inode is checked once it is locked: a stopping node unlinks its lock file,
and a start that opened that file just before must try again on the new one, or two starts
could each hold a lock, on two files.

0600 without a race. The socket is bound at a short private name in the same directory and
chmod 0600 before listen(), then hard-linked to the path (a link never replaces: a file made
there meanwhile is refused, not overwritten) and the private name unlinked: the path never
shows a socket with another mode. No umask is changed: it is process-wide, and the Node's
process may run threads. ZeroMQ gets the listening socket by `ZMQ_USE_FD`, so it never
unlinks the path (it would, on bind and on close, by name).

Given back only if still ours. A node's stop removes the socket and lock files only while it
holds the lock and only if they are the inodes it made: stopping an old node never pulls the
door out from under a newer one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import stat
from dataclasses import dataclass
from typing import Any

from whosthere.errors import NodeStartError
from whosthere.transport.client_address import check_node_address, ipc_path

LOCK_SUFFIX = ".lock"
_BACKLOG = 512
FileId = tuple[int, int]  # (st_dev, st_ino): which file a path names


@dataclass
class ClientDoor:
    """The listening socket at a node's fixed address, and the lock that makes it the node's."""

    address: str  # ipc:///abs/path
    listen_fd: int  # the bound, listening socket; -1 once handed over or closed
    lock_fd: int  # flocked `<path>.lock`; -1 once handed over or closed
    socket_id: FileId  # the socket file this node made

    @property
    def path(self) -> str:
        return ipc_path(self.address)

    @property
    def lock_path(self) -> str:
        return self.path + LOCK_SUFFIX

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "listen_fd": self.listen_fd,
            "lock_fd": self.lock_fd,
            "socket_id": list(self.socket_id),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ClientDoor:
        dev, ino = raw["socket_id"]
        return cls(raw["address"], raw["listen_fd"], raw["lock_fd"], (dev, ino))

    def handed_over(self) -> None:
        """Close this process's copies of the fds: another process (the supervisor) holds
        them now, and the lock lives as long as it does."""
        self._close_fds()

    def release(self) -> None:
        """Remove the socket and lock files if they are still this node's, then let go of
        the lock. Only the lock's holder calls it (the supervisor, as it stops)."""
        if self.lock_fd < 0:
            return
        try:
            _remove_if(self.path, self.socket_id)
            _remove_if(self.lock_path, _fd_id(self.lock_fd))
        finally:
            self._close_fds()

    def release_if_free(self) -> None:
        """After the holder died without `release` (e.g. SIGKILLed): give the door back, but
        only if no other node has taken the lock since; else leave everything to it."""
        lock_fd = _lock(self.lock_path, create=False)
        if lock_fd is None:
            return  # held by a newer node, or already given back
        self.lock_fd = lock_fd
        self.release()

    def _close_fds(self) -> None:
        for name in ("listen_fd", "lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)


def claim(address: str) -> ClientDoor:
    """Take the fixed address for a starting node: lock it, clear a stale socket, bind.

    Raises `NodeStartError` naming the problem: the directory is missing, a node already
    serves there, the path is not a socket, or something else listens there.
    """
    check_node_address(address)
    path = ipc_path(address)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise NodeStartError(f"cannot serve at {address}: directory {folder} does not exist")
    try:
        lock_fd = _lock(path + LOCK_SUFFIX, create=True)
    except OSError as exc:
        raise NodeStartError(f"cannot serve at {address}: lock {path}{LOCK_SUFFIX}: {exc}") from exc
    if lock_fd is None:
        raise NodeStartError(
            f"a node already serves {address} (it holds {path}{LOCK_SUFFIX}); "
            "stop it first, or give this node another address"
        )
    try:
        _clear_stale(address, path)
        listen_fd, socket_id = _bind(address, path)
    except BaseException:
        _remove_if(path + LOCK_SUFFIX, _fd_id(lock_fd))  # still ours: nobody serves there
        os.close(lock_fd)
        raise
    return ClientDoor(address, listen_fd, lock_fd, socket_id)


def _lock(lock_path: str, create: bool) -> int | None:
    """An fd holding the flock of the file at `lock_path` now; None if another holds it
    (or, without `create`, if there is none)."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    while True:
        try:
            fd = os.open(lock_path, flags, 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _path_id(lock_path) == _fd_id(fd):
            return fd
        os.close(fd)  # unlinked by its stopping owner meanwhile: lock the file there now
        if not create:
            return None


def _clear_stale(address: str, path: str) -> None:
    """Under the lock: remove a socket file a dead node left at `path`; refuse anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise NodeStartError(
            f"cannot serve at {address}: {path} exists and is not a socket (left as it is)"
        )
    live = False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)  # a full backlog fails at once (EAGAIN) rather than blocks
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody listens: the node that bound it died
    except FileNotFoundError:
        return
    except (BlockingIOError, TimeoutError):
        live = True
    except OSError as exc:
        raise NodeStartError(f"cannot serve at {address}: {path}: {exc}") from exc
    else:
        live = True
    finally:
        probe.close()
    if live:
        raise NodeStartError(
            f"cannot serve at {address}: something that is not a whosthere node listens "
            f"at {path} (it holds no {LOCK_SUFFIX} file)"
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NodeStartError(f"cannot serve at {address}: stale {path}: {exc}") from exc


def _bind(address: str, path: str) -> tuple[int, FileId]:
    """A listening socket at `path`, mode 0600 from the moment the path shows it."""
    private = os.path.join(os.path.dirname(path), "." + secrets.token_hex(3))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(private)
        try:
            os.chmod(private, 0o600)
            sock.listen(_BACKLOG)
            os.link(private, path)
        finally:
            os.unlink(private)
    except FileExistsError:
        sock.close()
        raise NodeStartError(
            f"cannot serve at {address}: {path} was made by someone else as this node started"
        ) from None
    except OSError as exc:  # e.g. no write permission, or a file system without hard links
        sock.close()
        raise NodeStartError(f"cannot serve at {address}: {exc}") from exc
    return sock.detach(), _path_id(path) or (0, 0)


def _remove_if(path: str, file_id: FileId | None) -> None:
    """Unlink `path` if it still names the file `file_id`."""
    if file_id is not None and _path_id(path) == file_id:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _path_id(path: str) -> FileId | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


def _fd_id(fd: int) -> FileId:
    info = os.fstat(fd)
    return (info.st_dev, info.st_ino)
