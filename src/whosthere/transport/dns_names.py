"""Peers found by DNS: the `dns:NAME:PORT` and `srv:NAME` spellings of `peers=`, and their
resolution into the `tcp://host:port` addresses the cluster actor dials.

`dns:NAME:PORT` is every A and AAAA record of NAME, each dialled at PORT (a Kubernetes
headless service, as Phoenix's `dns_cluster`); `srv:NAME` is NAME's SRV records, each
target's addresses at the record's port. Both go through the system's resolver configuration:
A/AAAA by `socket.getaddrinfo` (`/etc/hosts`, `/etc/resolv.conf`, nsswitch), SRV by dnspython
(which reads `/etc/resolv.conf` afresh at each resolution, so a changed file counts).

Resolving blocks (up to the resolver's timeouts): the cluster actor runs it in threads.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import NamedTuple

import dns.exception
import dns.resolver

_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?")
_LIFETIME_S = 5.0  # one SRV query, every retry included


class DnsName(NamedTuple):
    """A name peers are found under: `kind` "dns" (A/AAAA at `port`) or "srv" (port 0:
    each SRV record's own)."""

    kind: str
    name: str
    port: int

    def __str__(self) -> str:
        return f"dns:{self.name}:{self.port}" if self.kind == "dns" else f"srv:{self.name}"


class ResolutionFailed(Exception):
    """A name did not resolve (no such name, no records, no answer): said why, in words."""


def dns_name(peer: str) -> DnsName | None:
    """The DNS name a `peers=` entry spells (None: it is no `dns:` or `srv:` entry).
    ValueError for a malformed one: `dns:NAME` without a port, an empty name, a bad port."""
    kind, colon, rest = peer.partition(":")
    if kind not in ("dns", "srv") or not colon:
        return None
    if kind == "srv":
        if not _HOST.fullmatch(rest) or ".." in rest:
            raise ValueError(f"peer {peer!r}: srv:NAME wants a DNS name, e.g. srv:_app._tcp.svc")
        return DnsName("srv", rest, 0)
    name, colon, port = rest.rpartition(":")
    if not colon or not _HOST.fullmatch(name) or ".." in name:
        raise ValueError(
            f"peer {peer!r}: dns:NAME:PORT wants a DNS name and the port every address of "
            "it is dialled at, e.g. dns:whosthere.default.svc.cluster.local:7000"
        )
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"peer {peer!r}: port must be 1-65535, got {port!r}")
    return DnsName("dns", name, int(port))


def tcp_endpoint(ip: str, port: int) -> str:
    """The tcp:// endpoint of an address and port (an IPv6 address in brackets)."""
    return f"tcp://[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"tcp://{ip}:{port}"


def resolve(name: DnsName) -> list[str]:
    """The endpoints `name` names now, sorted; ResolutionFailed if it names none."""
    if name.kind == "dns":
        return _addresses(name.name, name.port)
    try:
        answer = dns.resolver.Resolver().resolve(name.name, "SRV", lifetime=_LIFETIME_S)
    except dns.exception.DNSException as exc:
        raise ResolutionFailed(f"SRV {name.name}: {exc}") from None
    found: set[str] = set()
    failures: list[str] = []
    for record in answer:
        target = record.target.to_text().rstrip(".")
        if not target:
            continue  # "." : the service is decidedly not available there (RFC 2782)
        try:
            found.update(_addresses(target, record.port))
        except ResolutionFailed as exc:
            failures.append(str(exc))
    if not found:
        raise ResolutionFailed("; ".join(failures) or f"SRV {name.name}: no records")
    return sorted(found)


def _addresses(host: str, port: int) -> list[str]:
    """Every address `host` has (A and AAAA, as the system resolves them) at `port`;
    link-local IPv6 addresses left out (they need an interface a peer cannot share)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ResolutionFailed(f"{host}: {exc}") from None
    found = set()
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        if family == socket.AF_INET6 and ("%" in ip or ipaddress.ip_address(ip).is_link_local):
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            found.add(tcp_endpoint(ip, port))
    if not found:
        raise ResolutionFailed(f"{host}: no usable address")
    return sorted(found)
