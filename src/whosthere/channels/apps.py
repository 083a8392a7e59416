"""Naming the user's objects on `whosthere serve`'s command line (`module:attribute`),
imported as uvicorn imports an app: from the app's directory (`--app-dir`, default the
current one), put first on `sys.path`.

The HTTP worker processes (`--workers N`) are spawned by multiprocessing, which gives each
the parent's `sys.path`; the node's processes find the user's Presence class by the
directory its ref names (`loading.class_ref`).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

CHANNELS_ENV = "WHOSTHERE_CHANNELS"  # the app every `serve --http` worker process loads


class NotServable(ValueError):
    """A `module:attribute` of the command line that names nothing `serve` can use (no such
    module or attribute, or not what the flag wants)."""


def use_app_dir(path: str) -> str:
    """Put `path` first on `sys.path`, as uvicorn's `--app-dir`; returns it, absolute."""
    absolute = os.path.abspath(path)
    if not os.path.isdir(absolute):
        raise NotServable(f"--app-dir {path}: no such directory")
    if absolute in sys.path:
        sys.path.remove(absolute)
    sys.path.insert(0, absolute)
    return absolute


def load_app(spec: str, flag: str = "--channels") -> Any:
    """`module:attribute` -> the object (an ASGI app); `NotServable` naming `flag` if the
    spec has another shape or names nothing. An error raised while the module runs is the
    module's own, and goes on as it is (with its traceback)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise NotServable(f"{flag} wants module:attribute, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _names_a_part(module_name, exc.name):
            raise  # the module was found, and imports something missing
        raise NotServable(
            f"{flag} {spec}: no module named {exc.name!r} (looked in {sys.path[0]} first)"
        ) from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise NotServable(f"{flag} {spec}: {module_name} has no {attribute!r}") from None
    return obj


def _names_a_part(module_name: str, missing: str) -> bool:
    """Whether `missing` is `module_name` or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")
