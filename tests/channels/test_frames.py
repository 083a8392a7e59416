"""What a text frame can carry, checked before a meta goes in (`frames.json_problem`)."""

from __future__ import annotations

import enum
import json

import pytest

from whosthere.channels.channel import json_meta
from whosthere.channels.frames import json_problem
from whosthere.errors import InvalidMeta


class Mood(enum.StrEnum):
    HAPPY = "happy"


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"s": "x", "i": 1, "b": True, "n": None, "f": 0.5, "big": 2**70},
        {"l": [1, [2, {"k": ("t", "u")}]], "mood": Mood.HAPPY},
    ],
)
def test_json_is_accepted_as_it_is(meta):
    assert json_problem(meta) is None
    assert json_meta(meta) is meta
    json.dumps(meta, allow_nan=False)  # what the frame will do with it


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        ({"a": b"x"}, "meta['a'] is bytes, which JSON cannot carry"),
        ({"a": [{"b": bytearray()}]}, "meta['a'][0]['b'] is bytearray, which JSON cannot carry"),
        ({"a": {1: "x"}}, "meta['a'] has the key 1 (int); JSON's are strings"),
        ({"a": {("t",): "x"}}, "meta['a'] has the key ('t',) (tuple); JSON's are strings"),
        ({"a": float("inf")}, "meta['a'] is inf, which JSON cannot carry"),
        ({"a": [0.5, float("-nan")]}, "meta['a'][1] is nan, which JSON cannot carry"),
        ({"a": frozenset()}, "meta['a'] is frozenset, which JSON cannot carry"),
        ({"a": object}, "meta['a'] is type, which JSON cannot carry"),
    ],
)
def test_what_json_cannot_carry_is_named_by_its_path(meta, problem):
    assert json_problem(meta) == problem
    with pytest.raises(InvalidMeta) as refused:
        json_meta(meta)
    assert str(refused.value) == problem + " (a Channels meta reaches phoenix.js as JSON)"
