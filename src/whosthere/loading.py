"""Naming a user's class in one process and importing it in another, and calling it.

The node's processes are fresh interpreters: they find the user's `Presence` subclass by
module and qualified name, or, for a class defined in a script run as `__main__`, by the
script's path (loaded as a module under another name, so its `if __name__ == "__main__"`
block does not run again). Its callbacks may be `async def`: `settle` awaits what they
return.

A module's ref also names the directory it was imported from (`root`), which a process
that lacks it puts first on its `sys.path` before importing, as the process that named
the class had it (`whosthere serve --app-dir`, uvicorn's rule; a script's own directory; a
`sys.path.insert` of the user's). The ref says where the class is, so every process that
loads it, a restarted actor included, finds the same one, and nothing else changes: no
`PYTHONPATH` set for the node's processes, which would also reach every program they or
the user's callbacks start.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any

# {"module": ..., "qualname": ..., "path": ... (scripts only), "root": ... (modules)}
ClassRef = dict[str, str]
_SCRIPT_MODULE = "__whosthere_main__"


def class_ref(cls: type) -> ClassRef:
    """How another process imports `cls`; `TypeError` if it cannot (a class defined in a
    function or in an interactive session)."""
    ref = {"module": cls.__module__, "qualname": cls.__qualname__}
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"{cls.__qualname__} is defined inside a function; define it at module "
            "level so that the node's processes can import it"
        )
    if cls.__module__ == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if path is None:
            raise TypeError(
                f"{cls.__qualname__} is defined in an interactive session; define it in a "
                "module so that the node's processes can import it"
            )
        ref["path"] = path
    else:
        root = import_root(cls.__module__)
        if root is not None:
            ref["root"] = root
    return ref


def import_root(module_name: str) -> str | None:
    """The `sys.path` entry the module `module_name` was imported from (`/x` for `a.b` in
    `/x/a/b.py` or `/x/a/b/__init__.py`), or None if it was not imported from a directory."""
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if not isinstance(file, str):
        return None
    path = os.path.abspath(file)
    for _ in range(module_name.count(".") + (os.path.basename(path) == "__init__.py") + 1):
        path = os.path.dirname(path)
    return path if os.path.isdir(path) else None


def load_class(ref: ClassRef) -> Any:
    """The class `class_ref` described."""
    if "path" in ref:
        module = sys.modules.get(_SCRIPT_MODULE)
        if module is None:
            spec = importlib.util.spec_from_file_location(_SCRIPT_MODULE, ref["path"])
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {ref['path']}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[_SCRIPT_MODULE] = module
            spec.loader.exec_module(module)
    else:
        root = ref.get("root")
        if root is not None and root not in sys.path:
            sys.path.insert(0, root)
        module = importlib.import_module(ref["module"])
    obj: Any = module
    for part in ref["qualname"].split("."):
        obj = getattr(obj, part)
    return obj


def settle(value: Any, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """A user callback's result, awaited if it is awaitable (an `async def` callback): on
    `loop` (an actor's own, kept for its life, so the callback's resources may live on), or
    on a loop of its own. From code that runs in an event loop, use `whosthere.aio`, which
    awaits it there."""
    if not inspect.isawaitable(value):
        return value

    async def result() -> Any:
        return await value

    if loop is not None:
        return loop.run_until_complete(result())
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(result())
    if inspect.iscoroutine(value):
        value.close()  # never awaited: said here, not warned about later
    raise TypeError(
        "an async callback called from the synchronous client inside a running "
        "event loop: use whosthere.aio there"
    )
