"""Naming an ASGI app on a command line (`module:attribute`), for `whosthere serve`."""

from __future__ import annotations

import importlib
from typing import Any

CHANNELS_ENV = "WHOSTHERE_CHANNELS"  # the app every `serve --http` worker process loads


def load_app(spec: str) -> Any:
    """`module:attribute` -> the object (an ASGI app); ValueError for another shape."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--channels wants module:attribute, got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj
