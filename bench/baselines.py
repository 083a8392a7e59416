"""Baselines measured in the same run: what raw pyzmq + msgpack and the kernel can do here."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import msgpack
import zmq

_CTX = multiprocessing.get_context("spawn")


_DIR: str | None = None  # this run's socket files, removed at exit


def _endpoint(name: str) -> str:
    global _DIR
    if _DIR is None:
        _DIR = tempfile.mkdtemp(prefix="whosthere-bench-")
        atexit.register(shutil.rmtree, _DIR, True)
    return f"ipc://{_DIR}/{name}.sock"


def _echo_server(endpoint: str, ready: Any) -> None:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    while True:
        ident, ref, body = sock.recv_multipart()
        msg = msgpack.unpackb(body)
        if msg == "stop":
            sock.send_multipart((ident, ref, body))
            break
        sock.send_multipart((ident, ref, msgpack.packb([1, msg])))
    sock.close(linger=0)


def _sink_server(endpoint: str, ready: Any) -> None:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    while True:
        ident, ref, body = sock.recv_multipart()
        msgpack.unpackb(body)
        if ref:  # a call: everything before it has been handled
            sock.send_multipart((ident, ref, body))
            if msgpack.unpackb(body) == "stop":
                break
    sock.close(linger=0)


def _start(target: Any, endpoint: str) -> multiprocessing.process.BaseProcess:
    ready = _CTX.Event()
    proc = _CTX.Process(target=target, args=(endpoint, ready))
    proc.start()
    ready.wait(30)
    return proc


def _dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def raw_round_trips(count: int) -> list[float]:
    """Seconds per DEALER->ROUTER->DEALER round trip of a small msgpack message."""
    endpoint = _endpoint("echo")
    server = _start(_echo_server, endpoint)
    return _time_round_trips(endpoint, server, msgpack.packb([3]), count, warmup=200)


def _time_round_trips(
    endpoint: str, server: multiprocessing.process.BaseProcess, body: bytes, count: int, warmup: int
) -> list[float]:
    """Seconds per sequential round trip of `body` (after `warmup` untimed), then stop `server`."""
    sock = _dealer(endpoint)
    samples = []
    for i in range(count + warmup):
        t = time.perf_counter()
        sock.send_multipart((i.to_bytes(8, "big"), body))
        msgpack.unpackb(sock.recv_multipart()[1])
        if i >= warmup:
            samples.append(time.perf_counter() - t)
    sock.close()
    _stop_server(endpoint, server)
    return samples


def _stop_server(endpoint: str, server: multiprocessing.process.BaseProcess) -> None:
    sock = _dealer(endpoint)
    sock.send_multipart((b"x", msgpack.packb("stop")))
    sock.recv_multipart()
    sock.close()
    server.join(10)


def raw_pipelined(count: int) -> float:
    """Messages per second, DEALER->ROUTER, one message per frame, until the last is handled."""
    endpoint = _endpoint("sink")
    server = _start(_sink_server, endpoint)
    sock = _dealer(endpoint)
    t = time.perf_counter()
    for i in range(count):
        sock.send_multipart((b"", msgpack.packb([21, "bench:raw", "n", i, False])))
    sock.send_multipart((b"r", msgpack.packb("stop")))
    sock.recv_multipart()
    rate = count / (time.perf_counter() - t)
    sock.close()
    server.join(10)
    return rate


def _raw_subscribers(endpoint: str, subs: int, count: int, done: Any) -> None:
    ctx = zmq.Context.instance()
    sockets = []
    for _ in range(subs):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(endpoint)
        s.setsockopt(zmq.SUBSCRIBE, b"t")
        sockets.append(s)
    poller = zmq.Poller()
    for s in sockets:
        poller.register(s, zmq.POLLIN)
    remaining = {s: count for s in sockets}
    while any(remaining.values()):
        for s, _ in poller.poll(10_000):
            while remaining[s]:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msgpack.unpackb(frames[1])
                remaining[s] -= 1
    done.set()
    for s in sockets:
        s.close(linger=0)


def raw_fanout(count: int, subscribers: int) -> float:
    """Messages per second from one PUB to `subscribers` SUB sockets in 2 processes."""
    endpoint = _endpoint("pub")
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    procs, dones = [], []
    for half in (subscribers // 2, subscribers - subscribers // 2):
        done = _CTX.Event()
        p = _CTX.Process(target=_raw_subscribers, args=(endpoint, half, count, done))
        p.start()
        procs.append(p)
        dones.append(done)
    for _ in range(subscribers):  # every SUB's subscription has arrived
        pub.recv()
    t = time.perf_counter()
    for i in range(count):
        pub.send_multipart((b"t", msgpack.packb([22, 1, i + 1, "n", i])))
    for d in dones:
        d.wait(120)
    rate = count / (time.perf_counter() - t)
    for p in procs:
        p.join(10)
    pub.close()
    return rate


def pidfd_kill_to_notice(procs: list[subprocess.Popen[bytes]]) -> list[float]:
    """Seconds from SIGKILL to a pidfd in an epoll becoming readable, one process at a time."""
    ep = select.epoll()
    samples = []
    for p in procs:
        fd = os.pidfd_open(p.pid)
        ep.register(fd, select.EPOLLIN)
        t = time.perf_counter()
        p.kill()
        ep.poll(10)
        samples.append(time.perf_counter() - t)
        ep.unregister(fd)
        os.close(fd)
        p.wait()
    ep.close()
    return samples


def _call_client(endpoint: str, count: int, batch: int, events: Any) -> None:
    ready, go, done = events
    sock = _dealer(endpoint)
    sock.send_multipart((b"w", msgpack.packb([3])))  # connected once this returns
    sock.recv_multipart()
    ready.set()
    go.wait(30)
    command = [30, 1, "t", "k", b"m" * 100]
    for i in range(count):
        body = msgpack.packb(command if batch == 1 else [37, [command] * batch])
        sock.send_multipart((i.to_bytes(8, "big"), body))
        msgpack.unpackb(sock.recv_multipart()[1])
    done.set()
    sock.close()


def raw_call_rate(clients: int, count: int, batch: int = 1) -> float:
    """Commands per second from `clients` processes, each making `count` sequential round
    trips of `batch` commands per frame, to one echo server (which unpacks and repacks)."""
    endpoint = _endpoint("echo-many")
    server = _start(_echo_server, endpoint)
    go = _CTX.Event()
    dones, procs, readies = [], [], []
    for _ in range(clients):
        ready, done = _CTX.Event(), _CTX.Event()
        p = _CTX.Process(target=_call_client, args=(endpoint, count, batch, (ready, go, done)))
        p.start()
        procs.append(p)
        dones.append(done)
        readies.append(ready)
    for r in readies:
        r.wait(30)
    t = time.perf_counter()
    go.set()
    for d in dones:
        d.wait(120)
    rate = clients * count * batch / (time.perf_counter() - t)
    for p in procs:
        p.join(10)
    _stop_server(endpoint, server)
    return rate


def _blob_server(endpoint: str, blob: bytes, ready: Any) -> None:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(endpoint)
    ready.set()
    while True:
        ident, ref, body = sock.recv_multipart()
        if msgpack.unpackb(body) == "stop":
            sock.send_multipart((ident, ref, body))
            break
        sock.send_multipart((ident, ref, blob))
    sock.close(linger=0)


def raw_list_round_trips(size: int, meta: dict, count: int, *, as_dicts: bool) -> list[float]:
    """Seconds per round trip whose reply carries `size` entries, decoded: as dicts in the
    list shape `{key: {"metas": [meta]}}` (the Python objects `list` returns), or as
    [key, packed meta] pairs (the bytes alone)."""
    listed = {**meta, "phx_ref": "GOwPPwk5GDftPAAA"}
    if as_dicts:
        blob = msgpack.packb([1, {f"user-{i}": {"metas": [listed]} for i in range(size)}])
    else:
        packed_meta = msgpack.packb(listed)
        blob = msgpack.packb([1, [[f"user-{i}", packed_meta] for i in range(size)]])
    endpoint = _endpoint("blob")
    ready = _CTX.Event()
    server = _CTX.Process(target=_blob_server, args=(endpoint, blob, ready))
    server.start()
    ready.wait(30)
    return _time_round_trips(endpoint, server, msgpack.packb([35, "t"]), count, warmup=5)


def pidfd_mass_kill(procs: list[subprocess.Popen[bytes]]) -> float:
    """Seconds from the first SIGKILL, sent to all of `procs` in a tight loop, until every
    one's pidfd in an epoll is readable; the processes are reaped after."""
    ep = select.epoll()
    fds = [os.pidfd_open(p.pid) for p in procs]
    for fd in fds:
        ep.register(fd, select.EPOLLIN)
    pending = set(fds)
    t = time.perf_counter()
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    while pending:
        for fd, _ in ep.poll(10, maxevents=len(pending)):
            if fd in pending:
                pending.discard(fd)
                ep.unregister(fd)
    elapsed = time.perf_counter() - t
    ep.close()
    for fd in fds:
        os.close(fd)
    for p in procs:
        p.wait()
    return elapsed


def _stamping_publisher(endpoint: str, ready: Any) -> None:
    """ROUTER at `endpoint`, PUB at `endpoint` + "-pub": each request publishes one message
    carrying the monotonic time it was sent (shared by every process of the host)."""
    ctx = zmq.Context.instance()
    router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
    router.bind(endpoint)
    pub.bind(endpoint.replace(".sock", "-pub.sock"))
    ready.set()
    while True:
        ident, ref, body = router.recv_multipart()
        if msgpack.unpackb(body) == "stop":
            router.send_multipart((ident, ref, body))
            break
        pub.send_multipart((b"t", msgpack.packb([time.perf_counter(), ref])))
        router.send_multipart((ident, ref, body))
    router.close(linger=0)
    pub.close(linger=0)


def raw_pub_sub_latency(count: int) -> list[float]:
    """Seconds from a PUB send in another process to the SUB here having the message decoded,
    one message at a time."""
    endpoint = _endpoint("stamp")
    server = _start(_stamping_publisher, endpoint)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint.replace(".sock", "-pub.sock"))
    sub.setsockopt(zmq.SUBSCRIBE, b"t")
    trigger = _dealer(endpoint)
    samples: list[float] = []
    i = 0
    while len(samples) < count:
        i += 1
        ref = i.to_bytes(8, "big")
        trigger.send_multipart((ref, msgpack.packb(1)))
        trigger.recv_multipart()
        while sub.poll(1000 if samples else 50):  # none at first: the SUB is not in place yet
            sent, got = msgpack.unpackb(sub.recv_multipart()[1])
            if got == ref:  # not a late one from the warm-up
                samples.append(time.perf_counter() - sent)
                break
    sub.close()
    trigger.close()
    _stop_server(endpoint, server)
    return samples
