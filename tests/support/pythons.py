"""Other Pythons of the machine (pyenv's), each with a venv holding the client's packages.

Some behaviour differs between Python releases (asyncio's cancel rules changed in 3.12): a
test runs a program under each release it finds, the package imported from the checkout.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".pythons"  # one venv per release, made once, kept between runs (.gitignore)


def _runs(exe: str, version: str) -> bool:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def find(version: str) -> str | None:
    """An interpreter of `version` ("3.12"): this one, or one under pyenv; None if none."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for exe in sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"), reverse=True):
        if _runs(exe, version):
            return exe
    return None


def client_python(version: str) -> str:
    """An interpreter of `version` that can import whosthere from `src/` (skip if none)."""
    exe = find(version)
    if exe is None:
        pytest.skip(f"no Python {version} on this machine (looked in pyenv's versions)")
    if exe == sys.executable:
        return exe
    venv = VENVS / version
    python = venv / "bin" / "python"
    needs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # the checkout's client imports there: every dependency it needs is installed (a new
    # one in pyproject.toml makes the venv again)
    probe = [python, "-c", "import whosthere.aio"]
    found = (
        python.exists()
        and not subprocess.run(
            probe, env=env_for_checkout(), capture_output=True, check=False
        ).returncode
    )
    if not found:
        subprocess.run([exe, "-m", "venv", "--clear", venv], check=True, timeout=120)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *needs],
            check=True,
            timeout=600,
        )
    return str(python)


def env_for_checkout() -> dict[str, str]:
    """The environment in which another interpreter imports whosthere from this checkout."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT)) if p)
    return {**os.environ, "PYTHONPATH": path}
