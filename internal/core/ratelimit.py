"""Per-source budget of refused attempts (pure: the caller passes the time).

Each source may be refused `burst` times; the budget refills at `per_second`. A
source with an empty budget is turned away before any work is done for it. At
most `max_sources` sources are remembered (least recently refused forgotten
first), so an attacker cycling through addresses cannot grow it without bound.
"""

from __future__ import annotations

from collections import OrderedDict


class FailureLimiter:
    def __init__(self, *, burst: int = 20, per_second: float = 1.0, max_sources: int = 4096):
        self.burst = burst
        self.per_second = per_second
        self.max_sources = max_sources
        # source -> (budget left, time it was computed)
        self._budget: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _left(self, source: str, now: float) -> float:
        entry = self._budget.get(source)
        if entry is None:
            return float(self.burst)
        left, at = entry
        return min(float(self.burst), left + max(0.0, now - at) * self.per_second)

    def allowed(self, source: str, now: float) -> bool:
        """May `source` try (once more) at `now`?"""
        return self._left(source, now) >= 1.0

    def refused(self, source: str, now: float) -> None:
        """Charge one refused attempt to `source`."""
        left = max(0.0, self._left(source, now) - 1.0)
        self._budget[source] = (left, now)
        self._budget.move_to_end(source)
        while len(self._budget) > self.max_sources:
            self._budget.popitem(last=False)

    def __len__(self) -> int:
        return len(self._budget)


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.2:5000",
    "ipv6:[::1]:5000"); the whole string for other kinds (unix:...)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = rest.rsplit(":", 1)[0]
        return host.strip("[]").split("%", 1)[0]
    return peer
