"""A test actor with messages of its own, to exercise the actor base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from whosthere.actors.base import NOREPLY, Actor, ActorSpec
from whosthere.errors import NotTracked
from whosthere.transport import codec


class Echo(NamedTuple):
    value: Any


class Boom(NamedTuple):
    kind: str  # "bug" raises ZeroDivisionError, "refuse" raises NotTracked


class Nap(NamedTuple):
    seconds: float


class Count(NamedTuple):
    pass


class Later(NamedTuple):
    seconds: float  # reply after this long, from a timer


class Work(NamedTuple):
    slices: int  # long work of this many slices, each `seconds` of busy CPU
    seconds: float


class Trace(NamedTuple):
    pass  # what happened since the last Work: ["slice", i], ["tick"], ["echo", value]


for _tag, _cls in enumerate((Echo, Boom, Nap, Count, Later, Work, Trace), start=1001):
    codec.register(_cls, _tag)


class EchoActor(Actor):
    handles = (Echo, Boom, Nap, Count, Later, Work, Trace)

    def __init__(self, spec: ActorSpec) -> None:
        super().__init__(spec)
        self.count = 0
        self.trace: list[list[Any]] = []

    def on_echo(self, msg: Echo) -> Any:
        self.count += 1
        self.trace.append(["echo", msg.value])
        return msg.value

    def on_work(self, msg: Work) -> None:
        self.trace = []

        def work() -> Any:
            for i in range(msg.slices):
                end = time.monotonic() + msg.seconds
                while time.monotonic() < end:
                    pass  # busy, as a merge is
                self.trace.append(["slice", i])
                yield

        def tick() -> None:
            self.trace.append(["tick"])
            if self.working:
                self.call_later(0.01, tick)

        self.start_work(work())
        self.call_later(0.01, tick)

    def on_trace(self, msg: Trace) -> list[list[Any]]:
        return self.trace

    def on_boom(self, msg: Boom) -> None:
        if msg.kind == "refuse":
            raise NotTracked("nothing tracked here")
        _ = 1 / 0

    def on_nap(self, msg: Nap) -> None:
        time.sleep(msg.seconds)

    def on_count(self, msg: Count) -> int:
        return self.count

    def on_later(self, msg: Later) -> Any:
        request = self.request
        assert request is not None
        self.call_later(msg.seconds, lambda: self.reply(request, "later"))
        return NOREPLY

    def on_stop(self) -> None:
        marker = self.spec.options.get("stop_marker")
        if marker:
            Path(marker).write_text("stopped")


def start_echo_actor(
    tmp: Path, endpoint: str = "", **options: Any
) -> tuple[subprocess.Popen[bytes], str]:
    """Run an EchoActor as a child of this process (log in tmp/echo.log); returns it, endpoint."""
    endpoint = endpoint or f"ipc://{tmp}/echo.sock"
    spec = ActorSpec(
        name="echo",
        actor="tests.support.actors:EchoActor",
        endpoint=endpoint,
        runtime_dir=str(tmp),
        supervisor="",
        parent_pid=os.getpid(),
        node_name="test",
        options=options,
    )
    with open(tmp / "echo.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "whosthere.actors.boot", json.dumps(spec.to_json_dict())],
            stderr=log,
        )
    return proc, endpoint
