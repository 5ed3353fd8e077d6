"""kat_agent.node.main.supervise: a part of the node runtime that fails is restarted, but
one that fails while the agent stops (its cleanup raising, e.g. because a workload user
was deleted meanwhile) must not swallow the stop: SIGTERM once left an agent running."""

from __future__ import annotations

import asyncio

import pytest

from kat_agent.node import main


class Restarted(BaseException):
    """Raised by the part when it is started again (supervise does not catch it), so a
    swallowed stop fails the test instead of hanging it."""


def test_a_failure_while_stopping_does_not_restart_the_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(main, "SUPERVISE_BACKOFF", (0.01, 0.01))

    async def run() -> None:
        started = 0

        async def part() -> None:
            nonlocal started
            started += 1
            if started > 1:
                raise Restarted
            try:
                await asyncio.sleep(3600)
            finally:
                raise KeyError("getpwnam(): name not found")  # the cleanup fails

        task = asyncio.create_task(main.supervise("node runtime", part))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.done()
        assert task.cancelled(), "the stop was swallowed and the part started again"
        assert started == 1

    asyncio.run(run())


def test_a_failure_while_running_restarts_the_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "SUPERVISE_BACKOFF", (0.01, 0.01))

    async def run() -> None:
        started = asyncio.Event()
        runs = 0

        async def part() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise RuntimeError("broken")
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(main.supervise("node runtime", part))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert runs == 2

    asyncio.run(run())
