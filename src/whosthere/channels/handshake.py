"""What a WebSocket upgrade request asks, and whether to take it (no sockets here).

Phoenix refuses before the upgrade, as a plain HTTP 403: a protocol version it does not
speak, an origin it does not allow, a subprotocol it does not offer, a `connect` that said
no. The client's `authToken` rides in `Sec-WebSocket-Protocol` as
`base64url.bearer.phx.<base64 without padding>` beside `phoenix`, the subprotocol answered.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

TOKEN_PREFIX = "base64url.bearer.phx."
SUBPROTOCOL = "phoenix"
_NESTED = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])+)$")


class Refused(Exception):
    """The upgrade is refused (HTTP 403); the reason goes to the log, not to the client."""


class Upgrade(NamedTuple):
    params: dict[str, Any]  # the query, Plug-style (`a[b]=1` nests), vsn included
    subprotocol: str | None  # to answer, if the client offered one
    auth_token: str | None


def parse(query: bytes | str, protocols: Iterable[str]) -> Upgrade:
    """The upgrade's params and token; `Refused` for a version other than 2.0.x, or for
    subprotocols offered without `phoenix` among them."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    params = parse_params(text)
    vsn = params.get("vsn", "1.0.0")
    if not isinstance(vsn, str) or not re.fullmatch(r"2\.0\.\d+", vsn):
        raise Refused(f"protocol version {vsn!r} is not served (only 2.0.x: the V2 serializer)")
    offered = [p.strip() for p in protocols if p.strip()]
    tokens = [p for p in offered if p.startswith(TOKEN_PREFIX)]
    token = None
    if len(tokens) == 1:
        offered.remove(tokens[0])
        token = _decode_token(tokens[0][len(TOKEN_PREFIX) :])
    if offered and SUBPROTOCOL not in offered:
        raise Refused(f"none of the subprotocols {offered!r} is served (only {SUBPROTOCOL!r})")
    return Upgrade(params, SUBPROTOCOL if offered else None, token)


def _decode_token(text: str) -> str:
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("the auth token is not base64") from None
    return raw.decode("latin-1")  # the client's `btoa` takes Latin-1 text only


def parse_params(query: str) -> dict[str, Any]:
    """`token=a&user[name]=b` -> {"token": "a", "user": {"name": "b"}}; values are strings."""
    out: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        match = _NESTED.match(name)
        if match is None:
            out[name] = value
            continue
        keys = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        if keys[-1]:
            node[keys[-1]] = value
    return out


def origin_allowed(origin: str | None, host: str | None, check: bool | list[str]) -> bool:
    """Phoenix's `check_origin`: no Origin header (not a browser) is allowed; False allows
    all; True asks the origin's host to be the request's; a list names the allowed origins
    (`"https://example.com"`, `"//example.com"`, `"//*.example.com"`: what an entry gives is
    compared)."""
    if origin is None or check is False:
        return True
    parts = urlsplit(origin)
    if check is True:
        return host is not None and parts.hostname == urlsplit(f"//{host}").hostname
    for allowed in check:
        want = urlsplit(allowed if "//" in allowed else f"//{allowed}")
        if want.scheme and want.scheme != parts.scheme:
            continue
        if want.port is not None and want.port != parts.port:
            continue
        wanted_host = want.hostname or ""
        if wanted_host.startswith("*."):
            if (parts.hostname or "").endswith(wanted_host[1:]):
                return True
        elif wanted_host == parts.hostname:
            return True
    return False
