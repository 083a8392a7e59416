"""What DNS said of each name, and what is logged of it: once per change, not every period."""

from __future__ import annotations

import logging
import select
import threading

from tests.support.waiting import wait_until
from whosthere.actors.discovery_book import DiscoveryBook
from whosthere.actors.dns_watch import DnsWatch
from whosthere.transport.dns_names import DnsName, ResolutionFailed

SVC = DnsName("dns", "svc.example", 4000)
SRV = DnsName("srv", "_w._tcp.example", 0)
A, B = "tcp://10.0.0.1:4000", "tcp://10.0.0.2:4000"
T = 1000.0


def book() -> DiscoveryBook:
    return DiscoveryBook("me", [SVC, SRV], logging.getLogger("tests.discovery"))


def test_the_addresses_are_every_names_last_answer(caplog):
    b = book()
    assert b.addresses() == set()
    assert b.resolved(SVC, [B, A], T)
    assert not b.resolved(SVC, [A, B], T + 1)  # the same: no change
    assert b.resolved(SRV, [B, "tcp://10.0.0.3:5000"], T + 1)
    assert b.addresses() == {A, B, "tcp://10.0.0.3:5000"}
    stats = b.stats(T + 3)
    assert stats["dns:svc.example:4000"] == {
        "addresses": [A, B],
        "resolved_age": 2.0,
        "changed_age": 3.0,
        "error": None,
        "failed_age": None,
        "resolutions": 2,
        "failures": 0,
    }
    assert stats["srv:_w._tcp.example"]["addresses"] == [B, "tcp://10.0.0.3:5000"]


def test_a_failure_keeps_the_addresses_and_is_logged_once_per_reason(caplog):
    b = book()
    b.resolved(SVC, [A], T)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tests.discovery"):
        for i in range(5):
            b.failed(SVC, "svc.example: Name or service not known", T + i)
        b.failed(SVC, "svc.example: Temporary failure in name resolution", T + 5)
        assert b.addresses() == {A}
        stats = b.stats(T + 6)["dns:svc.example:4000"]
        assert stats["error"] == "svc.example: Temporary failure in name resolution"
        assert (stats["failed_age"], stats["failures"], stats["resolved_age"]) == (1.0, 6, 6.0)
        b.resolved(SVC, [A], T + 7)
        b.resolved(SVC, [A], T + 8)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "me: dns:svc.example:4000 does not resolve (svc.example: Name or service not known); "
        "still dialling 1 address(es) it named",
        "me: dns:svc.example:4000 does not resolve (svc.example: Temporary failure in name "
        "resolution); still dialling 1 address(es) it named",
        "me: dns:svc.example:4000 resolves again",
    ]
    assert b.stats(T + 8)["dns:svc.example:4000"]["error"] is None


def test_a_change_of_addresses_is_logged_at_info_once(caplog):
    b = book()
    with caplog.at_level(logging.INFO, logger="tests.discovery"):
        b.resolved(SVC, [A], T)
        b.resolved(SVC, [A], T + 1)
        b.resolved(SVC, [A, B], T + 2)
    assert [r.getMessage() for r in caplog.records] == [
        f"me: dns:svc.example:4000 names {A}",
        f"me: dns:svc.example:4000 names {A}, {B}",
    ]


def test_the_watch_resolves_each_name_every_period_off_the_callers_thread():
    calls: list[tuple[DnsName, str]] = []
    blocked = threading.Event()

    def resolver(name: DnsName) -> list[str]:
        calls.append((name, threading.current_thread().name))
        if name == SRV:
            blocked.wait(5)  # a resolver that hangs delays nobody else
            raise ResolutionFailed("no answer")
        if len(calls) > 3:
            raise OSError("resolver bug")
        return [A]

    watch = DnsWatch([SVC, SRV], 0.05, resolver)
    watch.start()
    try:
        results: list = []
        wait_until(
            lambda: results.extend(watch.drain()) or len(results) >= 3,
            timeout=5,
            what="three results of dns:svc.example",
        )
        assert results[0][0] == SVC and results[0][1] == [A]
        assert all(r[0] == SVC for r in results)  # srv hangs meanwhile
        blocked.set()
        wait_until(
            lambda: results.extend(watch.drain()) or any(r[0] == SRV for r in results),
            timeout=5,
            what="srv's failure",
        )
        assert (SRV, "no answer") in [(r[0], r[1]) for r in results]
        wait_until(
            lambda: (
                results.extend(watch.drain()) or "OSError: resolver bug" in [r[1] for r in results]
            ),
            timeout=5,
            what="the resolver's bug reported as a failure",
        )
        assert {thread for _, thread in calls} == {
            "dns dns:svc.example:4000",
            "dns srv:_w._tcp.example",
        }
    finally:
        watch.stop()
        blocked.set()


def test_the_watchs_pipe_wakes_a_poller():
    watch = DnsWatch([SVC], 0.05, lambda name: [A])
    watch.start()
    try:
        readable, _, _ = select.select([watch.fd], [], [], 5)
        assert readable == [watch.fd]
        assert watch.drain()[0][:2] == (SVC, [A])
    finally:
        watch.stop()
