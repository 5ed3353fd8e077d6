"""Streaming every node the cluster's ready endpoints (DNS and ingress follow them).

`WatchEndpoints` sends a FULL `EndpointSet` on connect and again whenever it changes; the
workload controller publishes a new view at the end of every reconcile pass (which runs as
soon as an agent reports an instance's readiness changing), and only a changed view wakes
the streams. Revisions grow with the wall clock, also across leader changes. Nodes keep
answering from the last set they received while no leader is reachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext


class EndpointBook:
    """The latest cluster-wide endpoint view, in the leader's memory."""

    def __init__(self) -> None:
        self._current: kat_pb2.EndpointSet | None = None
        self._cond = asyncio.Condition()
        self._closed = False
        self._last_revision = 0

    async def reset(self) -> None:
        """A new term of leadership: nothing published yet."""
        async with self._cond:
            self._current = None
            self._closed = False
            self._cond.notify_all()

    async def close(self) -> None:
        async with self._cond:
            self._closed = True
            self._current = None
            self._cond.notify_all()

    async def publish(
        self, services: Sequence[kat_pb2.ServiceEndpoints], ingress_nodes: Sequence[str] = ()
    ) -> bool:
        """Replace the view; True when it changed (and the streams were woken)."""
        async with self._cond:
            old = self._current
            new = kat_pb2.EndpointSet(services=services, ingress_nodes=ingress_nodes)
            if old is not None:
                new.revision = old.revision
                if new == old:
                    return False
            self._last_revision = max(self._last_revision + 1, time.time_ns() // 1000)
            new.revision = self._last_revision
            self._current = new
            self._cond.notify_all()
            return True

    def current(self) -> kat_pb2.EndpointSet | None:
        return self._current

    async def next_set(self, after: int) -> kat_pb2.EndpointSet | None:
        """Wait for a view newer than revision `after`; None once closed."""
        async with self._cond:
            while True:
                if self._closed:
                    return None
                cur = self._current
                if cur is not None and cur.revision != after:
                    return cur
                await self._cond.wait()


async def stream_endpoints(
    lc: LeaderContext, context: grpc.aio.ServicerContext
) -> AsyncIterator[kat_pb2.EndpointSet]:
    """Every view from now on; ends with UNAVAILABLE when this process stops leading."""
    last = -1
    while True:
        view = await lc.endpoints.next_set(last)
        if view is None or not lc.leading:
            await lc.require_leader(context)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "leadership changed; reconnect")
            return
        last = view.revision
        yield view
