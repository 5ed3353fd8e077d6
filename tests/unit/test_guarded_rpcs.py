"""Every leader RPC goes through a guard of kat_agent/leader/guards.py: that is where
revoked admin certificates and removed nodes' certificates are refused on every call."""

from __future__ import annotations

import asyncio

import pytest

from api.v1alpha1 import kat_pb2
from kat_agent.leader.agent_api import AgentAPI
from kat_agent.leader.cluster_api import ClusterAPI
from kat_agent.leader.revocation import StreamCut, StreamCutter, until_cut


@pytest.mark.parametrize("servicer", [ClusterAPI, AgentAPI])
def test_every_rpc_method_is_guarded(servicer: type) -> None:
    service = kat_pb2.DESCRIPTOR.services_by_name[servicer.__name__]
    unguarded = [
        m.name
        for m in service.methods
        if not getattr(getattr(servicer, m.name), "__kat_guarded__", False)
    ]
    assert unguarded == []


async def test_a_cut_ends_a_waiting_stream_and_closes_it() -> None:
    closed = asyncio.Event()

    async def forever():  # type: ignore[no-untyped-def]
        try:
            yield 1
            await asyncio.Event().wait()
            yield 2
        finally:
            closed.set()

    streams = StreamCutter()
    got = []
    first = asyncio.Event()
    with streams.opened("n1") as cut:
        assert streams.count("n1") == 1

        async def consume() -> None:
            async for item in until_cut(forever(), cut):
                got.append(item)
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        streams.cut("n2")  # another node: nothing happens
        await asyncio.sleep(0.05)
        assert not task.done()
        streams.cut("n1")
        with pytest.raises(StreamCut):
            await asyncio.wait_for(task, 5)
    assert got == [1] and closed.is_set() and streams.count("n1") == 0


async def test_a_cut_while_an_item_is_being_sent_ends_the_stream_before_the_next() -> None:
    asked = []

    async def counting():  # type: ignore[no-untyped-def]
        for i in range(3):
            asked.append(i)
            yield i

    streams = StreamCutter()
    got = []
    with streams.opened("n1") as cut:
        with pytest.raises(StreamCut):
            async for item in until_cut(counting(), cut):
                got.append(item)
                streams.cut("n1")
                await asyncio.sleep(0)  # the cut's watcher runs while the item is held
    assert got == [0] and asked == [0]


async def test_a_stream_cancelled_from_elsewhere_is_cancelled_even_when_cut_too() -> None:
    async def forever():  # type: ignore[no-untyped-def]
        yield 1
        await asyncio.Event().wait()

    streams = StreamCutter()
    started = asyncio.Event()
    with streams.opened("n1") as cut:

        async def consume() -> None:
            async for _ in until_cut(forever(), cut):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0)
        task.cancel()
        streams.cut("n1")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def test_an_uncut_stream_runs_to_its_end() -> None:
    async def three():  # type: ignore[no-untyped-def]
        for i in range(3):
            yield i

    with StreamCutter().opened("n") as cut:
        assert [i async for i in until_cut(three(), cut)] == [0, 1, 2]


async def test_a_cancelled_stream_leaves_no_unretrieved_step() -> None:
    """A handler cancelled while waiting (the client went away) leaves no task whose end
    asyncio logs as "Task exception was never retrieved" (seen at every stream reopen)."""
    import gc

    loop = asyncio.get_running_loop()
    logged: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: logged.append(ctx))
    release = asyncio.Event()

    class Source:
        def __aiter__(self) -> Source:
            return self

        async def __anext__(self) -> int:
            await release.wait()
            raise StopAsyncIteration

    with StreamCutter().opened("n") as cut:

        async def consume() -> None:
            async for _ in until_cut(Source(), cut):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    release.set()
    for _ in range(5):
        await asyncio.sleep(0.01)
    gc.collect()
    await asyncio.sleep(0)
    assert not [c for c in logged if "never retrieved" in str(c.get("message"))], logged
