"""Several watchers of one file descriptor on one event loop.

`loop.add_reader` keeps one callback per fd: a second one replaces the first. Every
connection of a client watches the same pidfd of the node's supervisor (and a subscription
its own socket), so each watcher is added here, and the loop calls them all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

_watchers: dict[tuple[int, int], set[Callable[[], None]]] = {}  # (id(loop), fd) -> callbacks


def add(loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> None:
    key = (id(loop), fd)
    callbacks = _watchers.get(key)
    if callbacks is None:
        callbacks = _watchers[key] = set()
        with contextlib.suppress(Exception):  # a registration epoll lost (see `renew`)
            loop.remove_reader(fd)
        loop.add_reader(fd, _call_all, callbacks)
    callbacks.add(callback)


def renew(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """The file behind `fd` was replaced (`SupervisorWatch.rearm` dup2s a new pidfd onto the
    number): register it anew, since epoll forgot the old file when it closed."""
    callbacks = _watchers.get((id(loop), fd))
    if callbacks is None:
        return
    with contextlib.suppress(Exception):
        loop.remove_reader(fd)
    loop.add_reader(fd, _call_all, callbacks)


def remove(loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> None:
    key = (id(loop), fd)
    callbacks = _watchers.get(key)
    if callbacks is None:
        return
    callbacks.discard(callback)
    if not callbacks:
        del _watchers[key]
        with contextlib.suppress(Exception):  # the loop may be closing
            loop.remove_reader(fd)


def _call_all(callbacks: set[Callable[[], None]]) -> None:
    for callback in list(callbacks):
        callback()
