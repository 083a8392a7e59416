"""Frames on the Redis engine: sealed with the cookie's key, refused when unsigned or forged."""

from __future__ import annotations

import pytest

from whosthere.errors import MalformedFrame
from whosthere.transport import codec
from whosthere.transport.messages import EngineFrame, PeerCast
from whosthere.transport.signing import open_frame, seal, signing_key

BODY = codec.encode(PeerCast("a", 0, b"payload"))


def test_a_sealed_frame_opens_with_the_same_cookie():
    key = signing_key("secret")
    frame = open_frame(key, seal(key, "a", BODY))
    assert (frame.sender, frame.body) == ("a", BODY)


def test_without_a_cookie_frames_are_not_signed_and_open_as_they_are():
    assert signing_key(None) is None and signing_key("") is None
    assert open_frame(None, seal(None, "a", BODY)).mac == b""


def test_unsigned_wrongly_signed_or_retold_frames_are_refused():
    key = signing_key("secret")
    other = signing_key("other")
    assert key not in (other, b"secret")
    with pytest.raises(MalformedFrame, match="unsigned"):
        open_frame(key, seal(None, "a", BODY))
    with pytest.raises(MalformedFrame, match="wrongly signed"):
        open_frame(key, seal(other, "a", BODY))
    good = codec.decode(seal(key, "a", BODY))
    for forged in (
        EngineFrame("b", good.body, good.mac),  # another sender's name on a's frame
        EngineFrame("a", good.body + b"x", good.mac),  # the body changed
    ):
        with pytest.raises(MalformedFrame, match="wrongly signed"):
            open_frame(key, codec.encode(forged))


def test_what_is_no_frame_is_refused():
    with pytest.raises(MalformedFrame):
        open_frame(None, b"\x00garbage")
    with pytest.raises(MalformedFrame, match="EngineFrame"):
        open_frame(None, BODY)
