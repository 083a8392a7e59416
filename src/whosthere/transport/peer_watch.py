"""Hearing that the actor at the other end of a DEALER went away while calls were in flight.

A call to an actor that dies is never answered: the request may have died with the process.
An Erlang call fails at once when its callee dies; a ZeroMQ call would wait out its whole
timeout (5 s by default) while the supervisor has long restarted the actor. ZeroMQ tells
when the connection drops (a socket monitor's `EVENT_DISCONNECTED`: on ipc, the peer process
closed its end, or died), so the calls sent before that fail at once with `NodeUnavailable`
(whether they took effect is unknown, as after a timeout). Calls sent later wait in the
socket's queue for the restarted actor, as before.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from typing import Any, cast

import zmq

_EVENT = struct.Struct("=hi")  # a monitor event's first frame: event id, value
_serials = itertools.count()


class PeerWatch:
    """The disconnects of one socket, counted as they are read (`drops`)."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        addr = f"inproc://whosthere-peer-watch-{id(sock)}-{next(_serials)}"
        sock.monitor(addr, zmq.EVENT_DISCONNECTED)
        self._watched = sock
        # the monitor's end, on the same context (an asyncio socket's included) but sync:
        # read without waiting by whoever polls it
        self.socket: zmq.Socket[Any] = zmq.Context.shadow(sock.context.underlying).socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(addr)
        self.drops = 0

    def fileno(self) -> int:
        """A descriptor readable when events may wait (ZeroMQ's `FD`: see `read`)."""
        return cast(int, self.socket.getsockopt(zmq.FD))

    def read(self) -> bool:
        """Read the events that came; whether the connection dropped since the last read.
        Who waits on `socket`'s file descriptor (`zmq.FD`) reads once first: ZeroMQ signals
        it only for what comes after a read found nothing."""
        before = self.drops
        sock = self.socket
        while cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN:
            frames = sock.recv_multipart(zmq.NOBLOCK)
            if len(frames) == 2 and len(frames[0]) == _EVENT.size:
                event, _ = _EVENT.unpack(frames[0])
                if event & zmq.EVENT_DISCONNECTED:
                    self.drops += 1
        return self.drops != before

    def close(self) -> None:
        """Stop watching (before the watched socket closes) and close the monitor's end."""
        if not self._watched.closed:
            with contextlib.suppress(zmq.ZMQError):
                self._watched.disable_monitor()
        self.socket.close(linger=0)
