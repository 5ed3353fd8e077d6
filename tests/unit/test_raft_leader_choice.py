"""Which member the KAT leader hands etcd's raft leadership to (kat_agent/leader/raft_leader)."""

from __future__ import annotations

from internal.state.etcd_values import EtcdStatus, Member
from kat_agent.leader.raft_leader import transfer_target


def status(member: int, leader: int, index: int = 100) -> EtcdStatus:
    return EtcdStatus("127.0.0.1:2379", member, leader, "3.4", 0, index, 2, 0)


def member(i: int, name: str = "m") -> Member:
    return Member(i, name, (f"https://10.0.0.{i}:2380",), (f"https://10.0.0.{i}:2379",))


THREE = [member(1), member(2), member(3)]


def test_moves_only_off_a_member_that_leads_raft() -> None:
    answered = {2: status(2, 1), 3: status(3, 1)}
    assert transfer_target(status(1, 1), THREE, answered) == 2
    assert transfer_target(status(1, 3), THREE, answered) is None  # another member leads
    assert transfer_target(status(1, 0), THREE, answered) is None  # no raft leader at all


def test_the_most_caught_up_member_that_answered_takes_it() -> None:
    answered = {2: status(2, 1, index=90), 3: status(3, 1, index=100)}
    assert transfer_target(status(1, 1), THREE, answered) == 3
    # member 3 is dead (the previous leader's node, say): never a target
    assert transfer_target(status(1, 1), THREE, {2: status(2, 1)}) == 2
    # one that follows another raft leader (it is partitioned off this one) is no target
    assert transfer_target(status(1, 1), THREE, {2: status(2, 3), 3: status(3, 0)}) is None


def test_single_member_and_unstarted_members_are_never_targets() -> None:
    assert transfer_target(status(1, 1), [member(1)], {}) is None
    unstarted = [member(1), member(2, name="")]
    assert transfer_target(status(1, 1), unstarted, {2: status(2, 1)}) is None
