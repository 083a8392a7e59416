"""Naming a user's class in one process and importing it in another.

The node's processes are fresh interpreters: they find the user's `Presence` subclass by
module and qualified name, or, for a class defined in a script run as `__main__`, by the
script's path (loaded as a module under another name, so its `if __name__ == "__main__"`
block does not run again).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

ClassRef = dict[str, str]  # {"module": ..., "qualname": ..., "path": ... (scripts only)}
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
    return ref


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
        module = importlib.import_module(ref["module"])
    obj: Any = module
    for part in ref["qualname"].split("."):
        obj = getattr(obj, part)
    return obj
