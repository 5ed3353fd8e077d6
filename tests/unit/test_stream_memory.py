"""A long-lived stream keeps no message it already sent: every node has a WatchAssignments
stream, and its last message (a full snapshot lists every peer: ~200 KB with 1,000
nodes) held while the stream waits for the next change made most of the leader's memory
(issue 14)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import weakref
from collections.abc import AsyncIterator
from typing import Any

from internal.observability import grpc_metrics
from kat_agent.leader.revocation import StreamCutter, until_cut


class Message:
    """Stands for a protobuf message (those cannot be weakly referenced)."""


async def _until_released(ref: weakref.ref[Message]) -> bool:
    for _ in range(20):
        await asyncio.sleep(0.01)
        gc.collect()
        if ref() is None:
            return True
    return False


async def test_until_cut_holds_no_item_while_waiting_for_the_next() -> None:
    released: list[bool] = []

    async def source() -> AsyncIterator[Message]:
        first = Message()
        ref = weakref.ref(first)
        yield first
        del first
        # the consumer asked for the next item: the first is no one's any more
        released.append(await _until_released(ref))
        yield Message()

    got = []
    with StreamCutter().opened("n") as cut:

        async def consume() -> None:
            async for item in until_cut(source(), cut):
                got.append(isinstance(item, Message))
                del item

        await asyncio.wait_for(consume(), 5)
    assert got == [True, True]
    assert released == [True]


class Context:
    def __init__(self) -> None:
        self.written: list[weakref.ref[Message]] = []
        self.release_checks: list[bool] = []

    async def write(self, message: Any) -> None:
        self.written.append(weakref.ref(message))

    def code(self) -> None:
        return None


async def test_metrics_interceptor_writes_stream_messages_and_drops_them() -> None:
    """Served through context.write (grpc.aio keeps a generator handler's last message
    alive until the next), and the wrapper holds no message while waiting."""
    ctx = Context()

    async def behavior(request: Any, context: Any) -> AsyncIterator[Message]:
        yield Message()
        ctx.release_checks.append(await _until_released(ctx.written[0]))
        yield Message()

    handler = grpc_metrics._stream(behavior, "AgentAPI", "WatchAssignments")
    assert inspect.iscoroutinefunction(handler)
    assert await asyncio.wait_for(handler(None, ctx), 5) is None
    assert len(ctx.written) == 2
    assert ctx.release_checks == [True]
