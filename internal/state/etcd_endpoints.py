"""The endpoints of one etcd cluster and failover between them: which endpoint a
call goes to, one stub per endpoint and service, the worker threads blocking
gRPC calls run on, and how a gRPC failure becomes an `EtcdError`.

An endpoint that answers UNAVAILABLE or misses a deadline is skipped for
`retry_failed_after` seconds; when every endpoint has failed recently all are
tried again. `run(..., retry=True)` tries the next endpoint within the same
call (reads); writes are not retried, because a write that timed out may still
have been applied.

While etcd's raft leadership changes (a member that led raft died, or the KAT leader
moved raft leadership away: kat_agent/leader/raft_leader.py) etcd refuses requests it
has not carried out ("raft proposal dropped", "leader changed", "no leader"). Those are
sent again after a short back-off, writes included, for up to `RAFT_CHANGE_BUDGET` of the
call's timeout: a raft election takes about one election timeout, a transfer much less.

`renew(creds)` (a renewed client certificate) replaces every endpoint's channel:
calls from then on go to new channels that handshake with the new certificate;
the old channels are closed once the calls already on them have had their time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc
from pyetcd.watch import Watcher

from internal.observability import metrics
from internal.state.etcd_values import (
    EtcdError,
    EtcdNoAnswer,
    EtcdNotExecuted,
    EtcdUnavailable,
    LeaseNotFound,
    WatchCompacted,
    parse_endpoint,
)
from internal.state.etcd_wire import GRPC_OPTIONS, STUBS, WATCH_METADATA

T = TypeVar("T")

# What etcd says when it refused a request without carrying it out because raft
# leadership is changing (raft's ErrProposalDropped; etcd's ErrLeaderChanged, which
# only reads get; ErrNoLeader).
_NOT_EXECUTED = ("raft proposal dropped", "leader changed", "no leader")
# The share of the call's timeout spent sending such refused requests again.
RAFT_CHANGE_BUDGET = 0.5
_BACKOFF = (0.05, 0.4)


class Endpoints:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        creds: grpc.ChannelCredentials | None,
        timeout: float,
        retry_failed_after: float,
        max_workers: int,
    ) -> None:
        self.timeout = timeout
        self._addresses = [parse_endpoint(e) for e in endpoints]
        self._retry_failed_after = retry_failed_after
        self._endpoints = self._make(creds)
        self._current = 0
        self._lock = threading.Lock()
        self._stubs: dict[tuple[int, str], Any] = {}
        self.closed = False
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="etcd")

    def _make(self, creds: grpc.ChannelCredentials | None) -> list[pyetcd.Endpoint]:
        return [
            pyetcd.Endpoint(
                host,
                port,
                secure=creds is not None,
                creds=creds,
                time_retry=self._retry_failed_after,
                opts=GRPC_OPTIONS,
            )
            for host, port in self._addresses
        ]

    def renew(self, creds: grpc.ChannelCredentials, retire_after: float) -> None:
        """New channels with `creds` for every call from now on; the current ones are
        closed after `retire_after` seconds (ending what still runs on them: a watch
        still there then resumes on the new channels)."""
        with self._lock:
            if self.closed:
                return
            old, old_stubs = self._endpoints, list(self._stubs.values())
            self._endpoints, self._stubs = self._make(creds), {}
        timer = threading.Timer(retire_after, _retire, (old, old_stubs))
        timer.daemon = True
        timer.start()

    @property
    def netlocs(self) -> list[str]:
        return [ep.netloc for ep in self._endpoints]

    @property
    def current(self) -> str:
        return self._endpoints[self._current].netloc

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            watchers = [w for (_, kind), w in self._stubs.items() if kind == "watch"]
        for w in watchers:
            w.close()
        for ep in self._endpoints:
            ep.close()  # also ends running calls and watch streams at once
        # Queued calls still run and fail with "closed" rather than vanish as cancelled.
        self.executor.shutdown(wait=False)

    def _choose_locked(self) -> int:
        eps = self._endpoints
        if not eps[self._current].is_failed():
            return self._current
        for i, ep in enumerate(eps):
            if not ep.is_failed():
                self._current = i
                return i
        # Every endpoint failed recently: try them again, moving on by one.
        for ep in eps:
            ep.last_failed = 0
        self._current = (self._current + 1) % len(eps)
        return self._current

    def _stub(self, kind: str) -> tuple[int, Any]:
        with self._lock:
            if self.closed:
                raise EtcdError("etcd client is closed")
            idx = self._choose_locked()
            stub = self._stubs.get((idx, kind))
            if stub is None:
                channel = self._endpoints[idx].channel
                if kind == "watch":
                    stub = Watcher(
                        etcdrpc.WatchStub(channel), timeout=self.timeout, metadata=WATCH_METADATA
                    )
                else:
                    stub = STUBS[kind](channel)
                self._stubs[(idx, kind)] = stub
            return idx, stub

    def index_of(self, stub: Any) -> int | None:
        """The endpoint `stub` belongs to; None for a stub of channels since renewed."""
        with self._lock:
            return next((i for (i, _), s in self._stubs.items() if s is stub), None)

    def mark_failed(self, idx: int) -> None:
        with self._lock:
            self._endpoints[idx].fail()

    def translate(
        self, exc: grpc.RpcError, what: str, idx: int, deadline: float | None = None
    ) -> EtcdError:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or code.name  # type: ignore[attr-defined]
        where = self._endpoints[idx].netloc
        if any(part in details for part in _NOT_EXECUTED):
            return EtcdNotExecuted(f"etcd at {where} refused {what} for now: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.mark_failed(idx)
            return EtcdNoAnswer(
                f"etcd at {where} gave no answer to {what} within {deadline or self.timeout:g}s "
                "(down, unreachable, or no quorum)"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            self.mark_failed(idx)
            # etcd's own deadline ("request timed out", "..., possibly due to previous
            # leader failure", "... due to connection lost"): no answer, as with ours.
            unavailable = EtcdNoAnswer if "request timed out" in details else EtcdUnavailable
            return unavailable(f"etcd at {where} is unavailable ({what}): {details}")
        if code == grpc.StatusCode.CANCELLED and self.closed:
            return EtcdError("etcd client is closed")
        if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
            return LeaseNotFound(f"{what}: {details}")
        return EtcdError(f"etcd {what} failed: {code.name}: {details}")

    def _call(
        self, what: str, kind: str, fn: Callable[[Any], T], attempts: int, deadline: float | None
    ) -> T:
        error: EtcdError | None = None
        give_up_at = time.monotonic() + self.timeout * RAFT_CHANGE_BUDGET
        pause = _BACKOFF[0]
        tried = 0
        while True:
            idx, stub = self._stub(kind)
            tried += 1
            try:
                return fn(stub)
            except grpc.RpcError as exc:
                error = self.translate(exc, what, idx, deadline)
            except etcd_exc.RevisionCompactedError as exc:
                raise WatchCompacted(exc.compacted_revision) from None
            except etcd_exc.WatchTimedOut:
                self.mark_failed(idx)
                error = EtcdUnavailable(
                    f"etcd at {self._endpoints[idx].netloc} did not create the watch ({what}) "
                    f"within {self.timeout:g}s"
                )
            if isinstance(error, EtcdNotExecuted):
                # Same endpoint again: its raft is choosing or taking over a leader.
                if time.monotonic() + pause >= give_up_at or self.closed:
                    raise error
                time.sleep(pause)
                pause = min(pause * 2, _BACKOFF[1])
                continue
            if not isinstance(error, EtcdUnavailable) or tried >= attempts:
                raise error

    async def run(
        self,
        what: str,
        fn: Callable[[Any], T],
        *,
        kind: str = "kv",
        retry: bool = True,
        deadline: float | None = None,
    ) -> T:
        attempts = len(self._endpoints) if retry else 1
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(
                self.executor, self._call, what, kind, fn, attempts, deadline
            )
        except RuntimeError:
            raise EtcdError("etcd client is closed") from None
        # A safety net only: every gRPC call carries its own deadline.
        limit = (deadline or self.timeout) * (attempts + RAFT_CHANGE_BUDGET + 1) + 1.0
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        # that arrives as the call completes, leaving the caller running on.
        op = metrics.etcd_operation(what)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                return await fut
        except TimeoutError:
            metrics.ETCD_ERRORS.labels(op).inc()
            raise EtcdNoAnswer(f"etcd gave no answer to {what} within {limit:g}s") from None
        except EtcdError:
            metrics.ETCD_ERRORS.labels(op).inc()
            raise
        finally:
            metrics.ETCD_SECONDS.labels(op).observe(time.perf_counter() - start)


def _retire(endpoints: list[pyetcd.Endpoint], stubs: list[Any]) -> None:
    for stub in stubs:
        if isinstance(stub, Watcher):
            stub.close()
    for ep in endpoints:
        ep.close()
