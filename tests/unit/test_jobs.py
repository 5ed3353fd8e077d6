import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from api.v1alpha1 import kat_pb2
from internal.core.jobs import (
    JobInstance,
    JobSpec,
    JobStep,
    RunState,
    ScheduleDecision,
    plan_job_run,
    plan_schedule,
)
from internal.manifests import cron

T0 = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
P = kat_pb2.Instance
_ids = itertools.count()


def job(phase: int, code: int = 0, finished: datetime | None = None) -> JobInstance:
    return JobInstance(f"j{next(_ids)}", phase, code, finished)


def run(
    spec: JobSpec, instances: list[JobInstance], now: datetime = T0 + timedelta(seconds=5)
) -> JobStep:
    return plan_job_run(spec, instances, started_at=T0, now=now)


def test_spec_from_proto_defaults() -> None:
    assert JobSpec.from_proto(kat_pb2.JobDefinitionSpec()) == JobSpec(1, 1, 6, None, "")
    spec = kat_pb2.JobDefinitionSpec(
        schedule="*/5 * * * *",
        completions=4,
        parallelism=2,
        active_deadline_seconds=60,
        backoff_limit=0,
    )
    assert JobSpec.from_proto(spec) == JobSpec(4, 2, 0, 60, "*/5 * * * *")


def test_instance_from_proto() -> None:
    i = kat_pb2.Instance(id="a", phase=P.FAILED, exit_code=3)
    i.finished_at.FromDatetime(T0)
    assert JobInstance.from_proto(i) == JobInstance("a", P.FAILED, 3, T0)


@pytest.mark.parametrize(
    ("phases", "create"),
    [
        ([], 2),  # parallelism 2
        ([P.RUNNING], 1),
        ([P.RUNNING, P.PENDING], 0),
        ([P.SUCCEEDED] * 3, 2),
        ([P.SUCCEEDED] * 4, 1),  # only one more completion needed
        ([P.SUCCEEDED] * 4 + [P.RUNNING], 0),  # the running one may be the last
        ([P.SUCCEEDED, P.TERMINATING], 1),  # terminating still holds a slot
    ],
)
def test_completions_and_parallelism(phases: list[int], create: int) -> None:
    step = run(JobSpec(completions=5, parallelism=2), [job(p) for p in phases])
    assert step.create == create and step.state is RunState.RUNNING and step.stop == ()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_job_simulation_never_exceeds_parallelism_or_completions(seed: int) -> None:
    rng = random.Random(seed)
    spec = JobSpec(completions=7, parallelism=3, backoff_limit=100)
    instances: list[JobInstance] = []
    now = T0
    for _ in range(500):
        step = run(spec, instances, now)
        if step.state is not RunState.RUNNING:
            break
        instances += [job(P.RUNNING) for _ in range(step.create)]
        assert sum(i.phase == P.RUNNING for i in instances) <= spec.parallelism
        # Some running instances finish; a fifth of them fail.
        instances = [
            (job(P.FAILED, 1) if rng.random() < 0.2 else job(P.SUCCEEDED))
            if i.phase == P.RUNNING and rng.random() < 0.5
            else i
            for i in instances
        ]
        now += timedelta(minutes=10)  # past any retry back-off
    assert step.state is RunState.SUCCEEDED and step.reason == "Completed"
    assert sum(i.phase == P.SUCCEEDED for i in instances) == spec.completions


def test_success_stops_leftovers() -> None:
    left = job(P.RUNNING)
    step = run(JobSpec(completions=2, parallelism=3), [job(P.SUCCEEDED), job(P.SUCCEEDED), left])
    assert step.state is RunState.SUCCEEDED and step.stop == (left.id,)
    assert step.message == "2/2 completions succeeded"


def test_backoff_limit() -> None:
    spec = JobSpec(completions=1, backoff_limit=2)
    end = T0 + timedelta(seconds=1)
    fails = [job(P.FAILED, 1, end), job(P.FAILED, 1, end)]
    step = run(spec, fails, now=T0 + timedelta(minutes=1))
    assert step.state is RunState.RUNNING and step.create == 1  # 2 failures == limit: retry
    last = job(P.FAILED, 137, end + timedelta(seconds=1))
    other = job(P.RUNNING)
    step = run(spec, [*fails, last, other])
    assert step.state is RunState.FAILED and step.reason == "BackoffLimitExceeded"
    assert step.stop == (other.id,) and step.create == 0
    assert step.message == (
        f"3 instances failed, more than backoffLimit 2; last: {last.id} exited with code 137"
    )


def test_backoff_limit_zero_fails_on_first_failure() -> None:
    step = run(JobSpec(backoff_limit=0), [job(P.FAILED, 1)])
    assert step.state is RunState.FAILED


def test_retries_wait_for_back_off() -> None:
    end = T0 + timedelta(seconds=10)
    fails = [job(P.FAILED, 1, end) for _ in range(3)]  # third failure: 4 s back-off
    step = run(JobSpec(), fails, now=end + timedelta(seconds=3))
    assert step.create == 0 and step.retry_at == end + timedelta(seconds=4)
    step = run(JobSpec(), fails, now=end + timedelta(seconds=4))
    assert step.create == 1 and step.retry_at is None


def test_active_deadline() -> None:
    spec = JobSpec(completions=3, parallelism=3, active_deadline_seconds=60)
    a, b = job(P.RUNNING), job(P.TERMINATING)
    step = run(spec, [a, b, job(P.SUCCEEDED)], now=T0 + timedelta(seconds=59))
    assert step.state is RunState.RUNNING and step.deadline_at == T0 + timedelta(seconds=60)
    step = run(spec, [a, b, job(P.SUCCEEDED)], now=T0 + timedelta(seconds=60))
    assert step.state is RunState.FAILED and step.reason == "DeadlineExceeded"
    assert step.stop == (a.id,)  # the terminating one is already on its way out
    assert step.message == "still running after activeDeadlineSeconds 60; 1/3 completions succeeded"


def test_success_wins_over_deadline() -> None:
    spec = JobSpec(active_deadline_seconds=1)
    step = run(spec, [job(P.SUCCEEDED)], now=T0 + timedelta(hours=1))
    assert step.state is RunState.SUCCEEDED


# ------------------------------------------------------------------ schedules


def at(minute: int, second: int = 0) -> datetime:
    return T0 + timedelta(minutes=minute, seconds=second)


def sched(now: datetime, **kw: object) -> ScheduleDecision:
    return plan_schedule("*/5 * * * *", now=now, created=at(3), **kw)  # type: ignore[arg-type]


def test_first_run_on_first_tick_after_creation() -> None:
    d = sched(at(4))
    assert (d.start_now, d.next_tick) == (False, at(5))
    d = sched(at(5, 2))
    assert d.start_now and d.due_tick == at(5) and d.next_tick == at(10)


def test_never_two_runs_and_ticks_during_a_run_are_skipped() -> None:
    # Run started at 10:05:01 and is still active at 10:10:30: no second run.
    d = sched(at(10, 30), last_run_start=at(5, 1), run_active=True)
    assert not d.start_now and d.next_tick == at(15)
    # It ended at 10:12: the 10:10 tick was skipped, not queued.
    d = sched(at(12), last_run_start=at(5, 1), last_run_end=at(12))
    assert not d.start_now and d.next_tick == at(15)
    d = sched(at(15), last_run_start=at(5, 1), last_run_end=at(12))
    assert d.start_now and d.due_tick == at(15)


def test_short_run_next_tick_runs() -> None:
    d = sched(at(10), last_run_start=at(5), last_run_end=at(6))
    assert d.start_now and d.due_tick == at(10)


def test_ticks_missed_while_idle_collapse_into_one_run() -> None:
    d = sched(at(60), last_run_start=at(5), last_run_end=at(6))
    assert d.start_now and d.due_tick == at(10) and d.next_tick == at(65)
    # That run started at 11:00 and finished at once: nothing more until 11:05.
    d = sched(at(61), last_run_start=at(60), last_run_end=at(60, 30))
    assert not d.start_now and d.next_tick == at(65)


def test_every_schedule_and_parsed_schedule() -> None:
    every = cron.parse("@every 30s")
    d = plan_schedule(every, now=at(0, 31), created=at(0, 1))
    assert d.start_now and d.due_tick == at(0, 30) and d.next_tick == at(1)
    d = plan_schedule("@every 30s", now=at(0, 31), created=at(0, 1), last_run_start=at(0, 30))
    assert not d.start_now


def test_invalid_schedule_raises() -> None:
    with pytest.raises(ValueError):
        plan_schedule("61 * * * *", now=T0, created=T0)
