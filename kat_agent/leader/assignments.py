"""Streaming each node the instances it should run.

The contract between the leader and a node's runtime:

- `WatchAssignments` sends a FULL `AssignmentSet` snapshot for the node on connect and again
  whenever it changes; each snapshot lists every instance that should exist on the node as
  `Assignment{instance, bundle}`. `revision` increases with every snapshot (it is based on
  the wall clock, so it also grows across leader changes); always act on the latest one.
- `bundle` is the workload's bundle at the instance's generation, defaults applied. It may
  change for the same instance (e.g. a replicas-only or restartPolicy-only apply): that is
  never a reason to restart. A new instance id (or a new `instance.generation`) is what
  means a new container. TERMINATING instances of a deleted workload may come with an
  empty bundle: stopping them needs none.
- `instance.phase` in an assignment is one of:
  - SCHEDULED: the instance should exist: create and start its container if it has none;
  - TERMINATING: stop it (SIGTERM, grace period, SIGKILL) and remove it; with
    `purge_volumes`, also remove the workload's simpleClusterStorage directories on this
    node once no other instance of that workload remains on it;
  - SUCCEEDED or FAILED: the leader is done with it (completed, or given up under the
    restart policy): do not start it again; keep an exited container (for logs).
  An instance that is absent from the snapshot must be stopped and removed too.
- Restarts are decided by the leader only (restart policy, back-off, MAX_COUNT). The node
  never restarts a container on its own. `instance.restart_count` is the leader's restart
  counter for the instance (it only grows): when the node's container for the instance has
  exited and the assignment's `restart_count` is greater than the count the node last
  started it for, the node starts it again and from then on acts on the new count.
- In every heartbeat the node reports each instance it has (`HeartbeatRequest.instances`):
  id, workload, namespace, generation, phase (PULLING/STARTING/RUNNING while it runs,
  SUCCEEDED or FAILED with exit_code, message, started_at and finished_at once the
  container exited), ready (RUNNING and passing its health checks), container_id, ip, and
  `restart_count` = the assignment restart_count it last started the container for (the
  leader ignores exit reports older than the restart it asked for). An instance the node
  has stopped and removed is no longer reported; that is how the leader knows a
  TERMINATING instance is gone and deletes its record.
- Exec health checks: after `failureThreshold` failures in a row the node stops the
  container and reports phase FAILED with message "health check failed" (and the exit
  code); the leader then applies the restart policy as for any other exit.
- `peers` carries the other nodes (overlay) as in heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext


class AssignmentBook:
    """The latest assignment snapshot of every node, in the leader's memory.

    The workload controller `publish`es the desired assignments after each reconcile pass;
    a node's snapshot gets a new revision only when its content changed, and every stream
    waiting on that node wakes up. `close` (leadership lost) ends every stream."""

    def __init__(self) -> None:
        self._sets: dict[str, kat_pb2.AssignmentSet] = {}
        self._cond = asyncio.Condition()
        self._ready = False
        self._closed = False
        self._last_revision = 0
        # Bumped by `drop`: streams of a node opened before the bump end.
        self._epochs: dict[str, int] = {}

    def _next_revision(self) -> int:
        self._last_revision = max(self._last_revision + 1, time.time_ns() // 1000)
        return self._last_revision

    async def reset(self) -> None:
        """Start a new term of leadership: nothing published yet."""
        async with self._cond:
            self._sets.clear()
            self._ready = False
            self._closed = False
            self._cond.notify_all()

    async def close(self) -> None:
        async with self._cond:
            self._closed = True
            self._ready = False
            self._cond.notify_all()

    async def drop(self, node: str) -> None:
        """End the node's open streams (the leader stopped hearing it: its stream is most
        likely writing into a dead connection). The node opens a new one when its
        heartbeats come back, and gets the current snapshot on it."""
        async with self._cond:
            self._epochs[node] = self._epochs.get(node, 0) + 1
            self._cond.notify_all()

    def epoch(self, node: str) -> int:
        return self._epochs.get(node, 0)

    @property
    def closed(self) -> bool:
        return self._closed

    async def publish(
        self,
        assignments: Mapping[str, Sequence[kat_pb2.Assignment]],
        peers: Sequence[kat_pb2.Peer] = (),
    ) -> list[str]:
        """Replace every node's snapshot; returns the nodes whose snapshot changed."""
        changed: list[str] = []
        async with self._cond:
            for node in sorted(set(assignments) | set(self._sets)):
                new = kat_pb2.AssignmentSet(assignments=assignments.get(node, ()), peers=peers)
                old = self._sets.get(node)
                if old is not None:
                    new.revision = old.revision
                    if new == old:
                        continue
                new.revision = self._next_revision()
                self._sets[node] = new
                changed.append(node)
            self._ready = True
            if changed:
                self._cond.notify_all()
        return changed

    def snapshot(self, node: str) -> kat_pb2.AssignmentSet | None:
        """The node's current snapshot (None before the first publish of this term)."""
        if not self._ready:
            return None
        current = self._sets.get(node)
        if current is None:
            current = self._sets[node] = kat_pb2.AssignmentSet(revision=self._next_revision())
        return current

    async def next_snapshot(
        self, node: str, after: int, epoch: int | None = None
    ) -> kat_pb2.AssignmentSet | None:
        """Wait for a snapshot of `node` newer than revision `after`; None once closed,
        or once the node's streams were dropped after `epoch`."""
        async with self._cond:
            while True:
                if self._closed or (epoch is not None and self.epoch(node) != epoch):
                    return None
                snap = self.snapshot(node)
                if snap is not None and snap.revision != after:
                    return snap
                await self._cond.wait()


async def stream_assignments(
    lc: LeaderContext, node_name: str, context: grpc.aio.ServicerContext
) -> AsyncIterator[kat_pb2.AssignmentSet]:
    """A full snapshot for the node on connect and after every change (see the module
    docstring); ends with UNAVAILABLE (naming the new leader when known) when this
    process stops leading, and when the node turns NOT_READY (`AssignmentBook.drop`)."""
    book = lc.assignments
    last = -1
    epoch = book.epoch(node_name)
    while True:
        snap = await book.next_snapshot(node_name, last, epoch)
        if snap is None and lc.leading and book.epoch(node_name) != epoch:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "no heartbeats from this node; reconnect"
            )
            return
        if snap is None or not lc.leading:
            await lc.require_leader(context)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "leadership changed; reconnect")
            return
        last = snap.revision
        yield snap
