from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from internal.state.election import Election
from internal.state.etcd_process import EtcdProcess
from internal.state.store import Store
from tests.helpers import EtcdEnv, PkiFiles, env_of, requires_etcd, wait_until

pytestmark = requires_etcd


@dataclass
class Candidate:
    """One member's election plus a record of its leader-only work."""

    election: Election
    task: asyncio.Task[None] | None = None
    terms: int = 0
    running: bool = False
    cancelled: int = 0

    async def work(self) -> None:
        self.terms += 1
        self.running = True
        try:
            await asyncio.Event().wait()  # leader-only work runs until cancelled
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running = False


@contextlib.asynccontextmanager
async def candidates(env: EtcdEnv, count: int, ttl: int) -> AsyncIterator[list[Candidate]]:
    async with contextlib.AsyncExitStack() as stack:
        made: list[Candidate] = []
        for i in range(count):
            client = await stack.enter_async_context(env.client(timeout=1.0))
            c = Candidate(Election(Store(client), f"node{i}", f"127.0.0.{i + 1}:9115", ttl=ttl))
            c.task = asyncio.create_task(c.election.run(c.work))
            made.append(c)
        try:
            yield made
        finally:
            for c in made:
                await c.election.resign()
            await asyncio.gather(*(c.task for c in made if c.task), return_exceptions=True)


def leaders(cs: list[Candidate]) -> list[Candidate]:
    return [c for c in cs if c.election.is_leader]


def one_leader_working(cs: list[Candidate]) -> bool:
    found = leaders(cs)
    return len(found) == 1 and found[0].running


async def test_exactly_one_of_two_leads(etcd: EtcdEnv) -> None:
    async with candidates(etcd, 2, ttl=2) as cs:
        await wait_until(lambda: one_leader_working(cs), message="a leader")
        (leader,) = leaders(cs)
        follower = next(c for c in cs if c is not leader)
        await wait_until(lambda: follower.election.current_leader() is not None)
        assert follower.election.current_leader() == leader.election.current_leader()
        info = leader.election.current_leader()
        assert info is not None and info.node_name == leader.election.node_name
        assert info.api_address == leader.election.api_address
        assert leader.running and not follower.running and follower.terms == 0
        assert leader.election.leader_revision == info.revision
        assert follower.election.lease_id is None and follower.election.leader_revision is None
        # Stable: leadership survives several keepalive periods.
        t = time.monotonic()
        while time.monotonic() - t < 1.5:
            assert leaders(cs) == [leader]
            await asyncio.sleep(0.05)


async def test_lost_lease_hands_over_and_cancels_the_old_work(etcd: EtcdEnv) -> None:
    async with candidates(etcd, 2, ttl=2) as cs:
        await wait_until(lambda: one_leader_working(cs), message="a leader")
        (old,) = leaders(cs)
        new = next(c for c in cs if c is not old)
        lease = old.election.lease_id
        assert lease is not None
        async with etcd.client() as admin:
            assert await admin.lease_revoke(lease)  # the lease is lost
        took = await wait_until(
            lambda: new.election.is_leader and new.running, within=2, message="takeover"
        )
        assert took < 2  # well within the TTL
        assert old.cancelled == 1 and not old.running
        new_info = new.election.current_leader()
        assert new_info is not None and new_info.node_name == new.election.node_name
        await wait_until(lambda: old.election.current_leader() == new_info, message="old follows")


async def test_resign_hands_over_at_once(etcd: EtcdEnv) -> None:
    async with candidates(etcd, 2, ttl=10) as cs:
        await wait_until(lambda: one_leader_working(cs), message="a leader")
        (old,) = leaders(cs)
        new = next(c for c in cs if c is not old)
        t = time.monotonic()
        await old.election.resign()
        assert old.cancelled == 1 and not old.election.is_leader
        await wait_until(lambda: new.election.is_leader, within=3, message="takeover")
        assert time.monotonic() - t < 3  # far below the 10 s TTL
        assert old.task is not None
        await asyncio.wait_for(old.task, 1)  # run() returned normally


async def test_leader_work_that_fails_steps_down(etcd: EtcdEnv) -> None:
    crashes = 0

    async def crash() -> None:
        nonlocal crashes
        crashes += 1
        raise RuntimeError("boom")

    async def idle() -> None:
        await asyncio.Event().wait()

    async with etcd.client() as c1, etcd.client() as c2:
        crashing = Election(Store(c1), "crashy", "127.0.0.1:1", ttl=5)
        steady = Election(Store(c2), "steady", "127.0.0.2:1", ttl=5)
        t1 = asyncio.create_task(crashing.run(crash))
        t2: asyncio.Task[None] | None = None
        try:
            await wait_until(lambda: crashes >= 1, message="a first term")
            t2 = asyncio.create_task(steady.run(idle))
            await wait_until(lambda: steady.is_leader, within=5, message="steady to take over")

            def follows_steady() -> bool:
                info = crashing.current_leader()
                return info is not None and info.node_name == "steady"

            await wait_until(follows_steady, message="the crashed leader to follow")
            assert not crashing.is_leader
        finally:
            await crashing.resign()
            await steady.resign()
            await asyncio.gather(t1, *([t2] if t2 else []))


@pytest.mark.async_timeout(40)
async def test_leader_stops_at_once_when_keepalives_cannot_get_through(
    etcd_factory: Callable[..., EtcdProcess], pki_dir: PkiFiles
) -> None:
    proc = etcd_factory()
    async with proc, candidates(env_of(proc, pki_dir), 1, ttl=2) as (c,):
        await wait_until(lambda: c.election.is_leader and c.running, message="leadership")
        pid = proc.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # etcd hangs: keepalives neither succeed nor fail
        try:
            took = await wait_until(lambda: not c.running, within=5, message="work to stop")
            assert took < 2.0  # before the 2 s lease can have expired on the server
            assert c.cancelled == 1 and not c.election.is_leader
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_until(
            lambda: c.election.is_leader and c.running, within=15, message="leading again"
        )
        assert c.terms == 2
