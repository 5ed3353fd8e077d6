import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from api.v1alpha1 import kat_pb2
from internal.core.rollout import (
    InstanceView,
    Progress,
    RestartAction,
    RolloutState,
    RolloutStep,
    backoff_delay,
    decide_restart,
    max_surge,
    plan_daemon_rollout,
    plan_rollout,
    same_template,
    stop_order,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
P = kat_pb2.Instance
ROLLING = kat_pb2.UpdateStrategy.ROLLING
SIMULTANEOUS = kat_pb2.UpdateStrategy.SIMULTANEOUS
_ids = itertools.count()


def inst(gen: int, ready: bool = True, phase: int = P.RUNNING, **kw: object) -> InstanceView:
    return InstanceView(f"i{next(_ids)}", gen, phase, ready, **kw)  # type: ignore[arg-type]


def strategy(
    kind: kat_pb2.UpdateStrategy.Type = ROLLING, surge: str = "1"
) -> kat_pb2.UpdateStrategy:
    return kat_pb2.UpdateStrategy(type=kind, max_surge=surge if kind == ROLLING else "")


def plan(
    instances: list[InstanceView],
    *,
    replicas: int = 3,
    gen: int = 2,
    strat: kat_pb2.UpdateStrategy | None = None,
    now: datetime = T0,
    progress: Progress | None = None,
    deadline: float = 600,
) -> RolloutStep:
    return plan_rollout(
        replicas=replicas,
        generation=gen,
        strategy=strat or strategy(),
        instances=instances,
        now=now,
        progress=progress,
        deadline_seconds=deadline,
    )


@pytest.mark.parametrize(
    ("value", "replicas", "expected"),
    [
        ("1", 3, 1),
        ("2", 3, 2),
        (" 3 ", 1, 3),
        ("", 3, 1),  # default
        ("0", 3, 1),  # at least 1
        ("25%", 10, 3),  # rounds up
        ("25%", 30, 8),
        ("10%", 1, 1),
        ("100%", 4, 4),
        ("50%", 0, 1),
    ],
)
def test_max_surge(value: str, replicas: int, expected: int) -> None:
    assert max_surge(value, replicas) == expected


def test_max_surge_invalid() -> None:
    with pytest.raises(ValueError, match="maxSurge"):
        max_surge("1.5", 3)


def test_same_template() -> None:
    a = kat_pb2.WorkloadSpec(replicas=3)
    a.source.image = "busybox:1"
    b = kat_pb2.WorkloadSpec()
    b.CopyFrom(a)
    b.replicas = 5
    b.update_strategy.type = SIMULTANEOUS
    b.restart_policy.condition = kat_pb2.RestartPolicy.NEVER
    assert same_template(a, b)
    b.source.image = "busybox:2"
    assert not same_template(a, b)


def test_stop_order_not_serving_then_newest() -> None:
    old = inst(1, started_at=T0)
    new = inst(1, started_at=T0 + timedelta(hours=1))
    broken = inst(1, ready=False, started_at=T0)
    pending = inst(1, ready=False, phase=P.PENDING)
    assert stop_order([old, new, broken, pending]) == [pending, broken, new, old]


# ------------------------------------------------------------------ scaling


def test_scale_up_creates_all_missing_at_once() -> None:
    step = plan([], replicas=5)
    assert (step.create, step.stop, step.state) == (5, (), RolloutState.PROGRESSING)
    step = plan([inst(2), inst(2)], replicas=5)
    assert step.create == 3


def test_scale_down_prefers_not_ready_then_newest() -> None:
    a = inst(2, started_at=T0)
    b = inst(2, started_at=T0 + timedelta(minutes=5))
    c = inst(2, ready=False, started_at=T0)
    d = inst(2, started_at=T0 + timedelta(minutes=1))
    step = plan([a, b, c, d], replicas=2)
    assert step.stop == (c.id, b.id) and step.create == 0


def test_steady_state_is_complete() -> None:
    step = plan([inst(2), inst(2), inst(2)])
    assert (step.create, step.stop, step.state) == (0, (), RolloutState.COMPLETE)
    assert step.message == "generation 2: 3/3 instances ready"


def test_terminating_counts_for_nothing_and_failed_keeps_its_slot() -> None:
    step = plan([inst(2), inst(2), inst(2, phase=P.TERMINATING)])
    assert step.create == 1
    step = plan([inst(2), inst(2), inst(2, ready=False, phase=P.FAILED)])
    assert step.create == 0 and step.stop == ()


# ------------------------------------------------------------------ ROLLING


def test_rolling_first_step_only_surges() -> None:
    step = plan([inst(1), inst(1), inst(1)])
    assert (step.create, step.stop) == (1, ())


def test_rolling_waits_for_new_ready_before_stopping_old() -> None:
    olds = [inst(1), inst(1), inst(1)]
    step = plan([*olds, inst(2, ready=False)])
    assert (step.create, step.stop) == (0, ())
    step = plan([*olds, inst(2, ready=True)])
    assert len(step.stop) == 1 and step.stop[0] in {i.id for i in olds}
    assert step.create == 1


def test_rolling_stops_old_that_do_not_serve_at_once() -> None:
    sick = inst(1, ready=False)
    step = plan([inst(1), inst(1), sick])
    assert step.stop == (sick.id,)
    assert step.create == 2  # 2 old + 2 new = replicas + surge


def test_rolling_scale_down_during_update() -> None:
    step = plan([inst(1) for _ in range(5)], replicas=2)
    assert len(step.stop) == 3 and step.create == 1


def apply(step: RolloutStep, instances: list[InstanceView], gen: int) -> list[InstanceView]:
    gone = set(step.stop)
    kept = [i for i in instances if i.id not in gone]
    return kept + [inst(gen, ready=False, phase=P.STARTING) for _ in range(step.create)]


@pytest.mark.parametrize(("replicas", "surge"), [(3, "1"), (5, "2"), (10, "25%"), (1, "1")])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rolling_simulation_keeps_invariants(replicas: int, surge: str, seed: int) -> None:
    rng = random.Random(seed)
    limit = replicas + max_surge(surge, replicas)
    instances = [inst(1) for _ in range(replicas)]
    progress = None
    now = T0
    for _ in range(200):
        step = plan(
            instances, replicas=replicas, strat=strategy(ROLLING, surge), now=now, progress=progress
        )
        progress = step.progress
        if step.state is RolloutState.COMPLETE:
            break
        assert step.state is RolloutState.PROGRESSING
        instances = apply(step, instances, 2)
        assert len(instances) <= limit
        assert sum(i.serving for i in instances) >= replicas
        # Time passes: some starting instances become ready.
        instances = [
            replace(i, phase=P.RUNNING, ready=True) if not i.ready and rng.random() < 0.5 else i
            for i in instances
        ]
        now += timedelta(seconds=10)
    else:
        pytest.fail("rollout did not complete")
    assert all(i.generation == 2 and i.serving for i in instances)
    assert len(instances) == replicas


def test_simultaneous_replaces_everything_at_once() -> None:
    olds = [inst(1), inst(1, ready=False), inst(1)]
    step = plan(olds, strat=strategy(SIMULTANEOUS))
    assert set(step.stop) == {i.id for i in olds} and step.create == 3
    instances = apply(step, olds, 2)
    step = plan(instances, strat=strategy(SIMULTANEOUS))
    assert (step.create, step.stop, step.state) == (0, (), RolloutState.PROGRESSING)
    instances = [replace(i, phase=P.RUNNING, ready=True) for i in instances]
    assert plan(instances, strat=strategy(SIMULTANEOUS)).state is RolloutState.COMPLETE


# ------------------------------------------------------------------ halting


def test_rollout_halts_when_new_instances_never_get_ready() -> None:
    olds = [inst(1), inst(1), inst(1)]
    step = plan(olds)
    instances = apply(step, olds, 2)
    broken = replace(instances[-1], phase=P.STARTING, message="health check failed 3 times")
    instances[-1] = broken
    step = plan(instances, now=T0, progress=step.progress)  # created: progress at T0
    step = plan(instances, now=T0 + timedelta(seconds=600), progress=step.progress)
    assert step.state is RolloutState.PROGRESSING
    step = plan(instances, now=T0 + timedelta(seconds=601), progress=step.progress)
    assert step.state is RolloutState.HALTED
    assert step.message == (
        "rollout of generation 2 halted: 0/3 updated instances ready, no progress for 601s"
        f" (deadline 600s); {broken.id} is STARTING: health check failed 3 times"
    )
    # The old instances keep serving; nothing more is created.
    assert (step.create, step.stop) == (0, ())
    # The new instance gets ready after all: the rollout resumes.
    instances[-1] = replace(broken, phase=P.RUNNING, ready=True)
    step = plan(instances, now=T0 + timedelta(seconds=700), progress=step.progress)
    assert step.state is RolloutState.PROGRESSING and len(step.stop) == 1
    assert step.progress.since == T0 + timedelta(seconds=700)


def test_flapping_is_not_progress() -> None:
    olds = [inst(1), inst(1), inst(1)]
    new = inst(2, ready=True)
    p = plan([*olds, new]).progress
    p = plan(
        [*olds, replace(new, ready=False)], now=T0 + timedelta(seconds=100), progress=p
    ).progress
    p = plan([*olds, new], now=T0 + timedelta(seconds=200), progress=p).progress
    assert p.since == T0


def test_new_generation_restarts_progress() -> None:
    old_progress = Progress(generation=1, since=T0, completed=True)
    step = plan([inst(1)], replicas=1, now=T0 + timedelta(hours=1), progress=old_progress)
    assert step.progress.generation == 2 and step.progress.since == T0 + timedelta(hours=1)
    assert step.state is RolloutState.PROGRESSING


def test_completion_is_honest_after_a_readiness_dip() -> None:
    ready = [inst(2), inst(2), inst(2)]
    p = plan(ready).progress
    assert p.completed
    dip = [*ready[:2], replace(ready[2], ready=False)]
    later = T0 + timedelta(hours=2)
    step = plan(dip, now=later, progress=p)
    assert step.state is RolloutState.PROGRESSING and step.updated_ready == 2
    # the progress clock starts at the dip, not at the old rollout
    assert step.progress.since == later
    assert plan(ready, now=later, progress=step.progress).state is RolloutState.COMPLETE


def test_scale_up_is_progress_not_completion() -> None:
    ready = [inst(2), inst(2), inst(2)]
    p = plan(ready).progress
    step = plan(ready, replicas=6, now=T0 + timedelta(hours=1), progress=p)
    assert step.create == 3 and step.state is RolloutState.PROGRESSING
    assert "3/6" in step.message
    grown = [*ready, inst(2, ready=False), inst(2, ready=False), inst(2, ready=False)]
    assert plan(grown, replicas=6, progress=step.progress).state is RolloutState.PROGRESSING
    done = [*ready, inst(2), inst(2), inst(2)]
    assert plan(done, replicas=6, progress=step.progress).state is RolloutState.COMPLETE


def test_lost_instance_is_progress_until_replaced() -> None:
    ready = [inst(2), inst(2), inst(2)]
    p = plan(ready).progress
    step = plan(ready[:2], now=T0 + timedelta(minutes=1), progress=p)
    assert step.create == 1 and step.state is RolloutState.PROGRESSING


# ------------------------------------------------------------------ DAEMON_SERVICE


def dplan(
    instances: list[InstanceView],
    eligible: set[str],
    keep: set[str] | None = None,
    strat: kat_pb2.UpdateStrategy | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...], RolloutState]:
    step = plan_daemon_rollout(
        eligible=eligible,
        keep=keep if keep is not None else eligible,
        generation=2,
        strategy=strat or strategy(),
        instances=instances,
        now=T0,
    )
    return step.create_on, step.stop, step.state


def test_daemon_new_nodes_get_a_copy_and_others_stop() -> None:
    a, gone = inst(2, node="a"), inst(2, node="old")
    create_on, stop, state = dplan([a, gone], {"a", "b"})
    assert create_on == ("b",) and stop == (gone.id,) and state is RolloutState.PROGRESSING
    assert dplan([a], {"a"}) == ((), (), RolloutState.COMPLETE)


def test_daemon_rolling_one_node_at_a_time() -> None:
    nodes = ["a", "b", "c"]
    instances = [inst(1, node=n) for n in nodes]
    for _ in range(10):
        create_on, stop, state = dplan(instances, set(nodes))
        if state is RolloutState.COMPLETE:
            break
        gone = set(stop)
        instances = [i for i in instances if i.id not in gone]
        instances += [inst(2, ready=False, node=n) for n in create_on]
        in_flight = {i.node for i in instances if i.generation == 2 and not i.serving}
        assert len(in_flight) <= 1
        for n in nodes:  # every node keeps a serving copy
            assert any(i.serving for i in instances if i.node == n) or n in in_flight
        instances = [replace(i, ready=True) for i in instances]
    assert sorted(i.node for i in instances) == nodes
    assert all(i.generation == 2 for i in instances)


def test_daemon_not_eligible_node_keeps_old_copy_and_simultaneous() -> None:
    a, b = inst(1, node="a"), inst(1, node="b")
    create_on, stop, _ = dplan([a, b], {"a"}, keep={"a", "b"}, strat=strategy(SIMULTANEOUS))
    assert create_on == ("a",) and stop == (a.id,)


# ------------------------------------------------------------------ restart policy


@pytest.mark.parametrize(
    ("restarts", "seconds"),
    [(0, 1), (1, 2), (2, 4), (5, 32), (8, 256), (9, 300), (50, 300), (10**9, 300)],
)
def test_backoff_delay(restarts: int, seconds: int) -> None:
    assert backoff_delay(restarts) == timedelta(seconds=seconds)


def policy(
    cond: kat_pb2.RestartPolicy.Condition, max_restarts: int = 0, reset: int = 0
) -> kat_pb2.RestartPolicy:
    return kat_pb2.RestartPolicy(condition=cond, max_restarts=max_restarts, reset_seconds=reset)


ALWAYS = kat_pb2.RestartPolicy.ALWAYS
NEVER = kat_pb2.RestartPolicy.NEVER
MAX_COUNT = kat_pb2.RestartPolicy.MAX_COUNT


def test_always_backs_off_exponentially() -> None:
    exited = T0 + timedelta(seconds=30)
    d = decide_restart(
        policy(ALWAYS), restart_count=3, started_at=T0, exited_at=exited, now=exited, exit_code=1
    )
    assert d.action is RestartAction.RESTART_LATER
    assert d.at == exited + timedelta(seconds=8) and d.restart_count == 4
    d = decide_restart(
        policy(ALWAYS),
        restart_count=3,
        started_at=T0,
        exited_at=exited,
        now=exited + timedelta(seconds=8),
        exit_code=0,  # services restart after a clean exit too
    )
    assert d.action is RestartAction.RESTART_NOW and d.phase == P.STARTING


def test_always_resets_after_ten_minutes_of_clean_running() -> None:
    exited = T0 + timedelta(minutes=10)
    d = decide_restart(
        policy(ALWAYS), restart_count=20, started_at=T0, exited_at=exited, now=exited, exit_code=1
    )
    assert d.restart_count == 1 and d.at == exited + timedelta(seconds=1)
    d = decide_restart(
        policy(ALWAYS),
        restart_count=20,
        started_at=T0,
        exited_at=exited - timedelta(seconds=1),
        now=exited,
        exit_code=1,
    )
    assert d.restart_count == 21 and d.at == exited - timedelta(seconds=1) + timedelta(minutes=5)


@pytest.mark.parametrize(("code", "phase"), [(1, P.FAILED), (0, P.SUCCEEDED)])
def test_never_gives_up(code: int, phase: int) -> None:
    d = decide_restart(
        policy(NEVER), restart_count=0, started_at=T0, exited_at=T0, now=T0, exit_code=code
    )
    assert d.action is RestartAction.GIVE_UP and d.phase == phase and d.at is None
    if code:
        assert d.reason == "exited with code 1; restartPolicy NEVER"


def test_max_count_gives_up_within_window_and_resets_after() -> None:
    p = policy(MAX_COUNT, max_restarts=3, reset=60)
    run = dict(started_at=T0, exited_at=T0 + timedelta(seconds=10), now=T0 + timedelta(hours=1))
    d = decide_restart(p, restart_count=2, exit_code=2, **run)  # type: ignore[arg-type]
    assert d.action is RestartAction.RESTART_NOW and d.restart_count == 3
    d = decide_restart(p, restart_count=3, exit_code=2, **run)  # type: ignore[arg-type]
    assert d.action is RestartAction.GIVE_UP and d.phase == P.FAILED
    assert d.reason == (
        "exited with code 2 after 3 restarts within 60s; restartPolicy MAX_COUNT allows 3"
    )
    # 60 s of clean running: the window resets, the count starts again.
    d = decide_restart(
        p, restart_count=3, started_at=T0, exited_at=T0 + timedelta(seconds=60), now=T0, exit_code=2
    )
    assert d.action is RestartAction.RESTART_LATER and d.restart_count == 1


def test_max_count_without_reset_seconds_counts_for_the_lifetime() -> None:
    p = policy(MAX_COUNT, max_restarts=2)
    d = decide_restart(
        p, restart_count=2, started_at=T0, exited_at=T0 + timedelta(days=3), now=T0, exit_code=1
    )
    assert d.action is RestartAction.GIVE_UP
    assert d.reason == "exited with code 1 after 2 restarts; restartPolicy MAX_COUNT allows 2"


def test_run_to_completion_success_is_final() -> None:
    d = decide_restart(
        policy(MAX_COUNT, max_restarts=3),
        restart_count=0,
        started_at=T0,
        exited_at=T0,
        now=T0,
        exit_code=0,
        run_to_completion=True,
    )
    assert d.action is RestartAction.GIVE_UP and d.phase == P.SUCCEEDED
