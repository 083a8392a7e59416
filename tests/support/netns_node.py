"""A node for tests/test_netns.py, run inside a network namespace:

    ip netns exec NS python -m tests.support.netns_node '{"name": ..., "listen": ...}'

It starts `whosthere.Node(**options)` (the cookie comes from `$WHOSTHERE_COOKIE`, as a node
listening off loopback needs one), prints one JSON line, `{"address", "runtime_dir", "pid"}`,
and keeps the node until its stdin closes or it gets SIGTERM; then it stops the node.
"""

from __future__ import annotations

import json
import signal
import sys

import whosthere


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the node on the way out
    with whosthere.Node(**json.loads(sys.argv[1])) as node:
        ready = {"address": node.address, "runtime_dir": str(node.runtime_dir), "pid": node.pid}
        print(json.dumps(ready), flush=True)
        sys.stdin.read()  # until the test closes our stdin (or dies)


if __name__ == "__main__":
    main()
