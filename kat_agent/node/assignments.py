"""What the leader wants this node to run: the `WatchAssignments` stream, and the last
snapshot kept in the data dir (`agent/assignments.pb`) for an agent that restarts while
the leader is unreachable. `follow_leader_stream` and `SnapshotStore` also serve the
endpoints stream (kat_agent/node/network/endpoints.py)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Generic, TypeVar

import grpc

from api.v1alpha1 import kat_pb2, kat_pb2_grpc
from internal.host.files import write_atomic
from internal.security import rpc
from kat_agent.node.agent import Agent

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "assignments.pb"
BACKOFF = (0.2, 5.0)


M = TypeVar("M", kat_pb2.AssignmentSet, kat_pb2.EndpointSet)


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
    `on_snapshot` (see `follow_leader_stream`)."""
    request = kat_pb2.AssignmentsRequest(node_name=agent.identity.name)

    def opened(snapshot: kat_pb2.AssignmentSet) -> str:
        return f"{len(snapshot.assignments)} assignments, revision {snapshot.revision}"

    await follow_leader_stream(
        agent,
        lambda stub: stub.WatchAssignments(request),
        on_snapshot,
        "assignments",
        opened,
        backoff,
    )


T = TypeVar("T")


async def follow_leader_stream(
    agent: Agent,
    open_call: Callable[[kat_pb2_grpc.AgentAPIStub], AsyncIterator[T]],
    on_message: Callable[[T], None],
    what: str,
    describe: Callable[[T], str] = lambda _: "",
    backoff: tuple[float, float] = BACKOFF,
) -> None:
    """Follow a server stream of the leader's for ever, handing every message to
    `on_message`. The stream is opened once the heartbeat loop has found the leader
    (`agent.connected`), on the same channel (`agent.link`). When it breaks: back off and
    reopen; a non-leader's UNAVAILABLE naming the leader moves the link there. Nothing
    is torn down meanwhile: the node keeps acting on what it has (detached operation)."""
    low, high = backoff
    delay = low
    while True:
        await agent.connected.wait()
        call = open_call(agent.link.stub())
        received = False
        try:
            async for message in call:
                if not received:
                    log.info("%s stream open (%s)", what, describe(message))
                received = True
                delay = low
                on_message(message)
            log.warning("the leader ended the %s stream; reopening", what)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.aio.AioRpcError) else None
            trailing = err.trailing_metadata() if isinstance(err, grpc.aio.AioRpcError) else None
            leader = rpc.leader_from_status(code, trailing)
            details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
            log.log(
                logging.WARNING if received else logging.INFO,
                "%s stream failed (%s): %s",
                what,
                code.name if code else "error",
                details,
            )
            if leader:
                agent.link.failed(leader)
        finally:
            call.cancel()  # type: ignore[attr-defined]
        # Jitter spreads the reconnects of many nodes after a leader change.
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(high, delay * 2)
