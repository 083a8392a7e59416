"""What a node's client address may be, and what a client can tell of one before it dials.

A node's client door (`Node(address=...)`, the supervisor's ROUTER that answers `Lookup`) is
an ipc:// socket file: clients are on the node's host (the owners a node watches are OS
processes there), and the file's mode says who may connect. A tcp:// address is a cluster
`listen` address, where peers meet, never where clients connect: it is refused at once, on
both sides, with a message that says so, rather than left to time out.

Pure: the caller reads the file's mode (`os.lstat`) and passes it in, so the checks are
tested without a file or a process.
"""

from __future__ import annotations

import stat

from whosthere.transport.runtime_dir import IPC_PATH_MAX

IPC = "ipc://"
_EXAMPLE = "'ipc:///run/app/whosthere.sock'"
_WHERE_CLIENTS_GO = (
    "clients connect to the node's ipc:// address (node.address, $WHOSTHERE_ADDRESS, "
    "whosthere serve --address)"
)


def check_node_address(address: object) -> str:
    """`Node(address=...)`, checked: an ipc:// absolute path short enough for a socket.

    Raises TypeError (not a str) or ValueError naming what is wanted. Whether the path's
    directory exists is the node's start to find out (`client_door.claim`): it may be made
    between the two.
    """
    if not isinstance(address, str):
        raise TypeError(f"address must be a str such as {_EXAMPLE}, got {address!r}")
    if address.startswith("tcp://"):
        raise ValueError(
            f"address={address!r} is a tcp:// address, which is a cluster listen address "
            f"(listen=, where peers meet); address= is where clients on this host connect: "
            f"an ipc:// path such as {_EXAMPLE}"
        )
    if not address.startswith(IPC):
        raise ValueError(f"address must be an ipc:// path such as {_EXAMPLE}, got {address!r}")
    path = ipc_path(address)
    if not path.startswith("/") or path.endswith("/") or "\0" in path:
        raise ValueError(
            f"address must name a socket file by its absolute path, such as {_EXAMPLE}, "
            f"got {address!r}"
        )
    size = len(path.encode())
    if size > IPC_PATH_MAX:
        raise ValueError(
            f"address path {path!r} is {size} bytes; an ipc:// socket path is at most "
            f"{IPC_PATH_MAX} bytes: choose a shorter one"
        )
    return address


def ipc_path(address: str) -> str:
    """The file an ipc:// address names."""
    return address[len(IPC) :]


def client_address_problem(address: str, mode: int | None) -> str | None:
    """Why a client cannot reach a node at `address`, when that shows before it dials.

    `mode` is the `st_mode` of the ipc:// path (None: no such file, or not ipc). A path where
    nothing is yet is no problem: a node may be starting there (the call then waits).
    """
    if address.startswith("tcp://"):
        return (
            f"{address} is a cluster address (a node's listen=, where peers meet), "
            f"not a node's client door: {_WHERE_CLIENTS_GO}"
        )
    if not address.startswith(IPC):
        return f"{address!r} is not an ipc:// address: {_WHERE_CLIENTS_GO}"
    if mode is not None and not stat.S_ISSOCK(mode):
        path = ipc_path(address)
        return f"{path} is not a socket, so not a node's client door: {_WHERE_CLIENTS_GO}"
    return None
