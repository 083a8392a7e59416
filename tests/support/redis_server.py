"""A private `redis-server` for a test: on a unix socket in its own tmp dir, no persistence,
killed and restarted at will on the same socket, stopped and cleaned up afterwards."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.processes import stop
from tests.support.waiting import wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def available() -> bool:
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    return Path(REDIS_SERVER).exists()


class RedisServer:
    def __init__(self, password: str | None = None, *, tls: bool = False) -> None:
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="wr-", dir="/tmp"))  # short: a socket path
        self.socket = self.dir / "redis.sock"
        auth = f":{password}@" if password else ""
        self.url = f"unix://{auth}{self.socket}"
        self.tls: list[str] = []  # with TLS: the server's TLS options
        if tls:
            port, cert = str(_free_port()), str(self._cert())
            self.url = f"rediss://{auth}127.0.0.1:{port}/0?ssl_ca_certs={cert}"
            self.tls = [
                *("--tls-port", port, "--tls-cert-file", cert, "--tls-ca-cert-file", cert),
                *("--tls-key-file", str(self.dir / "key.pem"), "--tls-auth-clients", "no"),
            ]
        self.proc: subprocess.Popen[bytes] | None = None

    def _cert(self) -> Path:
        """A self-signed certificate for 127.0.0.1 (the clients' CA too)."""
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem")),
                *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )
        return self.dir / "cert.pem"

    def start(self) -> RedisServer:
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                *(REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket)),
                *("--unixsocketperm", "700", "--save", "", "--appendonly", "no"),
                *("--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")),
                *(("--requirepass", self.password) if self.password else ()),
                *self.tls,
            ],
            stdin=subprocess.DEVNULL,
        )
        wait_until(self.answers, timeout=10, what="redis-server answering")
        return self

    def answers(self) -> bool:
        import redis

        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def client(self):  # redis is imported only where it is installed
        import redis

        if self.tls:
            return redis.Redis.from_url(self.url)
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
