"""The KAT leader keeps etcd's raft leadership on another member, so that a crash of the
leader's node (agent and etcd killed together) does not also cost a raft election: a new
raft leader renews every lease to its full TTL (etcd-io/etcd#9395), which kept the dead
leader's key alive for TTL + ~2 s."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence

import pytest

from internal.state.election import Election
from internal.state.etcd import EtcdClient
from internal.state.etcd_process import EtcdProcess
from internal.state.store import Store
from kat_agent.leader.raft_leader import keep_raft_leader_elsewhere, status_probe
from tests.helpers import PkiFiles, free_port, requires_etcd, wait_until

pytestmark = requires_etcd

Factory = Callable[..., EtcdProcess]


@pytest.mark.async_timeout(120)
async def test_leader_node_crash_leaves_the_raft_leader_alive(
    etcd_factory: Factory, pki_dir: PkiFiles
) -> None:
    peers = {f"m{i}": f"https://127.0.0.1:{free_port()}" for i in range(3)}
    members = [
        # No restart: the killed member stays dead, as on a crashed node.
        etcd_factory(
            name=n,
            peer_urls=[u],
            initial_cluster=peers,
            initial_cluster_state="new",
            restart_backoff=(600.0, 600.0),
        )
        for n, u in peers.items()
    ]
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(lambda: asyncio.gather(*(m.stop(grace=1) for m in members)))
        for m in members:
            await m.start()
        await asyncio.gather(*(m.wait_healthy(30) for m in members))
        # Each candidate talks to its own member only, as kat-agent does.
        clients: list[EtcdClient] = [
            await stack.enter_async_context(m.client(timeout=2.0)) for m in members
        ]
        ids = [(await c.status()).member_id for c in clients]
        elections = [
            Election(Store(c), f"m{i}", f"127.0.0.{i + 1}:9115", ttl=3)
            for i, c in enumerate(clients)
        ]

        def client_for(urls: Sequence[str]) -> EtcdClient:
            return EtcdClient(
                urls,
                ca_file=pki_dir.ca_cert,
                cert_file=pki_dir.etcd_cert,
                key_file=pki_dir.etcd_key,
                timeout=1.0,
            )

        def work(i: int) -> Callable[[], Awaitable[None]]:
            return lambda: keep_raft_leader_elsewhere(
                clients[i], status_probe(client_for), interval=0.2, min_move_interval=1.0
            )

        tasks = [asyncio.create_task(e.run(work(i))) for i, e in enumerate(elections)]

        async def stop_all() -> None:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(stop_all)

        alive = [0, 1, 2]

        def the_leader() -> int | None:
            found = [i for i in alive if elections[i].is_leader]
            return found[0] if len(found) == 1 else None

        async def raft_leader() -> int:
            return (await clients[alive[0]].status()).leader_id

        async def raft_led_elsewhere() -> bool:
            lead = the_leader()
            return lead is not None and (await raft_leader()) not in (0, ids[lead])

        await wait_until(raft_led_elsewhere, within=60, message="raft leadership off the leader")
        old = the_leader()
        assert old is not None
        before = await clients[(old + 1) % 3].status()

        # The leader's node crashes: its etcd is SIGKILLed, its agent dies without resigning.
        pid = members[old].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        tasks[old].cancel()  # its last revoke can only reach its own, dead member
        await asyncio.gather(tasks[old], return_exceptions=True)
        alive.remove(old)

        seen: set[tuple[int, int]] = set()  # (raft leader, term) until the takeover

        async def taken_over() -> bool:
            if the_leader() is not None:
                return True
            status = await clients[alive[0]].status()
            seen.add((status.leader_id, status.raft_term))
            return False

        await wait_until(taken_over, within=60, message="a new leader")
        # The same raft leader and term throughout: no raft election (and so no renewal
        # of the dead leader's lease) came between the crash and the takeover.
        assert seen == {(before.leader_id, before.raft_term)}
        await wait_until(raft_led_elsewhere, within=60, message="raft leadership moved again")
