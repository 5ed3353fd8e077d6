"""Streaming each node the instances it should run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from api.v1alpha1 import kat_pb2
from kat_agent.leader.context import LeaderContext


async def stream_assignments(
    lc: LeaderContext, node_name: str, context: grpc.aio.ServicerContext
) -> AsyncIterator[kat_pb2.AssignmentSet]:
    """Placeholder until the workload controllers land: no assignments."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "assignments are not implemented yet")
    yield kat_pb2.AssignmentSet()  # pragma: no cover
