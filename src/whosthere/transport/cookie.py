"""The cluster cookie: a secret every node of a cluster holds, turned into CURVE keys.

It travels by environment (`$WHOSTHERE_COOKIE`, readable by its user only), never on a
command line, which every user of the host can read.
"""

from __future__ import annotations

import hashlib

import zmq
import zmq.utils.z85

COOKIE_ENV = "WHOSTHERE_COOKIE"


def curve_keys(cookie: str) -> tuple[bytes, bytes]:
    """(public, secret) CURVE keys every holder of the cookie derives alike."""
    secret = zmq.utils.z85.encode(hashlib.sha256(b"whosthere-cookie:" + cookie.encode()).digest())
    return zmq.curve_public(secret), secret
