"""Helpers to look into a running node from tests."""

from __future__ import annotations

import psutil

import whosthere


def node_pids(node: whosthere.Node) -> set[int]:
    """The supervisor's pid and every actor's."""
    status = node.status()
    return {status["supervisor"]["pid"]} | {a["pid"] for a in status["actors"]}


def actor_pid(node: whosthere.Node, name: str) -> int:
    return next(a["pid"] for a in node.status()["actors"] if a["name"] == name)


def alive(pids: set[int]) -> set[int]:
    """The pids that are still running (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out
