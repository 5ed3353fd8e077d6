"""What the leader wants this node to run: the `WatchAssignments` stream, and the last
snapshot kept in the data dir (`agent/assignments.pb`) for an agent that restarts while
the leader is unreachable. `follow_leader_stream` and `SnapshotStore` also serve the
endpoints stream (kat_agent/node/network/discovery.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Generic, TypeVar

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.core.assignments import DeltaOutOfSync, apply_update
from internal.host.files import write_atomic
from internal.observability import metrics
from kat_agent.node.agent import Agent

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "assignments.pb"
BACKOFF = (0.2, 5.0)


M = TypeVar("M", kat_pb2.AssignmentSet, kat_pb2.EndpointSet)
T = TypeVar("T")


class SnapshotStore(Generic[M]):
    """The last snapshot received (an AssignmentSet unless told), on disk (0600, written
    atomically)."""

    def __init__(
        self,
        state_dir: Path,
        name: str = SNAPSHOT_FILE,
        message: type[M] = kat_pb2.AssignmentSet,  # type: ignore[assignment]
    ) -> None:
        self.path = state_dir / name
        self._message = message
        self._last: bytes | None = None

    def load(self) -> M | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        snapshot = self._message()
        try:
            snapshot.ParseFromString(data)
        except Exception as exc:  # noqa: BLE001 - a damaged file is as good as none
            log.error("ignoring unreadable %s: %s", self.path, exc)
            return None
        self._last = data
        return snapshot

    def save(self, snapshot: M) -> None:
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
    `on_snapshot` (see `follow_leader_stream`). The leader sends deltas after the first
    snapshot of a stream; they are applied here, so `on_snapshot` always gets the full
    set. A delta that does not fit ends the stream (a new one starts with a snapshot)."""
    request = kat_pb2.AssignmentsRequest(node_name=agent.identity.name, accept_deltas=True)
    current: kat_pb2.AssignmentSet | None = None

    def on_message(update: kat_pb2.AssignmentSet) -> None:
        nonlocal current
        if not update.delta:
            current = None  # a new stream: nothing from an older one applies
        current = apply_update(current, update)
        on_snapshot(current)

    def opened(snapshot: kat_pb2.AssignmentSet) -> str:
        return f"{len(snapshot.assignments)} assignments, revision {snapshot.revision}"

    await follow_leader_stream(
        agent, lambda stub: stub.WatchAssignments(request), on_message, "assignments", opened,
        backoff,
    )  # fmt: skip


async def follow_leader_stream(
    agent: Agent,
    open_call: Callable[[kat_pb2_grpc.AgentAPIStub], AsyncIterator[T]],
    on_message: Callable[[T], None],
    what: str,
    describe: Callable[[T], str] = lambda _: "",
    backoff: tuple[float, float] = BACKOFF,
) -> None:
    """Follow a server stream of the leader's for ever, handing every message to
    `on_message`. The stream is tied to the heartbeat path (`agent.session`): it is
    opened once the heartbeats reach the leader, on the same channel (`agent.link`), and
    closed and reopened whenever that path breaks, reconnects or moves to another leader,
    so a stream never outlives the link it was opened on (after a partition heals, the
    first snapshot on the new stream is the leader's current one). When the stream breaks
    on its own: back off and reopen; a non-leader's UNAVAILABLE naming the leader moves the
    link there. Nothing is torn down meanwhile: the node keeps running what it has
    (detached operation)."""
    low, high = backoff
    delay = low
    while True:
        await agent.connected.wait()
        over = agent.session_over
        call = open_call(agent.link.stub())
        follow = asyncio.ensure_future(_follow(call, on_message, what, describe))
        ended = asyncio.ensure_future(over.wait())
        try:
            await asyncio.wait((follow, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            call.cancel()  # type: ignore[attr-defined]
            if not follow.done():
                follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        if not follow.cancelled() and follow.result():
            delay = low
        if over.is_set():
            log.info("heartbeat link changed; reopening the %s stream", what)
            continue
        metrics.STREAM_RECONNECTS.inc()
        # Jitter spreads the reconnects of many nodes after a leader change.
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(high, delay * 2)


async def _follow(
    call: AsyncIterator[T],
    on_message: Callable[[T], None],
    what: str,
    describe: Callable[[T], str],
) -> bool:
    """Hand every message of one stream to `on_message` until it ends; True when at
    least one arrived."""
    received = False
    try:
        async for message in call:
            if not received:
                log.info("%s stream open (%s)", what, describe(message))
            received = True
            on_message(message)
        log.warning("the leader ended the %s stream; reopening", what)
    except DeltaOutOfSync as err:
        log.warning("%s stream out of step (%s); reopening", what, err)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
        details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
        log.log(
            logging.WARNING if received else logging.INFO,
            "%s stream failed (%s): %s",
            what,
            code.name if code else "error",
            details,
        )
    return received
