"""Leader-only reconcile loops for workloads (scheduling, rollouts, restarts,
jobs, node loss). Started when leadership is won, cancelled when it is lost."""

from __future__ import annotations

import asyncio

from kat_agent.leader.context import LeaderContext


async def run_controllers(lc: LeaderContext) -> None:
    """Placeholder until the workload controllers land: idles while leading."""
    await asyncio.Event().wait()
