"""Which member the KAT leader hands etcd's raft leadership to (kat_agent/leader/raft_leader)."""

from __future__ import annotations

from internal.state.etcd_values import EtcdStatus, Member
from kat_agent.leader.raft_leader import transfer_target


def status(member: int, leader: int) -> EtcdStatus:
    return EtcdStatus("127.0.0.1:2379", member, leader, "3.4", 0, 0, 0, 0)


def member(i: int, name: str = "m") -> Member:
    return Member(i, name, (f"https://10.0.0.{i}:2380",), ())


def test_moves_only_off_a_member_that_leads_raft() -> None:
    three = [member(1), member(2), member(3)]
    assert transfer_target(status(1, 1), three) == 2
    assert transfer_target(status(1, 3), three) is None  # another member leads: nothing to do
    assert transfer_target(status(1, 0), three) is None  # no raft leader at all


def test_single_member_and_unstarted_members_are_never_targets() -> None:
    assert transfer_target(status(1, 1), [member(1)]) is None
    assert transfer_target(status(1, 1), [member(1), member(2, name="")]) is None


def test_a_failed_target_is_not_retried_forever() -> None:
    three = [member(1), member(2), member(3)]
    assert [transfer_target(status(1, 1), three, attempt) for attempt in range(3)] == [2, 3, 2]
