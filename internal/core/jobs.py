"""Job planning, as pure functions (no I/O, no clock: `now` is given).

`plan_job_run` is one reconcile step of one run of a JOB workload: how many instances to
start, which to stop, and whether the run is over.
- Active instances are those not SUCCEEDED or FAILED (PENDING and TERMINATING included: they
  hold a parallelism slot). At most `parallelism` are active, and no more are started than
  could still be needed (`completions` minus succeeded minus active).
- The run SUCCEEDED once `completions` instances succeeded; leftover active ones are stopped.
- It FAILED when more than `backoffLimit` instances failed, or when it has been running for
  `activeDeadlineSeconds`; every active instance is stopped.
- A retry after a failure waits for the same exponential back-off as restarts (1 s doubling
  per failure, at most 5 minutes) from the last failure's finish time, so a job failing at
  once does not burn through its backoffLimit in a few reconciles.

`plan_schedule` decides when a scheduled job starts a new run: when a cron tick has come since
the last run began and ended, and no run is active. Never two runs at once: ticks that come
while a run is active are skipped, not queued, so a run longer than the interval simply
misses the ticks it overlaps. Ticks missed while no run was active (the leader was down)
collapse into one run as soon as possible, the way anacron catches up. The first run is the
first tick after the schedule was created. Without a schedule a job runs once per apply
(the controller starts one run per generation; `plan_schedule` is not used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from api.v1alpha1 import kat_pb2
from internal.core.rollout import backoff_delay
from internal.manifests import cron, defaults

_Phase = kat_pb2.Instance


@dataclass(frozen=True, slots=True)
class JobSpec:
    completions: int = defaults.JOB_COMPLETIONS
    parallelism: int = defaults.JOB_PARALLELISM
    backoff_limit: int = defaults.JOB_BACKOFF_LIMIT
    active_deadline_seconds: int | None = None
    schedule: str = ""

    @classmethod
    def from_proto(cls, spec: kat_pb2.JobDefinitionSpec) -> JobSpec:
        def opt(name: str, default: int) -> int:
            return getattr(spec, name) if spec.HasField(name) else default

        return cls(
            completions=opt("completions", defaults.JOB_COMPLETIONS),
            parallelism=opt("parallelism", defaults.JOB_PARALLELISM),
            backoff_limit=opt("backoff_limit", defaults.JOB_BACKOFF_LIMIT),
            active_deadline_seconds=(
                spec.active_deadline_seconds if spec.HasField("active_deadline_seconds") else None
            ),
            schedule=spec.schedule,
        )


@dataclass(frozen=True, slots=True)
class JobInstance:
    id: str
    phase: int
    exit_code: int = 0
    finished_at: datetime | None = None

    @classmethod
    def from_proto(cls, inst: kat_pb2.Instance) -> JobInstance:
        finished = inst.finished_at.ToDatetime(tzinfo=UTC) if inst.HasField("finished_at") else None
        return cls(inst.id, inst.phase, inst.exit_code, finished)


class RunState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class JobStep:
    create: int  # instances to start now
    stop: tuple[str, ...]  # ids of active instances to stop
    state: RunState
    reason: str  # "" | Completed | BackoffLimitExceeded | DeadlineExceeded
    message: str
    active: int
    succeeded: int
    failed: int
    deadline_at: datetime | None  # when the run fails for its deadline (None: no deadline)
    retry_at: datetime | None  # when create is held back by the back-off: reconcile then


def plan_job_run(
    spec: JobSpec, instances: Sequence[JobInstance], *, started_at: datetime, now: datetime
) -> JobStep:
    """One reconcile step of one run (the instances are those of this run only)."""
    active = [i for i in instances if i.phase not in (_Phase.SUCCEEDED, _Phase.FAILED)]
    failed = [i for i in instances if i.phase == _Phase.FAILED]
    succeeded = sum(1 for i in instances if i.phase == _Phase.SUCCEEDED)
    completions = max(spec.completions, 1)
    deadline_at = None
    if spec.active_deadline_seconds is not None:
        deadline_at = started_at + timedelta(seconds=spec.active_deadline_seconds)
    running = tuple(i.id for i in active if i.phase != _Phase.TERMINATING)

    def step(
        create: int,
        stop: tuple[str, ...],
        state: RunState,
        reason: str,
        message: str,
        retry_at: datetime | None = None,
    ) -> JobStep:
        return JobStep(
            create,
            stop,
            state,
            reason,
            message,
            active=len(active),
            succeeded=succeeded,
            failed=len(failed),
            deadline_at=deadline_at,
            retry_at=retry_at,
        )

    if succeeded >= completions:
        return step(
            0,
            running,
            RunState.SUCCEEDED,
            "Completed",
            f"{succeeded}/{completions} completions succeeded",
        )
    if len(failed) > spec.backoff_limit:
        last = max(failed, key=lambda i: (i.finished_at or started_at, i.id))
        return step(
            0,
            running,
            RunState.FAILED,
            "BackoffLimitExceeded",
            f"{len(failed)} instances failed, more than backoffLimit {spec.backoff_limit};"
            f" last: {last.id} exited with code {last.exit_code}",
        )
    if deadline_at is not None and now >= deadline_at:
        return step(
            0,
            running,
            RunState.FAILED,
            "DeadlineExceeded",
            f"still running after activeDeadlineSeconds {spec.active_deadline_seconds};"
            f" {succeeded}/{completions} completions succeeded",
        )

    create = max(0, min(spec.parallelism - len(active), completions - succeeded - len(active)))
    retry_at = None
    if create and failed:
        last_end = max((i.finished_at for i in failed if i.finished_at), default=None)
        if last_end is not None:
            at = last_end + backoff_delay(len(failed) - 1)
            if now < at:
                create, retry_at = 0, at
    return step(
        create,
        (),
        RunState.RUNNING,
        "",
        f"{succeeded}/{completions} completions succeeded, {len(active)} active,"
        f" {len(failed)} failed",
        retry_at,
    )


# ------------------------------------------------------------------ schedules


@dataclass(frozen=True, slots=True)
class ScheduleDecision:
    start_now: bool
    due_tick: datetime | None  # the (earliest unserved) tick a run starting now serves
    next_tick: datetime  # the first tick strictly after now
    message: str


def plan_schedule(
    schedule: str | cron.Schedule,
    *,
    now: datetime,
    created: datetime,
    last_run_start: datetime | None = None,
    last_run_end: datetime | None = None,
    run_active: bool = False,
) -> ScheduleDecision:
    """Whether a scheduled job starts a run now (see the module docstring).

    `created`: when the schedule took effect (ticks before it never count). `last_run_end`:
    when the last run ended (its last instance finished); ticks before it were either served
    or skipped. Use the same timezone for every datetime (UTC).
    """
    sched = cron.parse(schedule) if isinstance(schedule, str) else schedule
    next_tick = sched.next_after(now)
    if run_active:
        return ScheduleDecision(
            False, None, next_tick, "a run is still active; ticks until it ends are skipped"
        )
    ref = created
    for t in (last_run_start, last_run_end):
        if t is not None and t > ref:
            ref = t
    due = sched.next_after(ref)
    if due <= now:
        return ScheduleDecision(True, due, next_tick, f"tick {due.isoformat()} is due")
    return ScheduleDecision(False, None, next_tick, f"next run at {next_tick.isoformat()}")
