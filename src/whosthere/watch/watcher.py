"""`ProcessWatcher`: pidfds in one epoll where possible, a sweeping thread for the rest.

Why one epoll: a `zmq.Poller` costs ~0.66 ms per poll with 10,000 pidfds registered and
unregisters in O(n); one epoll over them costs ~0.3 us per poll and the actor's loop polls
just its fd beside the sockets (`fileno`).

Why a budget: past the open-file limit pidfd_open fails; processes beyond `max_pidfds` go to
the sweeper, and move back to pidfds as pidfds free up, so no exit is ever missed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import sys

from whosthere.watch.identity import ProcessKey, start_time
from whosthere.watch.sweep import Sweeper

FD_RESERVE = 512  # file descriptors kept free for sockets and files

HAVE_PIDFD = sys.platform.startswith("linux") and hasattr(os, "pidfd_open")


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ProcessWatcher:
    """Reports each watched process's exit once, through `collect()`; poll `fileno()`.

    `watch` of a process that is already gone (or whose pid now belongs to another process)
    reports it as exited at the next `collect`.
    """

    def __init__(
        self, *, max_pidfds: int | None = None, use_pidfd: bool = HAVE_PIDFD, sweep: bool = True
    ) -> None:
        """`sweep`: processes past the pidfd budget are swept (else they are not watched:
        for a watcher that only hastens what another one reports anyway)."""
        self._waker_r, self._waker_w = os.pipe()
        os.set_blocking(self._waker_r, False)
        os.set_blocking(self._waker_w, False)
        self._use_pidfd = use_pidfd
        if use_pidfd:
            self._epoll: select.epoll | None = select.epoll()
            self._epoll.register(self._waker_r, select.EPOLLIN)
        else:
            self._epoll = None
        if max_pidfds is None:
            max_pidfds = max(0, raise_fd_limit() - FD_RESERVE)
        self.max_pidfds = max_pidfds if use_pidfd else 0  # budget of open pidfds
        self._fd_by_key: dict[ProcessKey, int] = {}
        self._key_by_fd: dict[int, ProcessKey] = {}
        self._sweeper = Sweeper(self._wake)
        self._sweep = sweep
        self._ready: list[ProcessKey] = []  # found dead at watch time

    def fileno(self) -> int:
        """Readable when `collect` has something to return."""
        return self._epoll.fileno() if self._epoll is not None else self._waker_r

    def __len__(self) -> int:
        return len(self._fd_by_key) + len(self._sweeper)

    def __contains__(self, key: object) -> bool:
        return key in self._fd_by_key or key in self._sweeper

    def stats(self) -> dict[str, int]:
        return {"pidfd": len(self._fd_by_key), "sweep": len(self._sweeper)}

    def watch(self, key: ProcessKey) -> None:
        """Start watching the process `key` = (pid, start_time). Watching twice is a no-op."""
        if key in self:
            return
        if key[1] is None:  # no start time: the process was gone when it was read
            self._report_now(key)
            return
        if len(self._fd_by_key) < self.max_pidfds and self._watch_pidfd(key):
            return
        if not self._sweep:
            return
        if start_time(key[0]) != key[1]:
            self._report_now(key)
        else:
            self._sweeper.add(key)

    def unwatch(self, key: ProcessKey) -> None:
        """Stop watching `key`; its exit will not be reported. Unknown keys are ignored."""
        fd = self._fd_by_key.pop(key, None)
        if fd is not None:
            del self._key_by_fd[fd]
            self._close_pidfd(fd)
            self._promote()
        else:
            self._sweeper.discard(key)

    def collect(self) -> list[ProcessKey]:
        """The watched processes that exited since the last call (each reported once)."""
        exited = self._ready
        self._ready = []
        with contextlib.suppress(BlockingIOError):
            while os.read(self._waker_r, 4096):
                pass
        if self._epoll is not None:
            while True:
                events = self._epoll.poll(0, 1024)
                for fd, _ in events:
                    key = self._key_by_fd.pop(fd, None)
                    if key is not None:
                        del self._fd_by_key[key]
                        self._close_pidfd(fd)
                        exited.append(key)
                if len(events) < 1024:
                    break
        exited.extend(self._sweeper.take_exits())
        if exited:
            self._promote()
        return exited

    def close(self) -> None:
        """Release every pidfd and stop the sweeper. Idempotent."""
        self._sweeper.close()
        for fd in list(self._key_by_fd):
            self._close_pidfd(fd)
        self._key_by_fd.clear()
        self._fd_by_key.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for fd in (self._waker_r, self._waker_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._waker_r = self._waker_w = -1

    def _watch_pidfd(self, key: ProcessKey) -> bool:
        """Watch by pidfd; False when out of file descriptors (the caller sweeps instead)."""
        assert self._epoll is not None
        pid, expected = key
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._report_now(key)
            return True
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.max_pidfds = len(self._fd_by_key)  # the real budget, as it turns out
            return False  # (EINVAL: e.g. a thread id on an older kernel) sweep it instead
        # Read the start time after opening: if it still matches, the pidfd is that process.
        if start_time(pid) != expected:
            os.close(fd)
            self._report_now(key)
            return True
        self._epoll.register(fd, select.EPOLLIN)
        self._fd_by_key[key] = fd
        self._key_by_fd[fd] = key
        return True

    def _close_pidfd(self, fd: int) -> None:
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        os.close(fd)

    def _promote(self) -> None:
        """Move swept processes to freed pidfds (cheaper and immediate)."""
        while self._use_pidfd and len(self._fd_by_key) < self.max_pidfds and len(self._sweeper):
            key = self._sweeper.pop_any()
            if key is None or not self._watch_pidfd(key):
                if key is not None:
                    self._sweeper.add(key)
                return

    def _report_now(self, key: ProcessKey) -> None:
        self._ready.append(key)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._waker_w, b"\0")
