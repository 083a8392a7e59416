"""The sync and asyncio clients expose the same methods (DESIGN section 6: "the same names
and errors"): names, parameter names, kinds and defaults, compared with `inspect`. Sync and
async aside, and the dunder protocols mapped (`__enter__` to `__aenter__`, `__iter__` to
`__aiter__`...). Every difference is listed below with its reason."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

import whosthere
import whosthere.aio
from whosthere.client import NodeInfo

PAIRS = [
    (whosthere.Presence, whosthere.aio.AsyncPresence),
    (whosthere.PubSub, whosthere.aio.AsyncPubSub),
    (whosthere.Subscription, whosthere.aio.AsyncSubscription),
    (whosthere.Links, whosthere.aio.AsyncLinks),
    (whosthere.Owner, whosthere.aio.AsyncOwner),
]

# sync protocol -> its asyncio twin; other dunders are not part of the comparison
PROTOCOLS = {
    "__init__": "__init__",
    "__enter__": "__aenter__",
    "__exit__": "__aexit__",
    "__iter__": "__aiter__",
    "__next__": "__anext__",
}

# (class, member) present on one side only, and why
ONE_SIDED = {
    ("Presence", "fetch"): "the user's callback, defined on the class users subclass; an "
    "AsyncPresence runs the `fetch` of the class it was made from (`presence=`)",
    ("Presence", "connect_async"): "the user's class makes its asyncio twin",
    ("Links", "socket"): "a socket to poll beside others with zmq.Poller; an asyncio "
    "program awaits `get` instead",
    ("AsyncSubscription", "open"): "an asyncio subscription subscribes when it is opened "
    "(`async with`): a constructor cannot await; a sync one is open when made",
}

# (class, member) -> parameters present on one side only, and why
ONE_SIDED_PARAMETERS = {
    ("AsyncPresence", "__init__"): {"presence"},  # the class whose `fetch` it runs
    ("AsyncPresence", "connect"): {"presence"},
}


def surface(cls: type) -> dict[str, Any]:
    """Public members by their sync name (asyncio protocols mapped back)."""
    back = {a: s for s, a in PROTOCOLS.items()}
    found = {}
    for name in dir(cls):
        if name.startswith("_") and name not in PROTOCOLS.keys() | back.keys():
            continue
        if hasattr(object, name) and name != "__init__":
            continue
        found[back.get(name, name)] = inspect.getattr_static(cls, name)
    return found


def is_method(member: Any) -> bool:
    """A function, classmethod or staticmethod (not a property or a slot)."""
    return inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod))


def parameters(member: Any) -> list[tuple[str, Any, Any]]:
    if isinstance(member, (classmethod, staticmethod)):
        member = member.__func__
    return [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]


@pytest.mark.parametrize(("sync", "aio"), PAIRS, ids=[s.__name__ for s, _ in PAIRS])
def test_both_clients_have_the_same_members(sync: type, aio: type):
    ours, theirs = surface(sync), surface(aio)
    only_sync = {n for n in ours.keys() - theirs.keys() if (sync.__name__, n) not in ONE_SIDED}
    only_aio = {
        PROTOCOLS.get(n, n)
        for n in theirs.keys() - ours.keys()
        if (aio.__name__, PROTOCOLS.get(n, n)) not in ONE_SIDED
    }
    assert (only_sync, only_aio) == (set(), set())


@pytest.mark.parametrize(("sync", "aio"), PAIRS, ids=[s.__name__ for s, _ in PAIRS])
def test_both_clients_take_the_same_parameters(sync: type, aio: type):
    ours, theirs = surface(sync), surface(aio)
    for name in sorted(ours.keys() & theirs.keys()):
        mine, twin = ours[name], theirs[name]
        assert type(mine) is type(twin) or not isinstance(mine, (property, classmethod)), name
        if not is_method(mine):
            continue
        skip = ONE_SIDED_PARAMETERS.get((aio.__name__, PROTOCOLS.get(name, name)), set())
        left = [p for p in parameters(mine) if p[0] not in skip]
        right = [p for p in parameters(twin) if p[0] not in skip]
        assert left == right, f"{sync.__name__}.{name} vs {aio.__name__}"


@pytest.mark.parametrize(("sync", "aio"), PAIRS, ids=[s.__name__ for s, _ in PAIRS])
def test_what_waits_on_the_node_is_awaited_in_asyncio(sync: type, aio: type):
    """A method that makes a round trip in the sync client is a coroutine function (or
    returns an awaitable: `AsyncOwner.close`) in the asyncio one."""
    local = {"subscribe", "unsubscribe", "owner", "__iter__", "__next__", "__init__"}
    local |= {"node_gone", "node_back"}  # told by the revival thread, not called by users
    local |= {"close"} if aio is whosthere.aio.AsyncSubscription else set()
    ours, theirs = surface(sync), surface(aio)
    for name in ours.keys() & theirs.keys() - local:
        twin = theirs[name]
        if not is_method(twin):
            continue
        func = twin.__func__ if isinstance(twin, (classmethod, staticmethod)) else twin
        awaitable = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
        returns = inspect.signature(func).return_annotation
        assert awaitable or "Future" in str(returns), f"{aio.__name__}.{name}"


def test_the_one_sided_members_exist_where_they_are_listed():
    classes = {cls.__name__: cls for pair in PAIRS for cls in pair}
    for cls_name, member in ONE_SIDED:
        assert hasattr(classes[cls_name], member), (cls_name, member)


def test_both_clients_hold_the_same_public_attributes(tmp_path):
    """What `__init__` sets for users to read (`info`, `timeout`, `pool_size`...); no node
    is needed: nothing here makes a round trip."""
    endpoint = f"ipc://{tmp_path}/nobody"
    info = NodeInfo(
        "n", endpoint, {"shard.0": endpoint, "pubsub": endpoint, "pubsub_pub": endpoint}
    )

    def public(obj: object) -> set[str]:
        return {name for name in vars(obj) if not name.startswith("_")}

    async def twins() -> list[tuple[set[str], set[str]]]:
        presence, apresence = whosthere.Presence(info), whosthere.aio.AsyncPresence(info)
        pubsub, apubsub = whosthere.PubSub(info), whosthere.aio.AsyncPubSub(info)
        links, alinks = whosthere.Links(endpoint), whosthere.aio.AsyncLinks(endpoint)
        sub = whosthere.Subscription(pubsub, (), hwm=10)
        asub = whosthere.aio.AsyncSubscription(apubsub, (), hwm=10)
        try:
            return [
                (public(presence), public(apresence)),
                (public(pubsub), public(apubsub)),
                (public(links), public(alinks)),
                (public(sub), public(asub)),
            ]
        finally:
            sub.close()
            asub.close()
            presence.close()
            pubsub.close(flush_timeout=0)
            links.close()
            await apresence.close()
            await apubsub.close()
            await alinks.close()

    for ours, theirs in asyncio.run(twins()):
        assert ours == theirs
