"""Entry point of every actor process: `python -m whosthere.actors.boot SPEC_JSON`.

Before anything else the process ties its life to its parent's (Linux: PR_SET_PDEATHSIG, so a
supervisor killed with SIGKILL takes its actors with it), ignores SIGINT (the supervisor
decides when the node stops) and turns SIGTERM into a clean stop through the loop's wakeup fd.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import signal
import sys
from typing import Any

from whosthere.actors.base import Actor, ActorSpec

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` when the parent exits; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


def setup_logging(name: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s whosthere {name}[%(process)d]: %(message)s")
    )
    root = logging.getLogger("whosthere")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def signal_wakeup_fd() -> int:
    """A pipe the loop polls: SIGTERM/SIGINT write their number into it."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)
    signal.signal(signal.SIGTERM, lambda *_: None)
    return r


def load_actor(path: str) -> type[Actor]:
    module, _, cls = path.partition(":")
    actor = getattr(importlib.import_module(module), cls)
    if not (isinstance(actor, type) and issubclass(actor, Actor)):
        raise TypeError(f"{path} is not an Actor subclass")
    return actor


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    raw: dict[str, Any] = json.loads(args[0])
    spec = ActorSpec.from_json_dict(raw)
    die_with_parent(spec.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(spec.name, spec.log_level)
    actor = load_actor(spec.actor)(spec)
    actor.run(signal_wakeup_fd())


if __name__ == "__main__":
    main()
