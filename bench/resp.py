"""A private redis-server and a tiny RESP2 client, for the Redis baselines (no `redis` package).

The server listens on a unix socket in a private temporary directory only, persists nothing,
and notifies key expirations (`Ex`); `redis_server()` always stops it and removes the directory.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

Command = Sequence[bytes | str | int | float]


class RespError(Exception):
    """An error reply (`-ERR ...`)."""


class Resp:
    """One connection: `call` for a round trip, `send` then `read` for pipelining."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._buf = b""
        self._pos = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, commands: Sequence[Command]) -> None:
        """Write commands without waiting for their replies."""
        out = bytearray()
        for command in commands:
            out += b"*%d\r\n" % len(command)
            for arg in command:
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                out += b"$%d\r\n%s\r\n" % (len(data), data)
        self.sock.sendall(out)

    def read(self) -> Any:
        """The next reply: bytes, int, str (status), None, a list, or a `RespError`."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n + 2)[:-2]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else self._array(n)
        if kind == b"-":
            return RespError(rest.decode())
        raise RespError(f"unexpected reply {line[:40]!r}")

    def call(self, *args: bytes | str | int | float) -> Any:
        """One command, one round trip; raises the error reply."""
        self.send([args])
        reply = self.read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Many commands, one round trip: their replies, in order."""
        self.send(commands)
        return [self.read() for _ in commands]

    def _array(self, n: int) -> list[Any]:
        """`n` replies; bulk strings in a tight loop (HGETALL of 10,000 fields is 20,000)."""
        items: list[Any] = []
        append, find = items.append, self._buf.find
        buf, pos, size = self._buf, self._pos, len(self._buf)
        while n:
            end = find(b"\r\n", pos)
            if end < 0 or buf[pos] != 36:  # 36: "$"
                self._pos = pos
                if end < 0:
                    self._fill()
                else:
                    append(self.read())  # not a bulk string: the general path
                    n -= 1
                buf, pos, size, find = self._buf, self._pos, len(self._buf), self._buf.find
                continue
            length = int(buf[pos + 1 : end])
            start = end + 2
            if length < 0:
                append(None)
                pos = start
            elif start + length + 2 > size:
                self._pos = pos
                self._fill()
                buf, pos, size, find = self._buf, self._pos, len(self._buf), self._buf.find
                continue
            else:
                append(buf[start : start + length])
                pos = start + length + 2
            n -= 1
        self._pos = pos
        return items

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n", self._pos)) < 0:
            self._fill()
        line = self._buf[self._pos : end]
        self._pos = end + 2
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            self._fill()
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data


def available() -> str | None:
    """The redis-server executable, if installed."""
    return shutil.which("redis-server")


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Run a private redis-server; yields its unix socket path."""
    exe = available()
    if exe is None:
        raise FileNotFoundError("redis-server is not installed")
    tmp = tempfile.mkdtemp(prefix="whosthere-redis-")
    path = str(Path(tmp) / "redis.sock")
    proc = None
    try:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                "0",
                "--unixsocket",
                path,
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--notify-keyspace-events",
                "Ex",
                "--dir",
                tmp,
                "--logfile",
                str(Path(tmp) / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ready(proc, path)
        yield path
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            conn = Resp(path)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        try:
            conn.call("PING")
            return
        finally:
            conn.close()
