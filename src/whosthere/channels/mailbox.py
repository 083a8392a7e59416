"""What reaches a joined channel's mailbox (`joined.Joined`), one record type per kind.

A Phoenix channel process takes its messages one at a time; ours are these records, queued
in order and handled by type (`match`), so a kind cannot be misspelt or carry the wrong
fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from whosthere.channels import frames

# Why a channel ends, as `Channel.terminate` is told: the client left, the connection
# closed, a second join of the topic, the channel raised `Stop`, a handler crashed.
EndReason: TypeAlias = Literal["left", "closed", "duplicate_join", "stop", "crash"]


@dataclass(frozen=True, slots=True)
class Join:
    """The client's `phx_join` (the first message of every channel)."""

    msg: frames.Frame


@dataclass(frozen=True, slots=True)
class In:
    """A frame from the client for `handle_in`."""

    msg: frames.Frame


@dataclass(frozen=True, slots=True)
class Leave:
    """The client's `phx_leave`: the ok reply, then the channel ends ("left")."""

    msg: frames.Frame


@dataclass(frozen=True, slots=True)
class Out:
    """A broadcast of an event the channel intercepts, for `handle_out`."""

    event: str
    payload: Any


@dataclass(frozen=True, slots=True)
class End:
    """End the channel from outside its handlers (a duplicate join, the connection gone)."""

    reason: EndReason


@dataclass(frozen=True, slots=True)
class ResendState:
    """Push `presence_state` again: the worker's subscription lost messages of the topic."""


Mail: TypeAlias = Join | In | Leave | Out | End | ResendState
