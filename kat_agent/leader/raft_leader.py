"""Keep etcd's raft leadership off the KAT leader's own etcd member.

Why: when a node crashes (power loss, kernel panic, agent and etcd SIGKILLed), the other
members can only take over KAT leadership once the dead leader's election lease expires.
If that node's etcd was also the raft leader, the survivors first elect a new raft leader
(an election timeout or more), and etcd's new raft leader then renews EVERY lease to its
full TTL plus an election timeout (etcd-io/etcd#9395, by design: only the raft leader
counts lease time). The dead KAT leader's key then outlives it by TTL + ~2 s instead of at
most TTL, and failover took ~8 s instead of ~5 s with a 5 s TTL.

So the KAT leader hands raft leadership to another voting member (etcd's MoveLeader) when
it finds its own member leading raft; a single crash then costs either the KAT leader or
the raft leader, not both. A crash of the raft leader alone stalls writes for about one
raft election and extends the (alive) KAT leader's lease, which is harmless. The cost is
one LAN round trip more per write (the KAT leader's member forwards proposals).

Safety does not depend on this: fencing still rests on the election lease and its key's
revision (internal/state/election.py), and a lease renewed by etcd only lives longer than
the old leader itself assumes, never shorter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from internal.state.etcd import EtcdClient
from internal.state.etcd_values import EtcdError, EtcdStatus, Member

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between looks at the raft leader
MIN_MOVE_INTERVAL = 5.0  # at most one transfer this often (no ping-pong with raft elections)


def transfer_target(status: EtcdStatus, members: Sequence[Member], attempt: int = 0) -> int | None:
    """The member to hand raft leadership to, or None when there is nothing to do: the
    local member does not lead raft, or no other started member exists. `attempt` counts
    failed transfers in a row, so that a member that cannot take it is not tried forever."""
    if not status.has_leader or status.leader_id != status.member_id:
        return None
    # A member added but not started yet has no name: it cannot lead.
    others = sorted(m.id for m in members if m.id != status.member_id and m.name)
    if not others:
        return None
    return others[attempt % len(others)]


async def keep_raft_leader_elsewhere(
    etcd: EtcdClient,
    *,
    interval: float = CHECK_INTERVAL,
    min_move_interval: float = MIN_MOVE_INTERVAL,
) -> None:
    """Leader-only work, until cancelled: move raft leadership off `etcd`'s member (the
    KAT leader's local one) whenever it has it."""
    failures = 0
    last_move: float | None = None
    while True:
        target = await _target(etcd, failures)
        recently = last_move is not None and time.monotonic() - last_move < min_move_interval
        if target is not None and not recently:
            last_move = time.monotonic()
            try:
                await etcd.move_leader(target)
            except EtcdError as exc:
                failures += 1
                log.warning("could not move etcd raft leadership to %x: %s", target, exc)
            else:
                failures = 0
                log.info(
                    "moved etcd raft leadership from this member to %x, so that a crash of "
                    "this node does not also cost a raft election and lease renewal",
                    target,
                )
        await asyncio.sleep(interval)


async def _target(etcd: EtcdClient, failures: int) -> int | None:
    try:
        status = await etcd.status()
        if status.leader_id != status.member_id:
            return None  # the usual case: one cheap local call per interval
        return transfer_target(status, await etcd.member_list(), failures)
    except EtcdError as exc:
        # Its own member unreachable: the election notices that (lease keepalives).
        log.debug("cannot see who leads etcd's raft: %s", exc)
        return None
