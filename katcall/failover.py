"""Riding through a leader failover: which failed calls katcall may send again, and the
back-off and deadline it retries under.

While a leader dies or is partitioned away and another takes over (up to the election's
lease TTL plus a moment), every endpoint answers UNAVAILABLE: the dead leader cannot be
reached, the others say "not the leader" (naming the old one) or "no leader elected yet".
Instead of failing at once, katcall tries the known endpoints again with back-off until
`--request-timeout` (default 30 s) has passed, and says so once on stderr.

A call is sent again only when doing so cannot do anything twice:
- the server surely did not execute it (it was never reached, or it refused because it does
  not lead or has no quorum), for every method; or
- the method is repeatable: reads, and `Apply`, which is idempotent by construction: the
  same bundle applied again changes nothing (no new generation), and an apply with an
  expected resourceVersion is refused as stale once the first one went through.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_REQUEST_TIMEOUT = 30.0
BACKOFF = (0.25, 2.0)

REPEATABLE_METHODS = frozenset(
    {
        "Apply",
        "GetWorkload",
        "ListWorkloads",
        "ListRevisions",
        "ListInstances",
        "ListEvents",
        "ListNamespaces",
        "ListNodes",
        "GetNode",
        "ListTokens",
        "ListIngressCertificates",
        "ListAudit",
        "ListInstanceStats",
        "GetClusterInfo",
        "CordonNode",
        "UncordonNode",
    }
)

# Parts of UNAVAILABLE details meaning the request was not executed.
_REFUSED = (
    "not the leader",
    "no leader elected",
    "no quorum",
    "leadership changed",
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "not reachable",
)


def not_executed(details: str) -> bool:
    """Whether an UNAVAILABLE answer with these details means "not executed"."""
    low = details.lower()
    return any(part in low for part in _REFUSED)


def waits_for_leader(code: object, message: str) -> bool:
    """Whether a failed call is worth another try: UNAVAILABLE, except "no quorum" (a
    lasting state that the user must hear of at once, not a failover)."""
    import grpc

    return code == grpc.StatusCode.UNAVAILABLE and "no quorum" not in message.lower()


def may_retry(method: str, executed_maybe: bool) -> bool:
    return not executed_maybe or method in REPEATABLE_METHODS


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Retry:
    """The retry budget of one call: `pause()` sleeps for the next back-off step and says
    whether another attempt fits before the deadline."""

    timeout: float = DEFAULT_REQUEST_TIMEOUT
    announce: Callable[[str], None] = _stderr
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _deadline: float = field(init=False)
    _delay: float = field(init=False, default=BACKOFF[0])
    _told: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._deadline = self.clock() + self.timeout

    def left(self) -> float:
        return max(0.0, self._deadline - self.clock())

    def pause(self, why: str) -> bool:
        wait = self._delay * (0.5 + random.random() / 2)
        if self.left() <= wait:
            return False
        if not self._told:
            self.announce(
                f"katcall: waiting for a leader ({why}); retrying for up to {self.timeout:g}s"
            )
            self._told = True
        self.sleep(wait)
        self._delay = min(BACKOFF[1], self._delay * 2)
        return True
