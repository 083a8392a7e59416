"""Assertions in the protocol's terms: expect a presence_diff with these joins and leaves."""

from __future__ import annotations

from typing import Any

import whosthere


def next_diff(sub: whosthere.Subscription, timeout: float = 5.0) -> dict[str, Any]:
    msg = sub.get(timeout=timeout)
    assert msg is not None, "no presence_diff arrived"
    assert msg.event == "presence_diff", msg
    return msg.payload


def keys_of(diff: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """({key: number of metas joined}, {key: number of metas left})."""
    return (
        {k: len(v["metas"]) for k, v in diff["joins"].items()},
        {k: len(v["metas"]) for k, v in diff["leaves"].items()},
    )


def expect_diff(
    sub: whosthere.Subscription,
    joins: dict[str, int] | None = None,
    leaves: dict[str, int] | None = None,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """The next diff has exactly these keys (with these meta counts) joining and leaving."""
    diff = next_diff(sub, timeout)
    assert keys_of(diff) == (joins or {}, leaves or {}), diff
    return diff


def expect_quiet(sub: whosthere.Subscription, timeout: float = 0.3) -> None:
    msg = sub.get(timeout=timeout)
    assert msg is None, f"unexpected {msg}"
