"""Streaming each node the instances it should run.

The contract between the leader and a node's runtime:

- `WatchAssignments` sends a FULL `AssignmentSet` snapshot for the node on connect and again
  whenever it changes; each snapshot lists every instance that should exist on the node as
  `Assignment{instance, bundle}`. `revision` increases with every snapshot (it is based on
  the wall clock, so it also grows across leader changes); always act on the latest one.
  A node that sets `AssignmentsRequest.accept_deltas` gets the full snapshot first and then
  only the changes (`AssignmentSet.delta`: changed assignments, `removed` ids, peers only
  when `peers_changed`), each based on the previous message of the stream
  (`base_revision`); it rebuilds the full set itself (kat_agent/node/assignments.py), so
  what its runtime acts on is the same full snapshot.
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
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

# Changes kept per node for streams that are a little behind; further behind: a full
# snapshot.
HISTORY = 8


@dataclass
class _Change:
    """One published change of a node's set: from revision `base` to `revision`."""

    base: int
    revision: int
    changed: list[kat_pb2.Assignment]
    removed: list[str]
    peers_changed: bool


@dataclass
class _NodeSet:
    """A node's current assignments (by instance id) and its last few changes. The
    Assignment objects are shared with the controller's cache (never copied here), and
    the peers are the book's one list: a node costs little more than its instances."""

    revision: int
    items: dict[str, kat_pb2.Assignment] = field(default_factory=dict)
    history: deque[_Change] = field(default_factory=lambda: deque(maxlen=HISTORY))


class AssignmentBook:
    """The latest assignments of every node, in the leader's memory.

    The workload controller `publish`es the desired assignments after each reconcile pass;
    a node's set gets a new revision only when its content changed (or the peers did),
    and every stream waiting on that node wakes up. `close` (leadership lost) ends every
    stream. A stream gets a full snapshot first, then (when the node accepts deltas) what
    changed since its last message as one delta, or a full snapshot again when it fell
    more than HISTORY changes behind."""

    def __init__(self) -> None:
        self._sets: dict[str, _NodeSet] = {}
        self._peers: list[kat_pb2.Peer] = []
        # The list object last given (the leader's cached peer list): the same object
        # again needs no comparison of every peer.
        self._peers_given: object = None
        # The streams waiting for a change, per node: a publish wakes only the streams
        # of the nodes it changed (with 1,000 nodes, waking every stream per change
        # cost more than the change).
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
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
        self._sets.clear()
        self._peers = []
        self._peers_given = None
        self._ready = False
        self._closed = False
        self._wake_all()

    async def close(self) -> None:
        self._closed = True
        self._ready = False
        self._wake_all()

    async def drop(self, node: str) -> None:
        """End the node's open streams (the leader stopped hearing it: its stream is most
        likely writing into a dead connection). The node opens a new one when its
        heartbeats come back, and gets the current snapshot on it."""
        self._epochs[node] = self._epochs.get(node, 0) + 1
        self._wake(node)

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
        """Replace every node's set; returns the nodes whose set changed. An assignment
        that is the same object as the one published before counts as unchanged without
        comparing it (the controller reuses the objects of unchanged records)."""
        changed_nodes: list[str] = []
        # no await from here on: the streams see the change whole
        peers_changed = peers is not self._peers_given and list(peers) != self._peers
        self._peers_given = peers
        if peers_changed:
            self._peers = list(peers)
        nodes = set(assignments) | set(self._sets)
        for node in sorted(nodes):
            new = {a.instance.id: a for a in assignments.get(node, ())}
            current = self._sets.get(node)
            if current is None:
                self._sets[node] = _NodeSet(self._next_revision(), new)
                changed_nodes.append(node)
                continue
            old = current.items
            changed = [a for i, a in new.items() if not _same(old.get(i), a)]
            removed = [i for i in old if i not in new]
            if not changed and not removed and not peers_changed:
                continue
            revision = self._next_revision()
            current.history.append(
                _Change(current.revision, revision, changed, removed, peers_changed)
            )
            current.items = new
            current.revision = revision
            changed_nodes.append(node)
        self._wake_changed(changed_nodes)
        return changed_nodes

    async def publish_changes(
        self,
        changes: Mapping[str, tuple[Sequence[kat_pb2.Assignment], Sequence[str]]],
        peers: Sequence[kat_pb2.Peer] = (),
    ) -> list[str]:
        """Change only some nodes' sets: per node, assignments added or replaced and ids
        removed (every node when the peers changed). Returns the nodes whose set changed."""
        changed_nodes: list[str] = []
        # no await from here on: the streams see the change whole
        peers_changed = peers is not self._peers_given and list(peers) != self._peers
        self._peers_given = peers
        if peers_changed:
            self._peers = list(peers)
        nodes = set(changes) | (set(self._sets) if peers_changed else set())
        for node in sorted(nodes):
            added, gone = changes.get(node, ((), ()))
            current = self._sets.get(node)
            if current is None:
                self._sets[node] = _NodeSet(
                    self._next_revision(), {a.instance.id: a for a in added}
                )
                changed_nodes.append(node)
                continue
            items = current.items
            changed = [a for a in added if not _same(items.get(a.instance.id), a)]
            removed = [i for i in gone if i in items]
            if not changed and not removed and not peers_changed:
                continue
            for a in changed:
                items[a.instance.id] = a
            for i in removed:
                del items[i]
            revision = self._next_revision()
            current.history.append(
                _Change(current.revision, revision, changed, removed, peers_changed)
            )
            current.revision = revision
            changed_nodes.append(node)
        self._wake_changed(changed_nodes)
        return changed_nodes

    def revision(self, node: str) -> int | None:
        """The node's current revision (None before the first publish of this term)."""
        if not self._ready:
            return None
        current = self._sets.get(node)
        if current is None:
            current = self._sets[node] = _NodeSet(self._next_revision())
        return current.revision

    def snapshot(self, node: str) -> kat_pb2.AssignmentSet | None:
        """A full snapshot of the node's set (None before the first publish of this
        term). Built on demand: the book keeps no per-node message."""
        revision = self.revision(node)
        if revision is None:
            return None
        items = self._sets[node].items
        return kat_pb2.AssignmentSet(
            assignments=[items[i] for i in sorted(items)], revision=revision, peers=self._peers
        )

    def update(self, node: str, after: int, deltas: bool) -> kat_pb2.AssignmentSet | None:
        """What a stream that last sent revision `after` sends next: None when it is
        current, the delta from `after` when known (and `deltas`), else a full snapshot."""
        revision = self.revision(node)
        if revision is None or revision == after:
            return None
        if deltas and after > 0:
            delta = self._delta_since(node, after, revision)
            if delta is not None:
                return delta
        return self.snapshot(node)

    def _delta_since(self, node: str, after: int, revision: int) -> kat_pb2.AssignmentSet | None:
        """One delta from revision `after` to the current one, however many changes lie
        between (a stream that fell a few changes behind catches up in one message, not
        one per change); None when `after` is older than the history kept."""
        node_set = self._sets[node]
        history = node_set.history
        start = next((k for k, ch in enumerate(history) if ch.base == after), None)
        if start is None:
            return None
        if start == len(history) - 1:  # the usual case: one change behind
            ch = history[start]
            changed, removed, peers_changed = ch.changed, ch.removed, ch.peers_changed
        else:
            items = node_set.items
            touched: dict[str, None] = {}
            peers_changed = False
            for k in range(start, len(history)):
                ch = history[k]
                touched.update(dict.fromkeys(a.instance.id for a in ch.changed))
                touched.update(dict.fromkeys(ch.removed))
                peers_changed = peers_changed or ch.peers_changed
            # what each touched id is now: its current assignment, or gone
            changed = [items[i] for i in touched if i in items]
            removed = [i for i in touched if i not in items]
        msg = kat_pb2.AssignmentSet(
            revision=revision,
            delta=True,
            base_revision=after,
            assignments=changed,
            removed=removed,
            peers_changed=peers_changed,
        )
        if peers_changed:  # the delta ends at the current revision: the current peers
            msg.peers.extend(self._peers)
        return msg

    async def next_update(
        self, node: str, after: int, deltas: bool, epoch: int | None = None
    ) -> kat_pb2.AssignmentSet | None:
        """Wait for what follows revision `after` for `node` (see `update`); None once
        closed, or once the node's streams were dropped after `epoch`."""
        while True:
            if self._closed or (epoch is not None and self.epoch(node) != epoch):
                return None
            msg = self.update(node, after, deltas)
            if msg is not None:
                return msg
            waiter = asyncio.get_running_loop().create_future()
            waiting = self._waiters.setdefault(node, set())
            waiting.add(waiter)
            try:
                await waiter
            finally:
                waiting.discard(waiter)
                if not waiting and self._waiters.get(node) is waiting:
                    del self._waiters[node]

    def _wake_changed(self, nodes: Sequence[str]) -> None:
        """Wake the streams of the nodes whose set changed (every waiting stream on the
        first publish of the term)."""
        if not self._ready:
            self._ready = True
            self._wake_all()
        for node in nodes:
            self._wake(node)

    def _wake(self, node: str) -> None:
        for waiter in self._waiters.get(node, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _wake_all(self) -> None:
        for node in list(self._waiters):
            self._wake(node)

    async def next_snapshot(
        self, node: str, after: int, epoch: int | None = None
    ) -> kat_pb2.AssignmentSet | None:
        """Wait for a full snapshot of `node` newer than revision `after`; None once
        closed, or once the node's streams were dropped after `epoch`."""
        return await self.next_update(node, after, False, epoch)


def _same(old: kat_pb2.Assignment | None, new: kat_pb2.Assignment) -> bool:
    return old is new or (old is not None and old == new)


async def stream_assignments(
    lc: LeaderContext, node_name: str, context: grpc.aio.ServicerContext, deltas: bool = False
) -> AsyncIterator[kat_pb2.AssignmentSet]:
    """A full snapshot for the node on connect, then after every change a full snapshot,
    or with `deltas` the change alone (see the module docstring); ends with UNAVAILABLE
    (naming the new leader when known) when this process stops leading, and when the node
    turns NOT_READY (`AssignmentBook.drop`)."""
    book = lc.assignments
    last = -1
    epoch = book.epoch(node_name)
    while True:
        snap = await book.next_update(node_name, last, deltas, epoch)
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
        # Do not keep the sent message (a full snapshot carries every peer) alive while
        # waiting for the next change: 1,000 idle streams would each hold one.
        snap = None
