"""Keep etcd's raft leadership off the KAT leader's own etcd member.

Why: when a node crashes (power loss, kernel panic, agent and etcd SIGKILLed), the other
members can only take over KAT leadership once the dead leader's election lease expires.
If that node's etcd was also the raft leader, the survivors first elect a new raft leader
(an election timeout or more), and etcd's new raft leader then renews EVERY lease to its
full TTL plus an election timeout (etcd-io/etcd#9395, by design: only the raft leader
counts lease time). The dead KAT leader's key then outlives it by TTL + ~2 s instead of at
most TTL, and failover took ~8 s instead of ~5 s with a 5 s TTL.

So the KAT leader hands raft leadership to another voting member (etcd's MoveLeader) when
it finds its own member leading raft: to the most caught-up member that answers a status
call (a dead one, e.g. the previous leader's, cannot take it). A single crash then costs
either the KAT leader or the raft leader, not both. A crash of the raft leader alone stalls
writes for about one raft election and extends the (alive) KAT leader's lease, which is
harmless. The cost is one LAN round trip more per write (the KAT leader's member forwards
proposals to the raft leader).

Safety does not depend on this: fencing still rests on the election lease and its key's
revision (internal/state/election.py), and a lease renewed by etcd only lives longer than
the old leader itself assumes, never shorter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from internal.state.etcd import EtcdClient
from internal.state.etcd_values import EtcdError, EtcdStatus, Member

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between looks at the raft leader
MIN_MOVE_INTERVAL = 5.0  # after a transfer, none for this long (no ping-pong with raft)
PROBE_TIMEOUT = 1.0  # a member that does not answer its status this fast is not a target

# Asks one member's own status (over its client URLs); None when it does not answer.
Probe = Callable[[Member], Awaitable[EtcdStatus | None]]


def transfer_target(
    status: EtcdStatus, members: Sequence[Member], answered: Mapping[int, EtcdStatus]
) -> int | None:
    """The member to hand raft leadership to, or None when there is nothing to do (the
    local member does not lead raft) or nobody to give it to. Candidates are the other
    members that answered a status call (`answered`, by member id) and still follow this
    raft leader; the most caught-up one (highest raft index) is chosen, so that the
    transfer completes at once instead of waiting for it to catch up."""
    if not status.has_leader or status.leader_id != status.member_id:
        return None
    ready = [
        answered[m.id]
        for m in members
        if m.id != status.member_id
        and m.name  # a member added but not started yet cannot lead
        and m.id in answered
        and answered[m.id].leader_id == status.member_id
    ]
    if not ready:
        return None
    return max(ready, key=lambda s: (s.raft_index, -s.member_id)).member_id


def status_probe(client_for: Callable[[Sequence[str]], EtcdClient]) -> Probe:
    """A Probe that asks each member through a short-lived client from `client_for(urls)`."""

    async def probe(member: Member) -> EtcdStatus | None:
        if not member.client_urls:
            return None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT * 2), client_for(member.client_urls) as c:
                return await c.status()
        except (EtcdError, TimeoutError, ValueError, OSError) as exc:
            log.debug("etcd member %s did not answer: %s", member.name, exc)
            return None

    return probe


async def keep_raft_leader_elsewhere(
    etcd: EtcdClient,
    probe: Probe,
    *,
    interval: float = CHECK_INTERVAL,
    min_move_interval: float = MIN_MOVE_INTERVAL,
) -> None:
    """Leader-only work, until cancelled: move raft leadership off `etcd`'s member (the
    KAT leader's local one) whenever it has it."""
    last_move: float | None = None
    while True:
        recently = last_move is not None and time.monotonic() - last_move < min_move_interval
        try:
            target = None if recently else await _target(etcd, probe)
            if target is not None:
                await etcd.move_leader(target)
                last_move = time.monotonic()
                log.info(
                    "moved etcd raft leadership from this member to %x, so that a crash of "
                    "this node does not also cost a raft election and lease renewal",
                    target,
                )
        except EtcdError as exc:
            log.warning("could not move etcd raft leadership off this member: %s", exc)
        except Exception:
            # Only an optimisation: never a reason to end the leader's term.
            log.exception("keeping etcd raft leadership off this member failed")
        await asyncio.sleep(interval)


async def _target(etcd: EtcdClient, probe: Probe) -> int | None:
    try:
        status = await etcd.status()
        if status.leader_id != status.member_id:
            return None  # the usual case: one cheap local call per interval
        members = await etcd.member_list()
    except EtcdError as exc:
        # Its own member unreachable: the election notices that (lease keepalives).
        log.debug("cannot see who leads etcd's raft: %s", exc)
        return None
    others = [m for m in members if m.id != status.member_id and m.name]
    found = await asyncio.gather(*(probe(m) for m in others))
    answered = {m.id: s for m, s in zip(others, found, strict=True) if s is not None}
    return transfer_target(status, members, answered)
