"""Tiny child programs for tests, and the processes a test run leaves behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import psutil

TAG_ENV = "WHOSTHERE_TEST_TAG"


def python(code: str, **kwargs: object) -> subprocess.Popen[bytes]:
    """Run a small Python program as a child process."""
    return subprocess.Popen([sys.executable, "-c", code], **kwargs)  # type: ignore[call-overload]


def sleeper(seconds: float = 60) -> subprocess.Popen[bytes]:
    """A cheap exec'd process to link and kill."""
    return subprocess.Popen(["sleep", str(seconds)])


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM a child (if it still runs), SIGKILL it after `grace` seconds, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tagged_processes(tag: str) -> dict[int, str]:
    """Living, non-zombie processes started under this test run (they carry its tag)."""
    found = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["pid"] == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(TAG_ENV) == tag:
                cmdline = " ".join(proc.cmdline())
                if "multiprocessing.resource_tracker" in cmdline:
                    continue  # Python's per-process helper of multiprocessing; ends with us
                found[proc.pid] = cmdline[:160]
    return found


def reap_children() -> None:
    """Collect exited children of the test process so they do not linger as zombies."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
