"""Which side of a `fork()` this process is on: `generation` goes up in every forked child.

A client made before a fork (gunicorn `--preload` imports the app, then forks its workers)
must never use its sockets in the child: they belong to the parent's ZeroMQ context. Objects
that hold sockets note the generation they were made in and, when it has changed, make new
ones (the parent's are dropped untouched: pyzmq closes nothing in a forked child). Reading a
module attribute is cheaper than `os.getpid()`, a system call, on every call.
"""

from __future__ import annotations

import os

generation = 0  # forks this process is away from the one that imported this module


def _forked() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_forked)
