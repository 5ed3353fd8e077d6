"""A node's network parts run until the node leaves the cluster, then are removed once;
a restarted agent of a removed node does not make them again (kat_agent/node/network/leave.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kat_agent.node.network.leave import Departure, until_left


@pytest.mark.async_timeout(10)
async def test_part_runs_until_the_node_leaves_then_is_removed(tmp_path: Path) -> None:
    marker = tmp_path / "agent" / "left-cluster"
    departure = Departure(marker)
    events: list[str] = []
    started = asyncio.Event()

    async def run() -> None:
        events.append("run")
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("stopped")
            raise

    async def cleanup() -> None:
        events.append("cleanup")

    task = asyncio.create_task(until_left(departure, run, cleanup, "a part"))
    await started.wait()
    assert not marker.exists()
    departure.leave()
    await asyncio.wait_for(task, 5)
    assert events == ["run", "stopped", "cleanup"]
    assert marker.stat().st_mode & 0o777 == 0o600

    # Restarted: the marker says the node left; the part is not run, only removed again.
    again = Departure(marker)
    events.clear()
    await asyncio.wait_for(until_left(again, run, cleanup, "a part"), 5)
    assert events == ["cleanup"]


@pytest.mark.async_timeout(10)
async def test_failed_cleanup_is_logged_not_raised(tmp_path: Path) -> None:
    departure = Departure(tmp_path / "left")
    departure.leave()

    async def run() -> None:
        raise AssertionError("not run after leaving")

    async def cleanup() -> None:
        raise RuntimeError("nft is gone")

    await until_left(departure, run, cleanup, "the table")  # no exception
