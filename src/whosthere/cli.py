"""The `whosthere` command: demo, serve, status, list, watch, bench."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import whosthere
from whosthere import demo
from whosthere.channels.apps import CHANNELS_ENV, NotServable, load_app, use_app_dir
from whosthere.client import resolve_address
from whosthere.errors import MessagesLost, WhosthereError
from whosthere.node import Node, node_status
from whosthere.presence import Presence
from whosthere.serve_flags import add_node_flags, given_node_options

HTTP_GRACE_S = 10.0  # default seconds the HTTP workers get to close their connections


def _serve(args: argparse.Namespace) -> int:
    """Run a node (and the HTTP server, with --http) until SIGTERM or SIGINT.

    Both signals stop it the same way: the HTTP server first (its connections closed, their
    presences leaving), then the node, which with `permdown_on_shutdown` (serve's default)
    says goodbye so its presences leave every peer at once. SIGINT is a developer's Ctrl-C
    and SIGTERM an orchestrator's stop (Kubernetes, systemd, docker): either way the node is
    gone for good, and a node that does not come back should not linger on its peers for
    down_period. Bounded: the HTTP workers close their connections within `--http-grace`
    (then the app's lifespan shutdown), the goodbye takes `node.DEPART_TIMEOUT` at most,
    then the node stops within `node.STOP_TIMEOUT`."""
    use_app_dir(args.app_dir)  # before anything of the user's is imported
    presence = _presence_class(args.presence) if args.presence else None
    try:
        node = Node(presence=presence, peers=args.peer, **given_node_options(args))
    except (TypeError, ValueError) as exc:  # an option's check: the flag's value, not a bug
        raise NotServable(str(exc)) from None
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    def stop_on_signals() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)

    stop_on_signals()
    with node:
        print(f"whosthere node {node.name!r} serving at {node.address}", flush=True)
        print(f"  export WHOSTHERE_ADDRESS={node.address}", flush=True)
        if node.listen:
            print(f"  peers join with --peer {node.cluster_address}", flush=True)
        elif node.engine:
            print(f"  meets its peers through {node.engine}", flush=True)
        print("  (Ctrl-C stops it; so does SIGTERM)", flush=True)
        if args.http:
            if not stop:  # a signal during start: stop now
                _serve_http(args, node.address)
            stop_on_signals()  # uvicorn's own handlers may stay (several workers)
        else:
            while not stop and node.alive:
                time.sleep(0.1)
        error = node.error
    if error is not None:
        print(f"whosthere: node stopped: {error}", file=sys.stderr)
        return 1
    return 0


def _serve_http(args: argparse.Namespace, address: str) -> None:
    """uvicorn in the foreground: the live page, and the user's Channels app if given.
    It handles SIGTERM and SIGINT itself (each worker closes its connections within
    `--http-grace`, then its tasks are cancelled) and returns; the node stops after."""
    try:
        import uvicorn  # noqa: PLC0415 (an optional dependency: the channels extra)
    except ImportError:
        raise SystemExit(
            "whosthere: --http needs uvicorn: pip install 'whosthere[channels]'"
        ) from None

    host, _, port = args.http.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"whosthere: --http wants HOST:PORT, got {args.http!r}")
    os.environ["WHOSTHERE_ADDRESS"] = address  # read by every worker process
    if args.channels:  # with the node's address set, as each worker will have it
        load_app(args.channels)  # fails here, clearly, rather than in each worker
        os.environ[CHANNELS_ENV] = args.channels  # each worker loads it (`channels.serve`)
    print(f"  the live page: http://{host}:{port}/", flush=True)
    ws = "wsproto" if importlib.util.find_spec("wsproto") else "auto"  # lighter per socket
    uvicorn.run(
        "whosthere.channels.serve:app",
        host=host,
        port=int(port),
        ws=ws,
        workers=args.workers,
        log_level="warning",
        ws_max_size=10_000_000,
        timeout_graceful_shutdown=max(0, math.ceil(args.http_grace)),
    )


def _presence_class(spec: str) -> type[Presence]:
    """The class `--presence module:Class` names; `NotServable` unless a Presence subclass."""
    cls = load_app(spec, "--presence")
    if not (isinstance(cls, type) and issubclass(cls, Presence)):
        raise NotServable(f"--presence {spec}: {cls!r} is not a whosthere.Presence subclass")
    return cls


def _format_status(status: dict[str, Any]) -> str:
    lines = [
        f"node       {status['name']}",
        f"address    {status['address']}",
        f"supervisor pid {status['supervisor']['pid']}, up {status['supervisor']['uptime']:.1f} s",
        "",
        f"  {'actor':<12} {'pid':>7} {'restarts':>8}  stats",
    ]
    for actor in status["actors"]:
        stats = actor.get("stats")
        text = ", ".join(f"{k}={v}" for k, v in stats.items()) if stats else "-"
        lines.append(f"  {actor['name']:<12} {actor['pid']!s:>7} {actor['restarts']:>8}  {text}")
    links = status["links"]
    lines += [
        "",
        f"links      {links['processes']} process(es) from {links['linkers']} linker(s)"
        f" (pidfd {links['pidfd']}, sweep {links['sweep']})",
    ]
    if "cluster" in status:
        where, bound = status["cluster"]["listen"], status["cluster"].get("bound", "")
        also = f" (bound {bound})" if bound and bound != where else ""
        how = "through" if "engine" in status["cluster"] else "listening at"
        lines += ["", f"cluster    {how} {where}{also}"]
        for name, peer in sorted(status["peers"].items()):
            clock = ", ".join(f"{r}={n}" for r, n in peer["clock"].items())
            lines.append(
                f"  peer {name:<16} {peer['status']:<5} vsn {peer['vsn']}, "
                f"heard {peer['last_heartbeat_age']:.1f} s ago, clock {clock}"
            )
        for name, why in sorted(status["cluster"]["refused"].items()):
            lines.append(f"  refused {name}: {why}")
        for name, found in sorted(status["cluster"].get("discovery", {}).items()):
            lines.append(f"  {name}: {_discovered(found)}")
    return "\n".join(lines)


def _discovered(found: dict[str, Any]) -> str:
    """What DNS said of a name, in a line of `whosthere status`."""
    said = ", ".join(found["addresses"]) or "no address yet"
    if found["resolved_age"] is not None:
        said += f" (resolved {found['resolved_age']:.1f} s ago)"
    if found["error"] is not None:
        said += f"; failing (tried {found['failed_age']:.1f} s ago): {found['error']}"
    return said


def _status(args: argparse.Namespace) -> int:
    status = node_status(resolve_address(args.address), timeout=args.timeout)
    print(json.dumps(status, indent=2) if args.json else _format_status(status))
    return 0


def _list(args: argparse.Namespace) -> int:
    presence = Presence.connect(args.address, timeout=args.timeout)
    try:
        listed = presence.list(args.topic)
    finally:
        presence.close()
    if args.json:
        print(json.dumps(listed, indent=2, default=repr))
        return 0
    print(f"{args.topic}: {len(listed)} key(s)")
    for key, entry in listed.items():
        for meta in entry["metas"]:
            fields = ", ".join(f"{k}={v}" for k, v in meta.items() if k != "phx_ref")
            print(f"  {key:<24} {meta.get('phx_ref', '')}  {fields}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    presence = Presence.connect(args.address, timeout=args.timeout)
    try:
        with presence.subscribe(args.topic) as sub:
            if not args.json:
                print(f"watching {args.topic!r} (Ctrl-C stops)", flush=True)
            while True:
                try:
                    msg = sub.get()
                except MessagesLost as lost:
                    print(f"!! {lost}", file=sys.stderr, flush=True)
                    continue
                if msg is None or msg.event != "presence_diff":
                    continue
                if args.json:
                    print(json.dumps(msg.payload, default=repr), flush=True)
                    continue
                stamp = time.strftime("%H:%M:%S")
                for key, entry in msg.payload["joins"].items():
                    word = "update" if key in msg.payload["leaves"] else "join"
                    for meta in entry["metas"]:
                        print(f"{stamp} {word:<6} {key}  {meta}", flush=True)
                for key, entry in msg.payload["leaves"].items():
                    if key not in msg.payload["joins"]:
                        for meta in entry["metas"]:
                            print(f"{stamp} leave  {key}  {meta}", flush=True)
    finally:
        presence.close()


def _demo(args: argparse.Namespace) -> int:
    return demo.main(workers=args.workers, kills=args.kills, duration=args.duration, seed=args.seed)


def bench_script() -> Path:
    """bench/run.py of the source checkout this package runs from (an editable install)."""
    return Path(whosthere.__file__).resolve().parents[2] / "bench" / "run.py"


def _bench(args: argparse.Namespace) -> int:
    script = bench_script()
    if not script.is_file():
        print(
            f"whosthere: the benchmarks ship with the source checkout, not the package "
            f"(no {script}); clone the repository and `pip install -e .` it",
            file=sys.stderr,
        )
        return 2
    spec = importlib.util.spec_from_file_location("whosthere_bench_run", script)
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return int(run.main(args.bench_args, prog="whosthere bench"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whosthere", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="workers join, update and crash on an embedded node")
    demo.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    demo.add_argument("--kills", type=int, default=3, help="workers killed with SIGKILL (3)")
    demo.add_argument("--duration", type=float, default=8.0, help="seconds (default 8)")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for a rerun")
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="run a node in the foreground until Ctrl-C")
    serve.add_argument(
        "--presence",
        default=None,
        metavar="MODULE:CLASS",
        help="the node's whosthere.Presence subclass (its fetch, init, handle_metas)",
    )
    serve.add_argument(
        "--peer",
        action="append",
        default=[],
        help="a peer's listen address tcp://HOST:PORT, or dns:NAME:PORT (every A/AAAA record "
        "of NAME), or srv:NAME (its SRV records); repeatable; default $WHOSTHERE_PEERS "
        "(comma-separated)",
    )
    serve.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="where --presence and --channels modules are found, first (default: .)",
    )
    serve.add_argument(
        "--http",
        default=None,
        metavar="HOST:PORT",
        help="also serve HTTP: the live page at /, and --channels",
    )
    serve.add_argument(
        "--channels",
        default=None,
        metavar="MODULE:APP",
        help="a whosthere.channels.Endpoint (or any ASGI app) to serve",
    )
    serve.add_argument("--workers", type=int, default=1, help="HTTP worker processes (1)")
    serve.add_argument(
        "--http-grace",
        type=float,
        default=HTTP_GRACE_S,
        metavar="SECONDS",
        help="on SIGTERM or SIGINT, seconds the HTTP workers get to close their connections "
        f"before their tasks are cancelled; the node stops after (default: {HTTP_GRACE_S:g})",
    )
    add_node_flags(serve)
    serve.set_defaults(func=_serve)

    status = sub.add_parser("status", help="print a running node's status")
    status.add_argument(
        "address", nargs="?", default=None, help="the node's address (default $WHOSTHERE_ADDRESS)"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    status.set_defaults(func=_status)

    for name, func, text in (
        ("list", _list, "print a topic's presences"),
        ("watch", _watch, "print a topic's presence diffs as they come"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("topic")
        cmd.add_argument(
            "address",
            nargs="?",
            default=None,
            help="the node's address (default $WHOSTHERE_ADDRESS)",
        )
        cmd.add_argument("--json", action="store_true", help="print JSON")
        cmd.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
        cmd.set_defaults(func=func)

    bench = sub.add_parser(
        "bench",
        help="run the benchmarks (source checkout only); `whosthere bench --help` for options",
        add_help=False,  # --help goes to bench/run.py, with every other option
    )
    bench.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must work even when started with SIGINT ignored (e.g. in the background)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = parser()
    args, rest = p.parse_known_args(argv)  # only `bench` takes options of its own
    if rest and args.command != "bench":
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.bench_args = rest
    try:
        return int(args.func(args))
    except WhosthereError as exc:
        print(f"whosthere: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except NotServable as exc:
        print(f"whosthere {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
