"""The assignments stream follows the heartbeat link (kat_agent/node/assignments.py) and
the leader ends the streams of a node it no longer hears (AssignmentBook.drop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from api.v1alpha1 import kat_pb2
from kat_agent.leader.assignments import AssignmentBook
from kat_agent.node.assignments import watch_assignments
from tests.helpers import wait_until


class FakeCall:
    """A WatchAssignments call: yields what is put in, until cancelled."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[kat_pb2.AssignmentSet] = asyncio.Queue()
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[kat_pb2.AssignmentSet]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[kat_pb2.AssignmentSet]:
        while True:
            yield await self.queue.get()


class FakeAgent:
    def __init__(self) -> None:
        self.identity = type("Identity", (), {"name": "n1"})()
        self.connected = asyncio.Event()
        self.session_over = asyncio.Event()
        self.calls: list[FakeCall] = []
        self.link = self

    def stub(self) -> Any:
        return self

    def WatchAssignments(self, request: kat_pb2.AssignmentsRequest) -> FakeCall:
        call = FakeCall()
        self.calls.append(call)
        return call

    def reconnect(self) -> None:
        """What Agent does when the heartbeat path breaks and comes back."""
        self.session_over.set()
        self.session_over = asyncio.Event()


async def until(fn: Any, what: str) -> None:
    await wait_until(fn, within=5, message=what)


def test_stream_is_reopened_whenever_the_heartbeat_link_reconnects() -> None:
    async def run() -> None:
        agent = FakeAgent()
        got: list[int] = []
        task = asyncio.create_task(
            watch_assignments(agent, lambda s: got.append(s.revision))  # type: ignore[arg-type]
        )
        try:
            await asyncio.sleep(0.05)
            assert not agent.calls  # not before the heartbeats reach a leader
            agent.connected.set()
            await until(lambda: len(agent.calls) == 1, "stream opened")
            agent.calls[0].queue.put_nowait(kat_pb2.AssignmentSet(revision=1))
            await until(lambda: got == [1], "first snapshot")
            # The old stream is silent (its connection is dead): the link reconnects
            agent.reconnect()
            await until(lambda: len(agent.calls) == 2, "stream reopened")
            assert agent.calls[0].cancelled
            agent.calls[1].queue.put_nowait(kat_pb2.AssignmentSet(revision=7))
            await until(lambda: got == [1, 7], "snapshot on the new stream")
            # a late message on the dead stream is never handed over
            agent.calls[0].queue.put_nowait(kat_pb2.AssignmentSet(revision=2))
            await asyncio.sleep(0.05)
            assert got == [1, 7]
        finally:
            task.cancel()

    asyncio.run(run())


def test_the_leader_drops_the_streams_of_a_node_it_no_longer_hears() -> None:
    async def run() -> None:
        book = AssignmentBook()
        await book.reset()
        await book.publish({"n1": [], "n2": []})
        first = book.snapshot("n1")
        assert first is not None
        epoch = book.epoch("n1")
        n1 = asyncio.create_task(book.next_snapshot("n1", first.revision, epoch))
        n2_first = book.snapshot("n2")
        assert n2_first is not None
        n2 = asyncio.create_task(book.next_snapshot("n2", n2_first.revision, book.epoch("n2")))
        await asyncio.sleep(0.01)
        await book.drop("n1")
        assert await asyncio.wait_for(n1, 1) is None
        await asyncio.sleep(0.01)
        assert not n2.done()  # other nodes' streams go on
        # a stream opened after the drop gets snapshots again
        fresh = book.snapshot("n1")
        assert fresh is not None
        waiter = asyncio.create_task(book.next_snapshot("n1", fresh.revision, book.epoch("n1")))
        await book.publish({"n1": [kat_pb2.Assignment()], "n2": []})
        got = await asyncio.wait_for(waiter, 1)
        assert got is not None and len(got.assignments) == 1
        n2.cancel()

    asyncio.run(run())
