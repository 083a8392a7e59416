"""What names an owner on the wire, without a node: its OS pid, its id, and the start time
of its process as the node links it (read once per process, read anew in a forked child)."""

from __future__ import annotations

import os

from tests.support.processes import python
from whosthere.owners import OwnerIdentity
from whosthere.watch import PID_MAX, describe_owner, os_pid, owner_of
from whosthere.watch.identity import OWNER_SERIALS


def test_an_owner_names_this_process_and_a_serial_of_its_own():
    a, b = OwnerIdentity(), OwnerIdentity()
    assert a.pid == b.pid == os.getpid()
    assert a.id != b.id and os_pid(a.id) == os_pid(b.id) == os.getpid()
    assert repr(a) == f"<OwnerIdentity: owner {a.id >> 32} of pid {os.getpid()}>"
    a.closed = True
    assert repr(a) == f"<OwnerIdentity: owner {a.id >> 32} of pid {os.getpid()}, closed>"


def test_an_owner_is_described_by_its_serial_and_pid_never_its_packed_id():
    assert describe_owner(owner_of(1234, 3)) == "owner 3 of pid 1234"
    assert describe_owner(1234) == "pid 1234"  # a bare pid: the process itself
    assert describe_owner(owner_of(PID_MAX, OWNER_SERIALS - 1)) == (
        f"owner {OWNER_SERIALS - 1} of pid {PID_MAX}"
    )


FORKS = """
import os
from whosthere.owners import OwnerIdentity, start_of
from whosthere.watch import start_time

me = os.getpid()
assert start_of(OwnerIdentity().id) == start_time(me)  # read once, kept
child = os.fork()
if child == 0:  # the child's owners and start time are its own
    code = 1
    try:
        owner = OwnerIdentity()
        pid = os.getpid()
        assert owner.pid == pid != me
        assert start_of(owner.id) == start_time(pid)
        assert start_of(me) == start_time(me)  # the parent's, read as another process's
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(child, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_links_its_own_process_not_its_parents():
    """A single-threaded program forks (gunicorn --preload's workers): `os.register_at_fork`
    gives the child its own pid and start time, with no syscall per track."""
    assert python(FORKS).wait(timeout=30) == 0
