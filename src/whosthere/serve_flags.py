"""`whosthere serve`'s flags for the node's options, made from the options themselves.

One flag per keyword of `Node.__init__` and per field of `TrackerOptions`, named after it
(`max_restarts` is `--max-restarts`), typed by its annotation, its help text read from the
docstring that documents it (`Node.__init__`'s "Args", `TrackerOptions`' "Attributes") and
its default shown from the signature or the field. Nothing is copied: a new option is a new
flag, and `whosthere serve --help` says what the Node's docstring says. A flag not given is
not passed, so the Node's own default applies (but for `SERVE_DEFAULTS`, shown as such).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, NamedTuple

from whosthere.node import Node
from whosthere.tracker.options import TrackerOptions

# Node keywords whose flags `serve` writes itself: `--presence module:Class` names a class
# rather than holding one, and `--peer` is repeated, once per peer.
BY_HAND = frozenset({"presence", "peers"})
# Where `serve` departs from the Node's defaults. A served node is stopped by its operator
# (SIGTERM from Kubernetes, systemd or docker; Ctrl-C) and is gone for good: its presences
# leave every peer at once rather than after down_period (a rolling deploy leaves no zombies).
SERVE_DEFAULTS: dict[str, Any] = {"permdown_on_shutdown": True}


class NodeFlag(NamedTuple):
    """One option of the node as `serve` offers it."""

    name: str  # the keyword Node takes (and the flag, with dashes)
    hint: Any  # its annotation, resolved
    default: Any  # the Node's (or TrackerOptions') default
    doc: str  # what its docstring says of it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def node_flags() -> list[NodeFlag]:
    """Every option `serve` passes on to `Node`: its keywords, then the tracker's."""
    docs = documented(Node.__init__.__doc__ or "", "Args:")
    hints = typing.get_type_hints(Node.__init__)
    flags = [
        NodeFlag(name, hints[name], param.default, docs.get(name, ""))
        for name, param in inspect.signature(Node.__init__).parameters.items()
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
        and name not in {"self", *BY_HAND}
    ]
    docs = documented(TrackerOptions.__doc__ or "", "Attributes:")
    hints = typing.get_type_hints(TrackerOptions)
    flags += [
        NodeFlag(f.name, hints[f.name], f.default, docs.get(f.name, ""))
        for f in dataclasses.fields(TrackerOptions)
    ]
    return flags


def documented(doc: str, section: str) -> dict[str, str]:
    """Each name's text in a Google-style docstring section (`names: text`, indented lines
    going on with it; `a, b: text` documents both)."""
    lines = inspect.cleandoc(doc).splitlines()
    if section not in lines:
        return {}
    texts: dict[str, str] = {}
    names: list[str] = []
    for line in lines[lines.index(section) + 1 :]:
        if line and not line.startswith(" "):
            break  # the next section
        if line.startswith("    ") and not line.startswith("     "):
            head, _, text = line.strip().partition(": ")
            names = [name.strip() for name in head.split(",")]
            texts.update(dict.fromkeys(names, text))
        elif line.strip():
            for name in names:
                texts[name] += " " + line.strip()
    return texts


def add_node_flags(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every option of `node_flags()` (none given: the Node's defaults, but
    for `SERVE_DEFAULTS`)."""
    group = parser.add_argument_group("node options (those of whosthere.Node)")
    options = [
        o._replace(default=SERVE_DEFAULTS[o.name]) if o.name in SERVE_DEFAULTS else o
        for o in node_flags()
    ]
    flags = {o.name: o.flag for o in options} | {"peers": "--peer"}
    for option in options:
        group.add_argument(
            option.flag,
            dest=option.name,
            default=SERVE_DEFAULTS.get(option.name, argparse.SUPPRESS),
            help=_help(option, flags).replace("%", "%%"),
            **_parsing(option),
        )


def given_node_options(args: argparse.Namespace) -> dict[str, Any]:
    """The node's options given on the command line (and `SERVE_DEFAULTS`), as `Node`
    keywords."""
    return {o.name: getattr(args, o.name) for o in node_flags() if hasattr(args, o.name)}


def _help(option: NodeFlag, flags: dict[str, str]) -> str:
    """The option's docstring text in the command line's words, and its default."""
    text = _OPTION_NAME.sub(lambda m: _as_flag(m, flags), option.doc) or option.flag
    if option.default is None:
        return text  # its docstring says what None means
    if option.default is True or option.default is False:
        shown = option.flag if option.default else f"--no-{option.flag[2:]}"
    elif isinstance(option.default, tuple):
        shown = ",".join(map(str, option.default))
    else:
        shown = str(option.default)
    return f"{text.removesuffix('.')} (default: {shown})"


# an option as a docstring names it: `durable`, `durable=False`, or max_restarts bare
_OPTION_NAME = re.compile(r"`([a-z][a-z0-9_]*)(=True|=False)?`|\b([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b")


def _as_flag(match: re.Match[str], flags: dict[str, str]) -> str:
    """An option's name as its flag (`durable=False`: --no-durable); other words as they are."""
    name, value = match.group(1) or match.group(3), match.group(2)
    flag = flags.get(name)
    if flag is None:
        return match.group(0)
    return f"--no-{flag[2:]}" if value == "=False" else flag


def _parsing(option: NodeFlag) -> dict[str, Any]:
    """add_argument's keywords for the option's type; `TypeError` for one it cannot read."""
    hint = option.hint
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else hint
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint is int:
        return {"type": int, "metavar": "N"}
    if hint is float:
        return {"type": float, "metavar": "SECONDS"}
    if hint is str:
        return {"type": str, "metavar": option.name.upper()}
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (int, ...):
        return {"type": _ints, "metavar": "N,N,..."}
    raise TypeError(f"no command-line form for Node option {option.name}: {option.hint!r}")


def _ints(text: str) -> tuple[int, ...]:
    """`100,1000,10000` -> (100, 1000, 10000)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants N,N,... (integers), got {text!r}") from None
