"""A shard's journal files, in the node's private runtime directory.

Two files per shard: `<name>.state`, the last dump of the whole state (`tracker.journal.dump`,
after an 8-byte generation number), and `<name>.journal.<generation>`, every change since
that dump, appended before the shard answers the call that made it. No fsync: the journal
must outlive the shard's process, not the host, and the page cache does that.

Compaction: once the journal has grown past half the dump (and `_COMPACT_MIN_BYTES`), a
new dump is written under the next generation. The dump goes to a temporary file that is
renamed over the old one, so a crash at any point leaves one whole dump and the journal of
its generation (or none, which is an empty one). A recovery therefore replays at most about a
third of what it restores (replaying a presence costs about 1.5 times loading it).

The dump is written by a forked child, as Redis writes its RDB: the child has the state
as it was at the fork, copy-on-write, while the shard goes on serving and starts the next
generation's journal at once. Until the child has renamed its dump into place, the older
generations stay: a crash meanwhile replays the old dump and both journals.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import mmap
import os
import random
import struct
import time
import warnings
from pathlib import Path
from typing import NamedTuple

from whosthere.actors.boot import die_with_parent
from whosthere.tracker import journal
from whosthere.tracker.journal import CorruptJournal, Recorder, Starts
from whosthere.tracker.state import State

_GEN = struct.Struct("<Q")
_COMPACT_MIN_BYTES = 1024 * 1024


class Replica(NamedTuple):
    """What a shard starts from."""

    state: State
    starts: Starts  # OS pid -> the start time it was linked with
    journal: ShardJournal | None  # None: the node is not durable
    recovered: bool  # the same replica as before a crash, from its journal


def open_replica(
    node_name: str, shard: str, runtime_dir: str | None, log: logging.Logger, *, record_delta: bool
) -> Replica:
    """The replica a shard was before it crashed, from its journal; else a new one (a new
    vsn). `runtime_dir` None: no journal. Journaling begins."""
    journal = None if runtime_dir is None else ShardJournal(runtime_dir, shard, log)
    recovered = journal.recover(record_delta=record_delta) if journal is not None else None
    if recovered is not None:
        state, starts = recovered
    else:
        vsn = time.time_ns() // 1000 * 1000 + random.randrange(1000)
        state, starts = State((node_name, vsn), record_delta=record_delta), {}
    if journal is not None:
        journal.start(state, starts, recovered=recovered is not None)
    return Replica(state, starts, journal, recovered is not None)


class ShardJournal:
    """Writes one shard's changes; reads them back after a crash."""

    def __init__(self, directory: str | Path, name: str, log: logging.Logger) -> None:
        self.dir = Path(directory)
        self.name = name
        self.log = log
        self.recorder = Recorder()
        self.gen = 0  # generation of the journal being written
        self.fd = -1
        self.written = 0  # bytes in the journals since the last whole dump
        self.dump_bytes = 0
        self.dumper: int | None = None  # pid of the child writing a dump
        self.dumping_gen = 0  # ...for this generation
        self.failed = False  # a write failed: journaling stopped (logged once)
        self.replayed = 0  # operations replayed at recovery

    # -- recovery --------------------------------------------------------------------------

    def recover(self, *, record_delta: bool) -> tuple[State, Starts] | None:
        """The state the shard had, or None if it never ran (or its dump is unreadable)."""
        collecting = gc.isenabled()
        gc.disable()  # the state holds no cycles; rescanning it as it grows costs 3x
        try:
            recovered = self._recover(record_delta)
            # the state holds no cycles: out of the collector's sight, or its first full
            # collection would scan every element (objects it drops are still freed)
            gc.freeze()
            return recovered
        finally:
            if collecting:
                gc.enable()

    def _recover(self, record_delta: bool) -> tuple[State, Starts] | None:
        path = self._state_path()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        for p in self.dir.glob(f"{self.name}.state.*.tmp"):  # a dump cut short by a crash
            p.unlink(missing_ok=True)
        started = time.monotonic()
        try:
            if len(data) < _GEN.size:
                raise CorruptJournal("a state file shorter than its header")
            (gen,) = _GEN.unpack_from(data)
            state, starts = journal.load(data[_GEN.size :], record_delta=record_delta)
        except CorruptJournal as exc:
            self.log.error(
                "%s: journal unreadable, starting empty as a new replica: %s", self.name, exc
            )
            self._remove_all()
            return None
        self.dump_bytes = len(data)
        # journals from the dump's generation on: an older dump's child may have died
        # before renaming, leaving two generations to replay
        for g in sorted(self._generations()):
            if g < gen:
                self._journal_path(g).unlink(missing_ok=True)
                continue
            self._replay(self._journal_path(g), state, starts)
            self.gen = g
        self.gen = max(self.gen, gen)
        self.log.info(
            "%s: recovered %d presences (vsn %d): %d operations replayed in %.3f s",
            self.name,
            len(state),
            state.vsn,
            self.replayed,
            time.monotonic() - started,
        )
        return state, journal.own_starts(state, starts)

    def _replay(self, path: Path, state: State, starts: Starts) -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            reader = journal.FrameReader(data)
            for i, ops in enumerate(reader):
                try:
                    journal.replay(state, ops, starts)
                except Exception as exc:  # never a crash loop: what replays is kept
                    self.log.error(
                        "%s: journal frame %d of %s does not replay (%s); cut there",
                        self.name,
                        i,
                        path.name,
                        exc,
                    )
                    reader.why = reader.why or "a frame that does not replay"
                    break
                self.replayed += len(ops)
            good, why = reader.good, reader.why
            del reader
        finally:
            if isinstance(data, mmap.mmap):
                with contextlib.suppress(BufferError):  # a view still held: closed when freed
                    data.close()
        if why is not None:
            self.log.warning(
                "%s: journal %s ends in %s; cut off after %d of %d bytes",
                self.name,
                path.name,
                why,
                good,
                size,
            )
            with open(path, "r+b") as f:
                f.truncate(good)
        self.written += good

    # -- writing ---------------------------------------------------------------------------

    def start(self, state: State, starts: Starts, *, recovered: bool) -> None:
        """Begin journaling: a first dump for a new shard, else go on with the journal."""
        if not recovered:
            self._remove_all()
            self.gen = 1
            self._write_dump(journal.dump(state, starts), self.gen)
        self._open(self.gen)
        state.record = self.recorder

    def flush(self) -> None:
        """Append what was recorded since the last flush (one write)."""
        ops = self.recorder.pending
        if not ops or self.failed:
            ops.clear()
            return
        data = journal.frame(self.recorder.take())
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self.failed = True
            self.log.error(
                "%s: journal write failed, journaling stopped: a crash of this "
                "shard will now lose its presences: %s",
                self.name,
                exc,
            )
            # a journal missing its tail would bring back an older state under the same
            # vsn, which peers would take for this one: better none (a new replica)
            with contextlib.suppress(OSError):
                self._remove_all()
            return
        self.written += len(data)

    def maybe_compact(self, state: State, starts: Starts) -> None:
        """Start a dump in a child once the journal outgrew the last dump."""
        if self.dumper is not None:
            self._reap()
            return
        if self.failed or self.written < max(_COMPACT_MIN_BYTES, self.dump_bytes // 2):
            return
        self.flush()
        gen = self.gen + 1
        parent = os.getpid()
        with warnings.catch_warnings():  # the child runs no thread and touches no socket
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: write the dump and go, touching nothing else
            code = 1
            try:
                gc.disable()  # no finalizer of the parent's sockets may run here
                die_with_parent(parent)
                self._write_dump(journal.dump(state, starts), gen)
                code = 0
            finally:
                os._exit(code)
        self.dumper, self.dumping_gen = pid, gen
        self._open(gen)
        self.written = 0

    def close(self) -> None:
        if self.fd >= 0:
            self.flush()
            os.close(self.fd)
            self.fd = -1
        if self.dumper is not None:  # the shard is stopping: wait, so no child is left
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.dumper, 0)
            self.dumper = None

    def status(self) -> dict[str, int | bool]:
        return {
            "generation": self.gen,
            "bytes": self.written,
            "dump_bytes": self.dump_bytes,
            "failed": self.failed,
        }

    # -- internals -------------------------------------------------------------------------

    def _reap(self) -> None:
        assert self.dumper is not None
        try:
            pid, status = os.waitpid(self.dumper, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.dumper, 1
        if pid == 0:
            return  # still writing
        self.dumper = None
        if os.waitstatus_to_exitcode(status) != 0:
            self.log.error(
                "%s: the journal's dump failed; the journal keeps growing until the next one",
                self.name,
            )
            return
        self.dump_bytes = self._state_path().stat().st_size
        for g in self._generations():
            if g < self.dumping_gen:
                self._journal_path(g).unlink(missing_ok=True)

    def _write_dump(self, body: bytes, gen: int) -> None:
        path = self._state_path()
        tmp = path.with_name(f"{path.name}.{gen}.tmp")
        with open(tmp, "wb") as f:
            f.write(_GEN.pack(gen))
            f.write(body)
        os.replace(tmp, path)
        self.dump_bytes = len(body) + _GEN.size

    def _open(self, gen: int) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self._journal_path(gen), flags, 0o600)
        self.gen = gen

    def _generations(self) -> list[int]:
        prefix = f"{self.name}.journal."
        out = []
        for p in self.dir.glob(prefix + "*"):
            suffix = p.name[len(prefix) :]
            if suffix.isdigit():
                out.append(int(suffix))
        return out

    def _remove_all(self) -> None:
        for g in self._generations():
            self._journal_path(g).unlink(missing_ok=True)
        for p in self.dir.glob(f"{self.name}.state*"):
            p.unlink(missing_ok=True)

    def _state_path(self) -> Path:
        return self.dir / f"{self.name}.state"

    def _journal_path(self, gen: int) -> Path:
        return self.dir / f"{self.name}.journal.{gen}"
