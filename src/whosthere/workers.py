"""Worker processes a node starts for its user (`node.spawn`), and stops with it."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

from whosthere.client import ADDRESS_ENV


def _entry(
    address: str, target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    os.environ[ADDRESS_ENV] = address
    return target(*args, **kwargs)


class Workers:
    """The live workers of one node."""

    def __init__(self) -> None:
        self.procs: list[multiprocessing.process.BaseProcess] = []

    def spawn(
        self,
        address: str,
        target: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
    ) -> multiprocessing.process.BaseProcess:
        """A spawn-context process running `target` with `$WHOSTHERE_ADDRESS` set."""
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_entry, args=(address, target, args, kwargs), name=name)
        proc.start()
        self.procs = [w for w in self.procs if w.is_alive()] + [proc]
        return proc

    def stop(self, grace: float) -> None:
        """SIGTERM every live worker; SIGKILL those still running after `grace` seconds."""
        live = [w for w in self.procs if w.is_alive()]
        for w in live:
            w.terminate()
        deadline = time.monotonic() + grace
        for w in live:
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                w.kill()
                w.join()
        self.procs.clear()
