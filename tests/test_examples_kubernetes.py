"""examples/kubernetes: every command the manifests and the Dockerfile run is one the CLI
takes, and every `serve` among them makes a `Node` whose options pass its checks.

Nothing here can run Kubernetes or build an image; what can drift is the command lines, so
they go through the CLI's own parser (`whosthere.cli.parser`) and `serve`'s way to a `Node`
(`serve_flags.given_node_options`), with the pod's environment as Kubernetes would give it:
`$(VAR)` expanded from the container's `env`, the Secrets' values from the same file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import whosthere
from whosthere.cli import parser
from whosthere.serve_flags import given_node_options

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "kubernetes"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))
POD_FIELDS = {"status.podIP": "10.42.0.7", "metadata.name": "whosthere-0"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def secrets(docs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {
        (d["metadata"]["name"], key): value
        for d in docs
        if d["kind"] == "Secret"
        for key, value in d.get("stringData", {}).items()
    }


def containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def environment(container: dict[str, Any], secret: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's environment as the kubelet makes it (fields and secrets read)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = POD_FIELDS[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret[(ref["name"], ref["key"])]
    return env


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` in command and args (an unknown one stays as written)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


def commands(path: Path) -> list[tuple[list[str], dict[str, str]]]:
    """Every command the file's containers run, with their environment: the main command
    and every exec probe."""
    docs = documents(path)
    secret = secrets(docs)
    out = []
    for container in containers(docs):
        env = environment(container, secret)
        out.append(([expand(a, env) for a in container["command"] + container["args"]], env))
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if "exec" in container.get(probe, {}):
                out.append(([expand(a, env) for a in container[probe]["exec"]["command"]], env))
    return out


def check_command(argv: list[str], env: dict[str, str], monkeypatch) -> None:
    assert argv[0] == "whosthere", f"not a whosthere command: {argv}"
    assert not any("$(" in a for a in argv), f"a variable the pod does not define: {argv}"
    args = parser().parse_args(argv[1:])  # argparse exits (SystemExit) on a bad flag
    if args.command != "serve":
        return
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    node = whosthere.Node(peers=args.peer, **given_node_options(args))  # its checks, unstarted
    assert node.name and not node.alive
    if "WHOSTHERE_ENGINE_URL" in env:  # the Redis engine, its URL from the Secret
        assert node.engine and "replace-me" not in node.engine  # the password hidden
    if any(a.startswith("--listen") for a in argv):
        assert node.listen and node.clustered


def test_there_are_manifests_for_dns_and_redis():
    assert {p.name for p in MANIFESTS} >= {"dns.yaml", "redis.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_command_of_the_manifests_is_one_the_cli_takes(path, monkeypatch):
    runs = commands(path)
    assert any(argv[:2] == ["whosthere", "serve"] for argv, _ in runs)
    for argv, env in runs:
        check_command(argv, env, monkeypatch)


def test_the_dns_manifest_finds_peers_by_the_headless_services_name():
    docs = documents(EXAMPLES / "dns.yaml")
    headless = next(
        d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"
    )
    ((argv, _),) = [(a, e) for a, e in commands(EXAMPLES / "dns.yaml") if a[1] == "serve"]
    peers = [a.split("=", 1)[1] for a in argv if a.startswith("--peer=")]
    port = headless["spec"]["ports"][0]["port"]
    assert peers == [f"dns:{headless['metadata']['name']}.default.svc.cluster.local:{port}"]
    assert headless["spec"]["publishNotReadyAddresses"] is True  # peers found before ready


def test_the_dockerfiles_command_is_one_the_cli_takes(monkeypatch):
    (cmd,) = [
        line
        for line in (EXAMPLES / "Dockerfile").read_text().splitlines()
        if line.startswith("CMD")
    ]
    check_command(json.loads(cmd.removeprefix("CMD")), {}, monkeypatch)
