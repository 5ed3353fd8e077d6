"""Rollout planning and restart decisions, as pure functions (no I/O, no clock: `now` is given).

One call of `plan_rollout` is one reconcile step of a SERVICE: from the desired replicas, the
generation instances should run, the update strategy and the instances that exist, it says how
many new instances to create and which ones to stop, and where the rollout stands.

Counting rules:
- TERMINATING instances are already on their way out: they count for nothing.
- An instance *serves* when it is ready and neither TERMINATING, SUCCEEDED nor FAILED.
- A FAILED or SUCCEEDED instance of the current generation keeps its slot (it is not
  replaced), so that restartPolicy NEVER and MAX_COUNT really leave it failed; the controller
  replaces instances lost with their node by marking them TERMINATING. Old-generation ones
  serve nothing and are stopped at once.
- `generation` is the generation of the instance template. The controller should keep it
  unchanged for spec changes that do not touch the instances (see `same_template`), so that
  scaling does not restart everything.

ROLLING: the non-terminating instances never exceed `replicas + maxSurge` (a count, or a
percentage of replicas rounded up; at least 1), and a serving instance is stopped only while
more than `replicas` serve (so an old one goes only when a new one is ready). Old instances
that do not serve are stopped at once: stopping them costs no availability and frees room.
SIMULTANEOUS: stop every old instance and create all new ones in the same step.
Scaling (no update in progress) creates the missing instances at once, and scales down by
stopping instances that do not serve first, then the newest.

Halting: when the rollout has not progressed (more updated instances, more of them ready,
fewer old ones) for `deadline_seconds`, the state is HALTED with a message naming the cause.
Halting is a status, not a freeze: the rules above already stop a rollout whose new
instances never get ready (no old instance is stopped, no instance beyond the surge is
created), and instances lost meanwhile are still replaced. New progress resumes it.

Honest completion: the state is COMPLETE only while exactly the desired number of instances of
the current generation exist and all of them are ready, nothing is to be created or stopped
and no old instance is left. A scale-up, a replacement (an instance lost with its node) or a
readiness dip after completion is PROGRESSING again, with a fresh progress clock from the
moment the workload stopped being complete.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from api.v1alpha1 import kat_pb2
from internal.manifests import defaults

_Phase = kat_pb2.Instance
_Update = kat_pb2.UpdateStrategy
_Restart = kat_pb2.RestartPolicy

DEFAULT_PROGRESS_DEADLINE_SECONDS = 600.0
BACKOFF_INITIAL = timedelta(seconds=1)
BACKOFF_CAP = timedelta(minutes=5)
# ALWAYS: the restart count (and so the back-off) resets after this much clean running.
CLEAN_RUN_RESET = timedelta(minutes=10)

_NOT_SERVING = frozenset({_Phase.TERMINATING, _Phase.SUCCEEDED, _Phase.FAILED})
_SURGE = re.compile(r"^([0-9]+)(%?)$")
_NEVER = 1 << 62


@dataclass(frozen=True, slots=True)
class InstanceView:
    """The fields of an Instance the planners read."""

    id: str
    generation: int
    phase: int = _Phase.RUNNING
    ready: bool = False
    started_at: datetime | None = None
    node: str = ""
    message: str = ""

    @property
    def alive(self) -> bool:
        return self.phase != _Phase.TERMINATING

    @property
    def serving(self) -> bool:
        return self.ready and self.phase not in _NOT_SERVING

    @classmethod
    def from_proto(cls, inst: kat_pb2.Instance) -> InstanceView:
        started = inst.started_at.ToDatetime(tzinfo=UTC) if inst.HasField("started_at") else None
        return cls(
            id=inst.id,
            generation=inst.generation,
            phase=inst.phase,
            ready=inst.ready,
            started_at=started,
            node=inst.node,
            message=inst.message,
        )


def max_surge(value: str, replicas: int) -> int:
    """maxSurge as a count: "2" -> 2, "25%" of 10 -> 3 (rounded up); at least 1."""
    text = (value or defaults.MAX_SURGE).strip()
    m = _SURGE.match(text)
    if not m:
        raise ValueError(f'invalid maxSurge "{value}": expected a count ("1") or a percentage')
    n = int(m.group(1))
    if m.group(2):
        n = -(-n * max(replicas, 0) // 100)
    return max(1, n)


def same_template(a: kat_pb2.WorkloadSpec, b: kat_pb2.WorkloadSpec) -> bool:
    """Whether two specs run the same instances: replicas, updateStrategy and restartPolicy
    changes do not need new instances (they are read from the current spec when used)."""
    a2, b2 = kat_pb2.WorkloadSpec(), kat_pb2.WorkloadSpec()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    for spec in (a2, b2):
        spec.ClearField("replicas")
        spec.ClearField("update_strategy")
        spec.ClearField("restart_policy")
    return a2 == b2


def stop_order(instances: Sequence[InstanceView]) -> list[InstanceView]:
    """Who goes first when scaling down: instances that do not serve, then the newest (not
    started yet counts as newest), then by id."""

    def key(i: InstanceView) -> tuple[bool, float, str]:
        started = i.started_at.timestamp() if i.started_at else float("inf")
        return (i.serving, -started, i.id)

    return sorted(instances, key=key)


# ------------------------------------------------------------------ progress and state


class RolloutState(StrEnum):
    PROGRESSING = "Progressing"
    COMPLETE = "Complete"
    HALTED = "Halted"


@dataclass(frozen=True, slots=True)
class Progress:
    """What the rollout of one generation has achieved so far; returned by every step, to
    be passed to the next one (kept by the controller, e.g. in memory). High- and low-water
    marks, so that instances flapping between ready and not ready do not count as progress."""

    generation: int
    since: datetime  # when the rollout started or last made progress
    new_total: int = 0
    new_ready: int = 0
    old_left: int = _NEVER
    completed: bool = False  # complete at the last step


def _advance(
    progress: Progress | None,
    generation: int,
    now: datetime,
    new_total: int,
    new_ready: int,
    old_left: int,
    complete: bool,
) -> Progress:
    if progress is None or progress.generation != generation or progress.completed:
        # A new rollout, or a complete one that stopped being complete (a scale-up, an
        # instance lost): the marks and the progress clock start again from here.
        return Progress(generation, now, new_total, new_ready, old_left, complete)
    p = progress
    moved = new_total > p.new_total or new_ready > p.new_ready or old_left < p.old_left or complete
    return Progress(
        generation,
        now if moved else p.since,
        max(new_total, p.new_total),
        max(new_ready, p.new_ready),
        min(old_left, p.old_left),
        complete,
    )


def _state(
    progress: Progress, complete: bool, now: datetime, deadline_seconds: float
) -> RolloutState:
    if complete:
        return RolloutState.COMPLETE
    if (now - progress.since).total_seconds() > deadline_seconds:
        return RolloutState.HALTED
    return RolloutState.PROGRESSING


def _halt_message(
    generation: int,
    progress: Progress,
    now: datetime,
    deadline_seconds: float,
    new: Sequence[InstanceView],
    ready: int,
    desired: int,
) -> str:
    idle = int((now - progress.since).total_seconds())
    text = (
        f"rollout of generation {generation} halted: {ready}/{desired} updated instances ready,"
        f" no progress for {idle}s (deadline {int(deadline_seconds)}s)"
    )
    stuck = sorted((i for i in new if not i.serving), key=lambda i: i.id)
    if stuck:
        i = stuck[0]
        detail = _Phase.Phase.Name(i.phase) if i.phase else "PENDING"
        if i.message:
            detail += f": {i.message}"
        text += f"; {i.id} is {detail}"
    return text


@dataclass(frozen=True, slots=True)
class RolloutStep:
    create: int  # new instances (of `generation`) to create
    stop: tuple[str, ...]  # ids of instances to stop, in order
    state: RolloutState
    message: str
    progress: Progress  # pass to the next step
    updated: int  # non-terminating instances of the current generation
    updated_ready: int
    ready: int  # all serving instances
    old: int  # non-terminating instances of older generations


def plan_rollout(
    *,
    replicas: int,
    generation: int,
    strategy: kat_pb2.UpdateStrategy,
    instances: Sequence[InstanceView],
    now: datetime,
    progress: Progress | None = None,
    deadline_seconds: float = DEFAULT_PROGRESS_DEADLINE_SECONDS,
) -> RolloutStep:
    """The next reconcile step of a SERVICE (see the module docstring for the rules)."""
    replicas = max(replicas, 0)
    new: list[InstanceView] = []
    old: list[InstanceView] = []
    for i in instances:
        if i.alive:
            (new if i.generation == generation else old).append(i)
    new_ready = sum(1 for i in new if i.serving)
    old_ready = sum(1 for i in old if i.serving)

    stop: list[InstanceView] = []
    kept_new = new
    if len(new) > replicas:
        order = stop_order(new)
        stop.extend(order[: len(new) - replicas])
        kept_new = order[len(new) - replicas :]
    serving = sum(1 for i in kept_new if i.serving) + old_ready

    simultaneous = strategy.type == _Update.SIMULTANEOUS
    if simultaneous:
        stop.extend(stop_order(old))
        kept_old = 0
    else:
        idle = [i for i in old if not i.serving]
        busy = stop_order([i for i in old if i.serving])
        surplus = max(0, serving - replicas)
        stop.extend(stop_order(idle))
        stop.extend(busy[:surplus])
        kept_old = len(busy) - min(surplus, len(busy))

    create = max(0, replicas - len(kept_new))
    if not simultaneous:
        limit = replicas + max_surge(strategy.max_surge, replicas)
        create = min(create, max(0, limit - len(kept_new) - kept_old))

    complete = not stop and not create and not old and new_ready == replicas
    p = _advance(progress, generation, now, len(new), new_ready, len(old), complete)
    state = _state(p, complete, now, deadline_seconds)
    if state is RolloutState.HALTED:
        message = _halt_message(generation, p, now, deadline_seconds, new, new_ready, replicas)
    elif state is RolloutState.COMPLETE:
        message = f"generation {generation}: {new_ready}/{replicas} instances ready"
    else:
        message = (
            f"generation {generation}: {new_ready}/{replicas} updated instances ready,"
            f" {len(old)} old left"
        )
    return RolloutStep(
        create=create,
        stop=tuple(i.id for i in stop),
        state=state,
        message=message,
        progress=p,
        updated=len(new),
        updated_ready=new_ready,
        ready=new_ready + old_ready,
        old=len(old),
    )


# ------------------------------------------------------------------ DAEMON_SERVICE


@dataclass(frozen=True, slots=True)
class DaemonStep:
    create_on: tuple[str, ...]  # nodes that get a new copy (of `generation`)
    stop: tuple[str, ...]  # instance ids to stop
    state: RolloutState
    message: str
    progress: Progress


def plan_daemon_rollout(
    *,
    eligible: Collection[str],
    keep: Collection[str],
    generation: int,
    strategy: kat_pb2.UpdateStrategy,
    instances: Sequence[InstanceView],
    now: datetime,
    progress: Progress | None = None,
    deadline_seconds: float = DEFAULT_PROGRESS_DEADLINE_SECONDS,
) -> DaemonStep:
    """One reconcile step of a DAEMON_SERVICE (nodes from scheduler.Cluster.daemon_nodes).

    Every eligible node without a copy gets one at once. Copies on nodes outside `keep` stop.
    ROLLING replaces node by node: a new copy starts next to the old one, the old one stops
    when the new one is ready, and at most maxSurge nodes (a percentage of the nodes that run
    or should run a copy) are in that state at a time; nodes whose old copy does not serve go
    first. Nodes that are not eligible right now (not ready, cordoned) keep their old copy.
    SIMULTANEOUS stops every old copy and starts the new ones in the same step.
    """
    by_node: dict[str, list[InstanceView]] = {}
    for i in instances:
        if i.alive:
            by_node.setdefault(i.node, []).append(i)
    stop: list[InstanceView] = []
    for node in sorted(set(by_node) - set(keep)):
        stop.extend(stop_order(by_node.pop(node)))
    targets = sorted(set(eligible) | set(by_node))
    simultaneous = strategy.type == _Update.SIMULTANEOUS
    create_on: list[str] = []
    candidates: list[tuple[bool, str]] = []  # (old copy serves, node)
    in_flight = new_total = new_ready = old_left = 0
    for node in targets:
        insts = by_node.get(node, [])
        new = stop_order([i for i in insts if i.generation == generation])
        old = [i for i in insts if i.generation != generation]
        old_left += len(old)
        if len(new) > 1:  # duplicates: keep the best one
            stop.extend(new[:-1])
            new = new[-1:]
        new_total += len(new)
        new_ready += sum(1 for i in new if i.serving)
        if not insts:
            if node in eligible:
                create_on.append(node)
            continue
        if not old:
            continue
        if simultaneous:
            if new or node in eligible:
                stop.extend(stop_order(old))
            if not new and node in eligible:
                create_on.append(node)
        elif new:
            if new[0].serving:
                stop.extend(stop_order(old))
            else:
                in_flight += 1
        elif node in eligible:
            candidates.append((any(i.serving for i in old), node))
    if candidates:
        room = max_surge(strategy.max_surge, len(targets)) - in_flight
        for serves, node in sorted(candidates)[: max(0, room)]:
            create_on.append(node)
            if not serves:  # its old copy serves nothing: no reason to wait for the new one
                stop.extend(stop_order([i for i in by_node[node] if i.generation != generation]))

    desired = len(targets)
    complete = not stop and not create_on and not old_left and new_ready == desired
    p = _advance(progress, generation, now, new_total, new_ready, old_left, complete)
    state = _state(p, complete, now, deadline_seconds)
    if state is RolloutState.HALTED:
        new_all = [i for n in targets for i in by_node.get(n, []) if i.generation == generation]
        message = _halt_message(generation, p, now, deadline_seconds, new_all, new_ready, desired)
    else:
        message = (
            f"generation {generation}: {new_ready}/{desired} nodes run a ready updated copy,"
            f" {old_left} old copies left"
        )
    return DaemonStep(tuple(sorted(set(create_on))), tuple(i.id for i in stop), state, message, p)


# ------------------------------------------------------------------ restart policy


class RestartAction(StrEnum):
    RESTART_NOW = "RestartNow"
    RESTART_LATER = "RestartLater"  # at RestartDecision.at
    GIVE_UP = "GiveUp"  # leave the instance in RestartDecision.phase


@dataclass(frozen=True, slots=True)
class RestartDecision:
    action: RestartAction
    at: datetime | None  # when to restart (None for GIVE_UP)
    restart_count: int  # the count to store: after the window reset, +1 when restarting
    phase: int  # GIVE_UP: SUCCEEDED (exit code 0) or FAILED; else STARTING
    reason: str


def backoff_delay(restarts: int) -> timedelta:
    """1 s, 2 s, 4 s, ... doubling per restart, capped at 5 minutes."""
    if restarts >= 9:  # 2**9 s > 5 min; also keeps huge counts cheap
        return BACKOFF_CAP
    return min(BACKOFF_INITIAL * (1 << max(restarts, 0)), BACKOFF_CAP)


def reset_window(policy: kat_pb2.RestartPolicy) -> timedelta | None:
    """Clean running after which the restart count starts again from 0 (None: never).
    MAX_COUNT uses resetSeconds, and with resetSeconds 0 counts restarts for the lifetime of
    the instance; ALWAYS (and unspecified) reset after 10 minutes."""
    if policy.condition == _Restart.MAX_COUNT:
        return timedelta(seconds=policy.reset_seconds) if policy.reset_seconds > 0 else None
    return CLEAN_RUN_RESET


def effective_restart_count(
    policy: kat_pb2.RestartPolicy, restart_count: int, started_at: datetime, until: datetime
) -> int:
    """The restart count after applying the reset window to a run from started_at to until."""
    window = reset_window(policy)
    if window is not None and until - started_at >= window:
        return 0
    return restart_count


def decide_restart(
    policy: kat_pb2.RestartPolicy,
    *,
    restart_count: int,
    started_at: datetime,
    exited_at: datetime,
    now: datetime,
    exit_code: int,
    run_to_completion: bool = False,
) -> RestartDecision:
    """What to do with an instance whose container exited.

    `run_to_completion` (JOB instances): exit code 0 means done, never restarted. Services
    are restarted after any exit under ALWAYS and MAX_COUNT: a service is meant to keep running.
    """
    exited = f"exited with code {exit_code}"
    final = _Phase.SUCCEEDED if exit_code == 0 else _Phase.FAILED
    cond = policy.condition
    if cond == _Restart.NEVER or (run_to_completion and exit_code == 0):
        why = "completed" if exit_code == 0 else f"{exited}; restartPolicy NEVER"
        return RestartDecision(RestartAction.GIVE_UP, None, restart_count, final, why)
    count = effective_restart_count(policy, restart_count, started_at, exited_at)
    if cond == _Restart.MAX_COUNT and count >= policy.max_restarts:
        window = reset_window(policy)
        within = f" within {policy.reset_seconds}s" if window is not None else ""
        why = (
            f"{exited} after {count} restarts{within}; restartPolicy MAX_COUNT allows"
            f" {policy.max_restarts}"
        )
        return RestartDecision(RestartAction.GIVE_UP, None, count, _Phase.FAILED, why)
    at = exited_at + backoff_delay(count)
    action = RestartAction.RESTART_NOW if now >= at else RestartAction.RESTART_LATER
    why = f"{exited}; restart {count + 1} after {backoff_delay(count).total_seconds():g}s back-off"
    return RestartDecision(action, at, count + 1, _Phase.STARTING, why)
