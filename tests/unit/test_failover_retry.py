"""katcall's retry policy during a failover (katcall/failover.py)."""

from __future__ import annotations

from katcall import failover


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_retries_until_the_deadline_and_says_so_once() -> None:
    t = FakeTime()
    said: list[str] = []
    retry = failover.Retry(30, announce=said.append, clock=t.clock, sleep=t.sleep)
    pauses = 0
    while retry.pause("not the leader; the leader is 10.99.0.11:9115"):
        pauses += 1
    assert 28 <= t.now <= 30
    assert pauses > 10  # backs off, but keeps trying
    assert len(said) == 1 and "waiting for a leader" in said[0] and "30s" in said[0]


def test_backoff_is_capped() -> None:
    t = FakeTime()
    retry = failover.Retry(1000, announce=lambda _: None, clock=t.clock, sleep=t.sleep)
    steps = []
    for _ in range(20):
        before = t.now
        retry.pause("x")
        steps.append(t.now - before)
    assert max(steps) <= failover.BACKOFF[1]


def test_only_safe_calls_are_sent_again() -> None:
    refused = "not the leader; the leader is 10.99.0.11:9115"
    assert failover.not_executed(refused)
    assert failover.not_executed("no leader elected yet; retry shortly")
    assert not failover.not_executed("Socket closed")
    # refused: anything may go again; maybe executed: only repeatable methods
    assert failover.may_retry("CreateToken", executed_maybe=False)
    assert not failover.may_retry("CreateToken", executed_maybe=True)
    assert not failover.may_retry("RollbackWorkload", executed_maybe=True)
    assert failover.may_retry("Apply", executed_maybe=True)
    assert failover.may_retry("ListNodes", executed_maybe=True)


def test_no_quorum_is_said_at_once() -> None:
    import grpc

    assert failover.waits_for_leader(grpc.StatusCode.UNAVAILABLE, "not the leader; ...")
    assert not failover.waits_for_leader(grpc.StatusCode.UNAVAILABLE, "no quorum: etcd on vm")
    assert not failover.waits_for_leader(grpc.StatusCode.NOT_FOUND, "workload x not found")
