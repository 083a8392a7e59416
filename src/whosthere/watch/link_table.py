"""Who links which process: Erlang's links for OS processes, as a table without I/O.

The supervisor watches a process while anyone links it; each linker hears once of each exit.
The table keeps both directions of the relation (process -> linkers, linker -> processes) in
step, and tells the supervisor which processes nobody links any more (stop watching them).
"""

from __future__ import annotations

from typing import Any

from whosthere.errors import MalformedFrame
from whosthere.watch.identity import PID_MAX, ProcessKey, is_pid

Linker = bytes  # the linker's socket identity


def process_key(item: Any) -> tuple[int, int | float | None]:
    """A linked process as it comes off the wire: [pid, start_time] (start_time None: the
    linker found it gone already)."""
    if (
        not isinstance(item, list | tuple)
        or len(item) != 2
        or not is_pid(item[0])
        or not isinstance(item[1], int | float | type(None))
    ):
        raise MalformedFrame(f"a linked process is [pid in 1..{PID_MAX}, start_time], got {item!r}")
    return (item[0], item[1])


class LinkTable:
    def __init__(self) -> None:
        self.linkers: dict[ProcessKey, set[Linker]] = {}  # process -> who links it
        self.linked: dict[Linker, set[ProcessKey]] = {}  # linker -> what it links

    def __len__(self) -> int:
        """Processes linked by anyone."""
        return len(self.linkers)

    def link(self, key: ProcessKey, linker: Linker) -> None:
        self.linkers.setdefault(key, set()).add(linker)
        self.linked.setdefault(linker, set()).add(key)

    def unlink(self, key: ProcessKey, linker: Linker) -> bool:
        """Drop one link; True if nobody links `key` any more."""
        mine = self.linked.get(linker)
        if mine is not None:
            mine.discard(key)
            if not mine:
                del self.linked[linker]
        return self._drop(key, linker)

    def exited(self, key: ProcessKey) -> set[Linker]:
        """`key` exited: the linkers to tell, each once; the process is linked no more."""
        linkers = self.linkers.pop(key, set())
        for linker in linkers:
            mine = self.linked.get(linker)
            if mine is not None:
                mine.discard(key)
                if not mine:
                    del self.linked[linker]
        return linkers

    def exited_many(self, keys: list[ProcessKey]) -> dict[Linker, list[ProcessKey]]:
        """A batch of exits: what to tell each linker, in exit order. All of it is decided
        before anything is sent, so a failure while telling one linker loses no exit."""
        notices: dict[Linker, list[ProcessKey]] = {}
        for key in keys:
            for linker in self.exited(key):
                notices.setdefault(linker, []).append(key)
        return notices

    def drop_linker(self, linker: Linker) -> list[ProcessKey]:
        """A linker has gone away: its links go; the processes nobody links any more."""
        return [key for key in self.linked.pop(linker, set()) if self._drop(key, linker)]

    def _drop(self, key: ProcessKey, linker: Linker) -> bool:
        linkers = self.linkers.get(key)
        if linkers is None:
            return False
        linkers.discard(linker)
        if linkers:
            return False
        del self.linkers[key]
        return True
