"""Leader election on an etcd lease.

Each candidate (a kat-agent on an etcd member) campaigns by creating the leader
key on a fresh lease if the key is absent. The winner keeps the lease alive
every ttl/3 and runs the caller's leader-only work as a task, which it cancels
at once when
- a keepalive answers that the lease is gone,
- no keepalive has succeeded for long enough that the lease may have expired
  (ttl minus a margin, counted from when the last good keepalive was sent:
  etcd received it later, so it cannot have expired the lease earlier), or
- the leader key is deleted or taken over (it is watched).
Then it campaigns again. Followers watch the key and campaign when it goes.
`resign()` stops the work and revokes the lease, which deletes the key, so
another candidate takes over at once instead of after the TTL.

Writes that must only happen under this leadership can be fenced with
`store.txn().require_leader(election.leader_revision)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api.v1alpha1 import kat_pb2
from internal.state.etcd_values import EtcdError, EtcdNoAnswer, Lease
from internal.state.kv import Compacted, EventType, Versioned
from internal.state.store import Store

log = logging.getLogger(__name__)

DEFAULT_TTL = 10


@dataclass(frozen=True)
class LeaderInfo:
    node_name: str
    api_address: str
    revision: int  # create revision of the leader key: one per term


class Election:
    def __init__(
        self,
        store: Store,
        node_name: str,
        api_address: str,
        *,
        ttl: int = DEFAULT_TTL,
        on_change: Callable[[LeaderInfo | None], None] | None = None,
    ) -> None:
        if ttl < 1:
            raise ValueError("election TTL must be at least 1 second")
        self._store = store
        self.node_name = node_name
        self.api_address = api_address
        self.ttl = ttl
        self._on_change = on_change
        self._record = kat_pb2.ClusterInfo(leader_node=node_name, leader_api_address=api_address)
        self._leader: LeaderInfo | None = None
        self._leading = False
        self._lease_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._resigning = False
        self._retry_min = min(1.0, ttl / 4)
        self._retry_max = float(ttl)

    # ------------------------------------------------------------ observation

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def lease_id(self) -> int | None:
        """The lease holding the leader key while this candidate leads."""
        return self._lease_id if self._leading else None

    @property
    def leader_revision(self) -> int | None:
        """This term's fencing revision while leading (see store.WriteTxn.require_leader)."""
        return self._leader.revision if self._leading and self._leader else None

    def current_leader(self) -> LeaderInfo | None:
        """The leader as last observed (None while there is none or it is unknown)."""
        return self._leader

    def _set_leader(self, info: LeaderInfo | None) -> None:
        if info == self._leader:
            return
        self._leader = info
        if self._on_change is not None:
            try:
                self._on_change(info)
            except Exception:
                log.exception("leader change callback failed")

    def _is_us(self, record: kat_pb2.ClusterInfo) -> bool:
        return (
            record.leader_node == self.node_name and record.leader_api_address == self.api_address
        )

    # ------------------------------------------------------------ running

    async def run(self, on_leading: Callable[[], Awaitable[None]]) -> None:
        """Campaign until resigned or cancelled; `on_leading()` runs as a task
        for each term this candidate wins and is cancelled when the term ends."""
        if self._task is not None:
            raise RuntimeError("this election is already running")
        self._resigning = False
        self._task = asyncio.create_task(
            self._campaign(on_leading), name=f"election-{self.node_name}"
        )
        try:
            await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not (self._resigning and current is not None and not current.cancelling()):
                raise
        finally:
            self._task = None

    async def resign(self) -> None:
        """Stop leader work, give up leadership (deleting the leader key) and
        stop campaigning; `run()` then returns."""
        task = self._task
        if task is None:
            return
        self._resigning = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _pause(self, delay: float) -> float:
        await asyncio.sleep(delay)
        return min(delay * 2, self._retry_max)

    async def _campaign(self, on_leading: Callable[[], Awaitable[None]]) -> None:
        etcd = self._store.etcd
        delay = self._retry_min
        crash_delay = self._retry_min  # grows while the leader work keeps failing
        while True:
            lease: Lease | None = None
            try:
                granted_at = time.monotonic()
                lease = await etcd.lease_grant(self.ttl)
                won, record, revision = await self._store.campaign(self._record, lease.id)
            except EtcdError as exc:
                log.warning("election: cannot campaign (%s); retrying in %.1fs", exc, delay)
                if lease is not None:
                    await self._revoke(lease.id)
                delay = await self._pause(delay)
                continue
            if won:
                delay = self._retry_min
                began = time.monotonic()
                if await self._lead(lease, granted_at, record, revision, on_leading):
                    if time.monotonic() - began > 2 * self.ttl:
                        crash_delay = self._retry_min
                    # The work ended by itself: give the others a chance, do not spin.
                    crash_delay = await self._pause(crash_delay)
                else:
                    # Lost it: whatever cost us the lease may persist, so let a
                    # healthy follower win the next round.
                    await asyncio.sleep(self._retry_min)
                continue
            await self._revoke(lease.id)
            if self._is_us(record.msg):
                # Left by an earlier run of this node whose lease has not expired
                # yet; that run is over, so take its place instead of waiting.
                log.info("election: removing the leader key left by an earlier run of this node")
                with contextlib.suppress(EtcdError):
                    await self._store.drop_leader(record.create_revision)
                continue
            try:
                await self._follow(record, revision)
            except EtcdError as exc:
                log.warning("election: lost track of the leader (%s)", exc)
                delay = await self._pause(delay)

    async def _revoke(self, lease_id: int) -> None:
        try:
            async with asyncio.timeout(min(2.0, self.ttl)):
                await self._store.etcd.lease_revoke(lease_id)
        except (EtcdError, TimeoutError) as exc:
            log.debug("election: could not revoke lease %x: %s", lease_id, exc)

    # ------------------------------------------------------------ following

    async def _follow(self, record: Versioned[kat_pb2.ClusterInfo], revision: int) -> None:
        """Track the current leader until its key goes."""
        self._set_leader(
            LeaderInfo(
                record.msg.leader_node, record.msg.leader_api_address, record.create_revision
            )
        )
        log.info("election: %s follows leader %s", self.node_name, record.msg.leader_node)
        try:
            async with contextlib.aclosing(self._store.watch_leader(revision + 1)) as events:
                async for ev in events:
                    if ev.type is EventType.DELETE:
                        # Logged: failover timing (benchmarks/bench_failover.py) reads it.
                        log.info(
                            "election: the leader key of %s is gone; %s campaigns",
                            record.msg.leader_node,
                            self.node_name,
                        )
                        break
                    if ev.msg is not None and self._leader is not None:
                        info = LeaderInfo(
                            ev.msg.leader_node, ev.msg.leader_api_address, self._leader.revision
                        )
                        self._set_leader(info)
        except Compacted:
            pass  # campaigning re-reads the key
        self._set_leader(None)

    # ------------------------------------------------------------ leading

    async def _lead(
        self,
        lease: Lease,
        granted_at: float,
        record: Versioned[kat_pb2.ClusterInfo],
        revision: int,
        on_leading: Callable[[], Awaitable[None]],
    ) -> bool:
        """One term. Returns True when it ended because the work itself ended."""
        self._lease_id = lease.id
        self._leading = True
        self._set_leader(LeaderInfo(self.node_name, self.api_address, record.create_revision))
        log.info("election: %s is the leader (lease %x)", self.node_name, lease.id)
        work = asyncio.create_task(on_leading(), name="leader-work")
        guards = [
            asyncio.create_task(self._keep_alive(lease, granted_at), name="leader-keepalive"),
            asyncio.create_task(self._watch_own_key(record.create_revision, revision)),
        ]
        try:
            done, _ = await asyncio.wait([work, *guards], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._leading = False  # stop acting at once, before anything else
            work.cancel()
            for g in guards:
                g.cancel()
            await asyncio.gather(work, *guards, return_exceptions=True)
            self._lease_id = None
            self._set_leader(None)
            # Hand over now instead of after the TTL (and drop a lease we may still hold).
            await self._revoke(lease.id)
        if work in done:
            exc = None if work.cancelled() else work.exception()
            if exc is not None:
                log.error("election: leader work failed; stepping down", exc_info=exc)
            else:
                log.warning("election: leader work returned; stepping down")
            return True
        reason = next((_outcome(g) for g in guards if g in done), "unknown")
        log.warning("election: %s lost leadership: %s", self.node_name, reason)
        return False

    async def _keep_alive(self, lease: Lease, granted_at: float) -> str:
        ttl = max(lease.ttl, 1)
        interval = ttl / 3
        margin = max(0.1, ttl / 10)
        last_ok = granted_at
        next_at = granted_at + interval
        while True:
            expires = last_ok + ttl - margin
            await asyncio.sleep(max(0.0, min(next_at, expires) - time.monotonic()))
            sent = time.monotonic()
            if sent >= expires:
                return f"no keepalive succeeded for {sent - last_ok:.1f}s (TTL {ttl}s)"
            # One try gets at most `interval`, so that a second one fits before the lease
            # may expire: an etcd follower forwards a keepalive to the raft leader it knows,
            # and one forwarded to a raft leader cut off by a silent partition is never
            # answered (its peer connection does not fail), while a new request goes to
            # the leader the others have elected meanwhile (1-2 s here).
            attempt = min(expires - sent, interval)
            try:
                # asyncio.timeout: on 3.11 wait_for may swallow our cancellation.
                async with asyncio.timeout(expires - sent):
                    remaining = await self._store.etcd.lease_keepalive(lease.id, attempt)
            except (EtcdNoAnswer, TimeoutError) as exc:
                log.warning("election: lease keepalive got no answer: %s", exc or "timed out")
                next_at = time.monotonic()  # at once: the time is already spent
                continue
            except EtcdError as exc:
                log.warning("election: lease keepalive failed: %s", exc)
                next_at = time.monotonic() + min(interval, 0.5)
                continue
            if remaining <= 0:
                return "the lease expired"
            last_ok = sent
            next_at = sent + interval

    async def _watch_own_key(self, create_revision: int, revision: int) -> str:
        start = revision + 1
        while True:
            try:
                async with contextlib.aclosing(self._store.watch_leader(start)) as events:
                    async for ev in events:
                        if ev.type is EventType.DELETE:
                            return "the leader key was deleted"
                        if ev.msg is None or not self._is_us(ev.msg):
                            return "the leader key was taken over"
            except Compacted:
                now = await self._store.revision()
                current = await self._store.get_leader()
                if current is None or current.create_revision != create_revision:
                    return "the leader key changed while unobserved"
                start = now + 1


def _outcome(task: asyncio.Task[str]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return f"{type(exc).__name__}: {exc}" if exc else task.result()
