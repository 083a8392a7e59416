"""A real DNS server for nodes in network namespaces: Debian's dnsmasq in the hub namespace.

```
  hub namespace: br0 10.213.0.250  <- dnsmasq, answering for *.wt.test only
  node namespace n<i>: /etc/resolv.conf is /etc/netns/<ns>/resolv.conf -> 10.213.0.250
```
`ip netns exec` bind-mounts each file of `/etc/netns/<ns>/` over `/etc/`, so a node's
resolver (glibc's, and dnspython's) asks our dnsmasq while the host's stays untouched.
A records come from an `--addn-hosts` file, re-read on SIGHUP (`set_hosts`); SRV records
from the command line, so changing them restarts the server (`set_srv`). Names outside
`wt.test` are not ours to answer: they get NXDOMAIN (`--local`), never a forward.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.netns import Network
from tests.support.processes import stop
from tests.support.waiting import wait_until

DNSMASQ = "/usr/sbin/dnsmasq"
DOMAIN = "wt.test"
SERVER_IP = "10.213.0.250"


def missing() -> str | None:
    """Why there is no dnsmasq to run (None: there is)."""
    if shutil.which("dnsmasq") is None and not Path(DNSMASQ).exists():
        return "no dnsmasq (Debian package dnsmasq-base)"
    return None


class Dnsmasq:
    """dnsmasq in `network`'s hub namespace, its files in `directory`; every node namespace
    resolves through it while it runs."""

    def __init__(self, network: Network, directory: Path) -> None:
        self.network = network
        self.directory = directory
        self.hosts_file = directory / "hosts"
        self.log_file = directory / "dnsmasq.log"
        self.srv: list[tuple[str, str, int]] = []  # (service name, target, port)
        self.proc: subprocess.Popen[bytes] | None = None
        self.resolv_dirs: list[Path] = []

    def start(self, hosts: dict[str, list[str]], srv: list[tuple[str, str, int]]) -> Dnsmasq:
        self.network.hub_address(SERVER_IP)
        for ns in self.network.namespaces:
            folder = Path("/etc/netns") / ns
            folder.mkdir(parents=True, exist_ok=True)
            self.resolv_dirs.append(folder)
            (folder / "resolv.conf").write_text(
                f"nameserver {SERVER_IP}\noptions timeout:1 attempts:2\n"
            )
        self._write_hosts(hosts)
        self.srv = srv
        self._run()
        return self

    def set_hosts(self, hosts: dict[str, list[str]]) -> None:
        """The A records from now on ({name: [ip, ...]}): the file rewritten, then SIGHUP."""
        self._write_hosts(hosts)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def set_srv(self, srv: list[tuple[str, str, int]]) -> None:
        """The SRV records from now on: dnsmasq restarted with them."""
        self._end()
        self.srv = srv
        self._run()

    def stop(self) -> None:
        """End dnsmasq and take the namespaces' resolv.conf away."""
        self._end()
        for folder in self.resolv_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only if nothing else is there
        self.resolv_dirs.clear()

    def _write_hosts(self, hosts: dict[str, list[str]]) -> None:
        lines = [f"{ip} {name}\n" for name, ips in hosts.items() for ip in ips]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.replace(self.hosts_file)

    def _run(self) -> None:
        self.log_file.write_text("")
        command = [
            "ip",
            "netns",
            "exec",
            self.network.hub,
            shutil.which("dnsmasq") or DNSMASQ,
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            f"--conf-file={self.directory / 'none.conf'}",
            "--user=root",  # reads its files on SIGHUP too: they are in the test's 0700 tmp
            "--bind-interfaces",
            f"--listen-address={SERVER_IP}",
            f"--pid-file={self.directory / 'dnsmasq.pid'}",
            f"--addn-hosts={self.hosts_file}",
            f"--local=/{DOMAIN}/",  # ours alone: anything else is NXDOMAIN, not forwarded
            "--local-ttl=0",
            "--log-facility=-",
            *(f"--srv-host={name},{target},{port}" for name, target, port in self.srv),
        ]
        (self.directory / "none.conf").write_text("")
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        wait_until(
            lambda: "started, version" in self.log_file.read_text() or self.proc.poll() is not None,
            timeout=10,
            what="dnsmasq to start",
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsmasq did not start: {self.log_file.read_text()}")

    def _end(self) -> None:
        if self.proc is None:
            return
        stop(self.proc)
        self.proc = None
        (self.directory / "dnsmasq.pid").unlink(missing_ok=True)
