"""What DNS said of each name peers are found under, for the cluster actor (pure: results
and time come in as arguments).

A name's addresses are those of its last successful resolution: a failure (no answer, no
such name, a resolver down) changes nothing but the name's error, so a DNS outage never
makes a node stop dialling its peers. A failure is logged when it starts or its reason
changes, and the name's return once; a change of addresses is logged at info: what an
operator wants in the log is each change, not a line every period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from whosthere.transport.dns_names import DnsName


@dataclass
class NameState:
    """One name's last resolution."""

    addresses: list[str] = field(default_factory=list)  # as last resolved (sorted)
    resolved_at: float | None = None  # when it last resolved
    changed_at: float | None = None  # when its addresses last changed
    error: str | None = None  # why it failed, while it fails
    failed_at: float | None = None  # when it last failed, while it fails
    resolutions: int = 0  # answers and failures, both
    failures: int = 0


class DiscoveryBook:
    def __init__(self, me: str, names: list[DnsName], log: logging.Logger) -> None:
        self.me = me
        self.log = log
        self.names: dict[DnsName, NameState] = {n: NameState() for n in names}

    def resolved(self, name: DnsName, addresses: list[str], now: float) -> bool:
        """`name` resolved to `addresses`. True if they changed (the union may have)."""
        state = self.names[name]
        state.resolutions += 1
        if state.error is not None:
            self.log.warning("%s: %s resolves again", self.me, name)
        state.error = state.failed_at = None
        state.resolved_at = now
        addresses = sorted(addresses)
        if addresses == state.addresses:
            return False
        self.log.info("%s: %s names %s", self.me, name, ", ".join(addresses))
        state.addresses = addresses
        state.changed_at = now
        return True

    def failed(self, name: DnsName, error: str, now: float) -> None:
        """`name` did not resolve: its addresses stay as they were, to be tried again."""
        state = self.names[name]
        state.resolutions += 1
        state.failures += 1
        if state.error != error:
            kept = f"; still dialling {len(state.addresses)} address(es) it named" * bool(
                state.addresses
            )
            self.log.warning("%s: %s does not resolve (%s)%s", self.me, name, error, kept)
        state.error = error
        state.failed_at = now

    def addresses(self) -> set[str]:
        """Every address some name names now."""
        return {a for state in self.names.values() for a in state.addresses}

    def stats(self, now: float) -> dict[str, Any]:
        """Per name (as spelt in `peers`): its addresses, how long ago it resolved and they
        changed, and its error while it fails."""

        def age(at: float | None) -> float | None:
            return None if at is None else round(now - at, 3)

        return {
            str(name): {
                "addresses": state.addresses,
                "resolved_age": age(state.resolved_at),
                "changed_age": age(state.changed_at),
                "error": state.error,
                "failed_age": age(state.failed_at),
                "resolutions": state.resolutions,
                "failures": state.failures,
            }
            for name, state in self.names.items()
        }
