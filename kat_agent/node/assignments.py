"""What the leader wants this node to run: the `WatchAssignments` stream, and the last
snapshot kept in the data dir (`agent/assignments.pb`) for an agent that restarts while
the leader is unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from pathlib import Path

import grpc

from api.v1alpha1 import kat_pb2
from internal.host.files import write_atomic
from internal.observability import metrics
from kat_agent.node.agent import Agent

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "assignments.pb"
BACKOFF = (0.2, 5.0)


class SnapshotStore:
    """The last AssignmentSet received, on disk (0600, written atomically)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SNAPSHOT_FILE
        self._last: bytes | None = None

    def load(self) -> kat_pb2.AssignmentSet | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        snapshot = kat_pb2.AssignmentSet()
        try:
            snapshot.ParseFromString(data)
        except Exception as exc:  # noqa: BLE001 - a damaged file is as good as none
            log.error("ignoring unreadable %s: %s", self.path, exc)
            return None
        self._last = data
        return snapshot

    def save(self, snapshot: kat_pb2.AssignmentSet) -> None:
        data = snapshot.SerializeToString(deterministic=True)
        if data == self._last:
            return
        write_atomic(self.path, data, 0o600)
        self._last = data


async def watch_assignments(
    agent: Agent,
    on_snapshot: Callable[[kat_pb2.AssignmentSet], None],
    backoff: tuple[float, float] = BACKOFF,
) -> None:
    """Follow the leader's WatchAssignments stream for ever, handing every snapshot to
    `on_snapshot`. The stream is tied to the heartbeat path (`agent.session`): it is
    opened once the heartbeats reach the leader, on the same channel (`agent.link`), and
    closed and reopened whenever that path breaks, reconnects or moves to another leader,
    so a stream never outlives the link it was opened on (after a partition heals, the
    first snapshot on the new stream is the leader's current one). When the stream breaks
    on its own: back off and reopen; a non-leader's UNAVAILABLE naming the leader moves the
    link there. Nothing is torn down meanwhile: the node keeps running what it has
    (detached operation)."""
    low, high = backoff
    delay = low
    request = kat_pb2.AssignmentsRequest(node_name=agent.identity.name)
    while True:
        await agent.connected.wait()
        over = agent.session_over
        call = agent.link.stub().WatchAssignments(request)
        follow = asyncio.ensure_future(_follow(call, on_snapshot))
        ended = asyncio.ensure_future(over.wait())
        try:
            await asyncio.wait((follow, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            call.cancel()
            if not follow.done():
                follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        if not follow.cancelled() and follow.result():
            delay = low
        if over.is_set():
            log.info("heartbeat link changed; reopening the assignments stream")
            continue
        metrics.STREAM_RECONNECTS.inc()
        # Jitter spreads the reconnects of many nodes after a leader change.
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(high, delay * 2)


async def _follow(
    call: grpc.aio.UnaryStreamCall,
    on_snapshot: Callable[[kat_pb2.AssignmentSet], None],
) -> bool:
    """Hand every snapshot of one stream to `on_snapshot` until it ends; True when at
    least one snapshot arrived."""
    received = False
    try:
        async for snapshot in call:
            if not received:
                log.info(
                    "assignments stream open (%d assignments, revision %d)",
                    len(snapshot.assignments),
                    snapshot.revision,
                )
            received = True
            on_snapshot(snapshot)
        log.warning("the leader ended the assignments stream; reopening")
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
        details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
        log.log(
            logging.WARNING if received else logging.INFO,
            "assignments stream failed (%s): %s",
            code.name if code else "error",
            details,
        )
    return received
