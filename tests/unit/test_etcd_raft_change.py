"""While etcd's raft leadership changes, etcd refuses requests it has not carried out
("raft proposal dropped", "leader changed", "no leader"): the client sends them again for
a moment, writes included, instead of failing a join or an admin call (seen in CI: a
member joining while raft leadership moved to it). Other failures keep their rules."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from internal.state.etcd_endpoints import Endpoints
from internal.state.etcd_values import EtcdError, EtcdNoAnswer, EtcdNotExecuted, EtcdUnavailable


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.fixture
def endpoints() -> Iterator[Endpoints]:
    # Channels are made lazily: no connection is ever attempted here.
    eps = Endpoints(["127.0.0.1:1"], creds=None, timeout=2.0, retry_failed_after=1.0, max_workers=2)
    yield eps
    eps.close()


def failing(errors: list[grpc.RpcError]) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn(_stub: object) -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    return calls, fn


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNKNOWN, "raft proposal dropped"),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed"),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
    ],
)
def test_a_write_refused_during_a_raft_change_is_sent_again(
    endpoints: Endpoints, code: grpc.StatusCode, details: str
) -> None:
    calls, fn = failing([Refused(code, details)] * 3)
    assert asyncio.run(endpoints.run("put /k", fn, retry=False)) == "done"  # type: ignore[arg-type]
    assert len(calls) == 4


def test_a_raft_change_that_lasts_fails_within_the_budget(endpoints: Endpoints) -> None:
    calls, fn = failing([Refused(grpc.StatusCode.UNKNOWN, "raft proposal dropped")] * 1000)
    with pytest.raises(EtcdNotExecuted, match="refused put /k for now") as info:
        asyncio.run(endpoints.run("put /k", fn, retry=False))  # type: ignore[arg-type]
    assert isinstance(info.value, EtcdUnavailable)  # callers' "unavailable" handling holds
    assert 3 <= len(calls) < 20  # backed off, and gave up after about half the timeout


def test_a_write_that_may_have_been_applied_is_not_sent_again(endpoints: Endpoints) -> None:
    calls, fn = failing([Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "")])
    with pytest.raises(EtcdUnavailable):
        asyncio.run(endpoints.run("put /k", fn, retry=False))  # type: ignore[arg-type]
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("code", "details", "no_answer"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", True),
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", True),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", False),
    ],
)
def test_only_failures_without_an_answer_leave_a_write_open(
    endpoints: Endpoints, code: grpc.StatusCode, details: str, no_answer: bool
) -> None:
    # EtcdNoAnswer is what EtcdClient.txn reads back (internal/state/etcd_outcome.py).
    _, fn = failing([Refused(code, details)])
    with pytest.raises(EtcdUnavailable) as info:
        asyncio.run(endpoints.run("put /k", fn, retry=False))  # type: ignore[arg-type]
    assert isinstance(info.value, EtcdNoAnswer) is no_answer


def test_other_errors_are_not_retried(endpoints: Endpoints) -> None:
    calls, fn = failing([Refused(grpc.StatusCode.INVALID_ARGUMENT, "bad key")])
    with pytest.raises(EtcdError, match="bad key") as info:
        asyncio.run(endpoints.run("get /k", fn))  # type: ignore[arg-type]
    assert not isinstance(info.value, EtcdUnavailable)
    assert len(calls) == 1
