"""Cluster endpoints: what `tcp://host:port` a node may listen on, advertise and dial.

Checked by parsing, never by string prefix: a wildcard in any spelling (`0`, `0x0`, `[::]`,
`[::ffff:0.0.0.0]`) is no address a peer can dial, and "loopback" is decided on the address
parsed (`tcp://127.evil.example` is a host name, not loopback).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket as socket_module
from typing import Any

from whosthere.transport.dns_names import dns_name, tcp_endpoint

_ENDPOINT = re.compile(
    r"tcp://(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?)|(\*))"
    r":([0-9]{1,5})"
)


def valid_endpoint(address: object, wildcard: bool = False, any_port: bool = False) -> bool:
    """tcp://host:port with a host peers can dial (no wildcard, in any spelling); with
    `wildcard`, an address to bind on every interface too; with `any_port`, port 0 (any
    free one) too."""
    match = _ENDPOINT.fullmatch(address) if isinstance(address, str) else None
    if match is None:
        return False
    v6, name, star, port = match.groups()
    if int(port) > 65535 or (int(port) == 0 and not any_port):
        return False
    if star:
        return wildcard
    ip = _host_ip(v6, name)
    if ip is None:
        return not v6 and ".." not in name and not _numeric(name)  # a host name
    if ip is False or bool(v6) != (ip.version == 6):
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return wildcard or not (ip.is_unspecified or (mapped is not None and mapped.is_unspecified))


def is_loopback(address: str) -> bool:
    """Whether a tcp endpoint is on loopback (`localhost`, 127.0.0.0/8, ::1) for sure."""
    match = _ENDPOINT.fullmatch(address)
    if match is None or match.group(3):
        return False
    v6, name = match.group(1), match.group(2)
    if name == "localhost":
        return True
    ip = _host_ip(v6, name)
    return bool(ip) and bool(ip.is_loopback)


def _host_ip(v6: str | None, name: str | None) -> Any:
    """The address a host spells (None: a host name; False: a malformed address)."""
    try:
        return ipaddress.ip_address(v6 or name or "")
    except ValueError:
        if v6 or not name or not _numeric(name):
            return None if not v6 else False
        return False


def _numeric(name: str) -> bool:
    """Looks like an address to the resolver (inet_aton reads "0x0" or "1.2.3" as one)."""
    try:
        socket_module.inet_aton(name)
    except OSError:
        return bool(re.fullmatch(r"[0-9.]+", name))
    return True


def advertised(bound: str, advertise: str | None) -> str:
    """The address peers are told: `advertise` (its port 0: the port bound), or `bound`."""
    if not advertise:
        return bound
    if advertise.endswith(":0"):
        return advertise[:-1] + bound.rsplit(":", 1)[1]
    return advertise


def check_cluster(
    listen: str | None,
    peers: tuple[str, ...] | list[str] | str,
    cookie: str | None,
    advertise: str | None = None,
) -> tuple[str | None, tuple[str, ...]]:
    """Cluster wiring as given, checked: tcp endpoints (peers may also be `dns:NAME:PORT` or
    `srv:NAME`, see `transport.dns_names`), and loopback only without a cookie."""
    if isinstance(peers, str):
        peers = (peers,)
    peers = tuple(peers)
    if advertise is not None and not listen:
        raise ValueError("advertise= needs listen=")
    mine = [advertise or listen] if listen else []
    for endpoint in (*mine, *peers):
        if endpoint not in mine and isinstance(endpoint, str) and dns_name(endpoint):
            continue  # a name peers are found under, checked by dns_name
        if not valid_endpoint(endpoint, any_port=endpoint in mine):
            raise ValueError(
                f"cluster endpoints are tcp://host:port with a host peers can dial "
                f"(not a wildcard such as 0.0.0.0: to listen on every interface, give "
                f"advertise= the address peers dial; peers may also be dns:NAME:PORT or "
                f"srv:NAME), got {endpoint!r}"
            )
    wild = advertise is not None and valid_endpoint(listen, wildcard=True, any_port=True)
    if listen and not (wild or valid_endpoint(listen, any_port=True)):
        raise ValueError(f"listen must be tcp://host:port, got {listen!r}")
    if peers and not listen:
        raise ValueError("peers need listen=: peers must be able to reach this node too")
    if listen and not cookie and not is_loopback(listen):
        raise ValueError(
            f"listen={listen!r} without a cookie: only loopback addresses are allowed; "
            "give cookie= (or $WHOSTHERE_COOKIE) to listen on other interfaces"
        )
    return listen, peers


def own_endpoints(listen: str, bound: str, local_ips: list[str]) -> set[str]:
    """The endpoints that reach this node: the one it tells peers, the one bound and, bound to
    a wildcard, every local address at the bound port (DNS may name any of them)."""
    own = {listen, bound}
    match = _ENDPOINT.fullmatch(bound)
    if match is None:
        return own
    v6, name, star, port = match.groups()
    ip = _host_ip(v6, name) if not star else None
    if star or (ip and ip.is_unspecified):
        for local in local_ips:
            with contextlib.suppress(ValueError):  # not an IP address (a MAC address)
                own.add(tcp_endpoint(str(ipaddress.ip_address(local)), int(port)))
    return own
