"""The node's reconciler: the instances the leader assigned (desired) against the
containers Podman reports (observed), one step at a time per instance.

Contract with the leader (see also README, "Node runtime"):
- desired state is the last full `AssignmentSet` (from the stream, else the copy saved in
  the data dir); until there is one, nothing is started or stopped, only observed;
- an assigned instance without a container is created and started (PULLING, STARTING,
  RUNNING); one that is TERMINATING or no longer assigned is stopped (SIGTERM, grace,
  SIGKILL) and removed, and then no longer reported;
- restarts are the leader's: the node starts a fresh container for an instance only
  when the assignment's `restart_count` is above the count it last acted on (kept in a
  container label, so it survives agent restarts). An exited container stays as it is,
  reported SUCCEEDED (exit 0 of a JOB) or FAILED with its exit code, until then;
- a failing health check (failureThreshold in a row) stops the container and reports
  FAILED "health check failed"; the leader applies the restart policy;
- containers are adopted, never restarted, when the agent restarts (same instance id).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from api.v1alpha1 import kat_pb2
from internal.observability import metrics
from kat_agent.node.assignments import SnapshotStore
from kat_agent.node.build import Builder
from kat_agent.node.podman.runtime import (
    LABEL_PREFIX,
    ContainerRuntimeError,
    ErrorKind,
    InstanceSpec,
    ObservedContainer,
)
from kat_agent.node.podman.service import PodmanServiceError
from kat_agent.node.podman.services import Backend, NodeSettings, PodmanPool

log = logging.getLogger(__name__)

LABEL_RESTARTS = LABEL_PREFIX + "restart-count"
LABEL_TYPE = LABEL_PREFIX + "workload-type"
LABEL_JOB_RUN = LABEL_PREFIX + "job-run"

P = kat_pb2.Instance

HEALTH_DEFAULTS = {"period": 10, "timeout": 1, "success": 1, "failure": 3}
NOT_STARTED = ("created", "configured", "initialized")
RETRY_BACKOFF = (0.5, 10.0)
TERMINAL = (kat_pb2.Instance.SUCCEEDED, kat_pb2.Instance.FAILED)


class Step(enum.Enum):
    PROGRESS = "progress"  # did something; look again at once
    IDLE = "idle"  # converged; wait for a change
    DONE = "done"  # not assigned and no container: forget the instance
    RETRY = "retry"  # failed for a passing reason (Podman restarting): back off


@dataclass(eq=False)
class InstanceState:
    id: str
    assignment: kat_pb2.Assignment | None = None
    backend: Backend | None = None
    observed: ObservedContainer | None = None
    acted_restarts: int | None = None  # the leader's restart count last acted on
    activity: int | None = None  # PULLING / STARTING / TERMINATING while doing it
    message: str = ""  # with activity: what is going on
    error: str = ""  # creating failed: FAILED without a container
    vanished: bool = False  # no container where one should be (removed behind KAT's back)
    health_failed: str = ""  # id of the container whose health check failed
    purged: bool = False  # its workload's volumes were purged (purge_volumes)
    ready: bool = False  # health check passed (only used with a health check)
    busy: bool = False  # a step is running
    epoch: int = 0  # bumped by every action (resync compares it)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    waiter: tuple[str, asyncio.Task[None]] | None = None
    health: tuple[str, asyncio.Task[None]] | None = None

    # ------------------------------------------------------------ facts

    @property
    def namespace(self) -> str:
        if self.assignment is not None:
            return self.assignment.instance.namespace
        return self.observed.namespace if self.observed else ""

    @property
    def workload(self) -> str:
        if self.assignment is not None:
            return self.assignment.instance.workload
        return self.observed.workload if self.observed else ""

    @property
    def is_job(self) -> bool:
        if self.assignment is not None:
            return self.assignment.bundle.workload.spec.type == kat_pb2.WorkloadSpec.JOB
        return bool(self.observed and self.observed.labels.get(LABEL_TYPE) == "JOB")

    def health_check(self) -> kat_pb2.HealthCheck | None:
        if self.assignment is None:
            return None
        check = self.assignment.bundle.virtual_load_balancer.spec.health_check
        return check if check.exec.command else None

    def container_id(self) -> str:
        return self.observed.container_id if self.observed else ""

    # ------------------------------------------------------------ report

    def report(self, node: str) -> kat_pb2.Instance | None:
        """The instance as the node sees it; None once the node has nothing of it."""
        a, obs = self.assignment, self.observed
        if obs is None and self.activity is None and not self.error and not self.vanished:
            if a is None or a.instance.phase in (P.TERMINATING, *TERMINAL):
                return None
        inst = kat_pb2.Instance(id=self.id, node=node)
        inst.namespace = self.namespace
        inst.workload = self.workload
        if a is not None:
            inst.generation = a.instance.generation
            inst.job_run = a.instance.job_run
        if obs is not None:
            inst.generation = obs.generation or inst.generation
            inst.job_run = inst.job_run or obs.labels.get(LABEL_JOB_RUN, "")
            inst.container_id = obs.container_id
            inst.ip = obs.ip
            if obs.started_at:
                inst.started_at.FromDatetime(obs.started_at)
            if obs.finished_at:
                inst.finished_at.FromDatetime(obs.finished_at)
            if obs.exit_code is not None:
                inst.exit_code = obs.exit_code
        inst.restart_count = self.acted_restarts or 0
        inst.phase, inst.message = self._phase()
        inst.ready = bool(
            inst.phase == P.RUNNING
            and obs is not None
            and obs.container_id != self.health_failed
            and (self.ready or self.health_check() is None)
        )
        return inst

    def _phase(self) -> tuple[int, str]:
        obs = self.observed
        if self.activity is not None:
            return self.activity, self.message
        if obs is not None:
            if obs.running or obs.state == "paused":
                if obs.container_id == self.health_failed:
                    return P.RUNNING, "health check failed; stopping"
                return P.RUNNING, "" if obs.running else obs.state
            if obs.state == "exited":
                code = obs.exit_code or 0
                if obs.container_id == self.health_failed:
                    return P.FAILED, "health check failed"
                if code == 0 and self.is_job:
                    return P.SUCCEEDED, "completed"
                why = f"exited with code {code}"
                return P.FAILED, f"{why} (out of memory)" if obs.oom_killed else why
            if obs.state in NOT_STARTED:
                return P.STARTING, ""
            return P.RUNNING, obs.state  # stopping, removing: passing states
        if self.error:
            return P.FAILED, self.error
        if self.vanished:
            return P.FAILED, "container removed outside KAT"
        return P.SCHEDULED, ""


def _now() -> float:
    return time.time()


class NodeRuntime:
    """Reconciles the instances of one node. `on_change` is called whenever what
    `report()` returns changes (the agent then sends a heartbeat at once)."""

    def __init__(
        self,
        settings: NodeSettings,
        on_change: Callable[[], None] = lambda: None,
        pool: PodmanPool | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool or PodmanPool(settings)
        self.builder = Builder(settings)  # images from spec.source.git
        self.snapshots = SnapshotStore(settings.state_dir)
        self.states: dict[str, InstanceState] = {}
        self._on_change = on_change
        self._desired: kat_pb2.AssignmentSet | None = None
        self._applied = False  # a desired state is known and applied
        self._started = False
        self.ready = asyncio.Event()  # Podman is up and the first adoption is done
        self.version = 0
        self.resync_count = 0
        self._reported = 0
        self._pump: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()  # stopping idle user services
        self._to_save: kat_pb2.AssignmentSet | None = None
        self._saver: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ reporting

    def report(self) -> list[kat_pb2.Instance]:
        """Every instance the node knows of, for the heartbeat."""
        self._reported = self.version
        out = []
        for st in list(self.states.values()):
            inst = st.report(self.settings.node_name)
            if inst is not None:
                out.append(inst)
        metrics.count_instances(metrics.NODE_INSTANCES, (i.phase for i in out))
        return out

    def _changed(self) -> None:
        self.version += 1
        if not self._started:
            return  # starting or shutting down: the next heartbeat carries it
        self._on_change()
        # The heartbeat loop may be between reading report() and clearing its wake-up
        # flag, which would swallow this change until the next tick: ask again shortly
        # unless a report has meanwhile included it.
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._beat_pump())

    async def _beat_pump(self) -> None:
        for delay in (0.05, 0.1, 0.2):
            await asyncio.sleep(delay)
            if self._reported >= self.version:
                return
            self._on_change()

    # ------------------------------------------------------------ desired state

    def offer(self, snapshot: kat_pb2.AssignmentSet) -> None:
        """A full snapshot from the leader: reconciled against at once, and saved (in
        the background, the newest one wins) for a restart without the leader."""
        self._desired = snapshot
        if self._started:
            self._apply(snapshot)
        self._to_save = snapshot
        if self._saver is None or self._saver.done():
            self._saver = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        while (snapshot := self._to_save) is not None:
            self._to_save = None
            try:
                await asyncio.to_thread(self.snapshots.save, snapshot)
            except OSError as exc:
                log.error("cannot save the assignments to %s: %s", self.snapshots.path, exc)

    def _apply(self, snapshot: kat_pb2.AssignmentSet) -> None:
        node = self.settings.node_name
        desired: dict[str, kat_pb2.Assignment] = {}
        for a in snapshot.assignments:
            if not a.instance.id:
                continue
            if a.instance.node and a.instance.node != node:
                log.warning("ignoring instance %s assigned to %s", a.instance.id, a.instance.node)
                continue
            desired[a.instance.id] = a
        self._applied = True
        for iid, a in desired.items():
            st = self.states.get(iid) or self._new_state(iid)
            st.assignment = a
            st.wake.set()
        for iid, st in self.states.items():
            if iid not in desired and st.assignment is not None:
                st.assignment = None
                st.wake.set()
            elif iid not in desired:
                st.wake.set()  # adopted before any snapshot: now known to be unwanted
        self._changed()

    def _new_state(self, iid: str) -> InstanceState:
        st = InstanceState(iid)
        self.states[iid] = st
        if self._started:
            self._start_worker(st)
        return st

    def _start_worker(self, st: InstanceState) -> None:
        st.worker = asyncio.get_running_loop().create_task(self._work(st), name=f"instance-{st.id}")

    # ------------------------------------------------------------ life

    async def run(self) -> None:
        """Start Podman (retrying until it works), adopt what runs, reconcile for ever."""
        if self._desired is None:
            self._desired = self.snapshots.load()
            if self._desired is not None:
                log.info(
                    "using the saved assignments (%d) until the leader sends new ones",
                    len(self._desired.assignments),
                )
        delay = RETRY_BACKOFF[0]
        while True:
            try:
                await self.pool.start()
                break
            except (ContainerRuntimeError, PodmanServiceError, OSError) as exc:
                log.error("Podman is not available (%s); retrying in %.0fs", exc, delay)
                await self.pool.close()
                await asyncio.sleep(delay)
                delay = min(RETRY_BACKOFF[1], delay * 2)
        try:
            for _ in range(5):  # a container removed while listing fails the list
                if await self.resync():
                    break
                await asyncio.sleep(0.2)
            adopted = [st for st in self.states.values() if st.observed is not None]
            if adopted:
                log.info("found %d container(s) of earlier runs", len(adopted))
            self._started = True
            if self._desired is not None:
                self._apply(self._desired)
            for st in list(self.states.values()):
                if st.worker is None:
                    self._start_worker(st)
            self.ready.set()
            self._changed()
            while True:
                await asyncio.sleep(self.settings.resync_seconds)
                await self.resync()
        finally:
            self._started = False
            tasks = []
            for st in self.states.values():
                for t in (st.worker, _task(st.waiter), _task(st.health)):
                    if t is not None:
                        t.cancel()
                        tasks.append(t)
                st.worker = st.waiter = st.health = None
                st.busy = False
            if self._pump is not None:
                self._pump.cancel()
                tasks.append(self._pump)
            if self._saver is not None:
                tasks.append(self._saver)  # let the last save finish
            for t in self._releases:
                t.cancel()
            await asyncio.gather(*tasks, *self._releases, return_exceptions=True)
            await self.pool.close()

    # ------------------------------------------------------------ observing

    async def resync(self) -> bool:
        """Compare with everything Podman reports: find containers (adoption at start),
        notice ones that vanished or changed behind KAT's back. False if a Podman
        could not be asked."""
        complete = True
        for backend in self.pool.backends():
            epochs = {iid: st.epoch for iid, st in self.states.items()}
            try:
                found = await backend.runtime.list_managed()
            except ContainerRuntimeError as exc:
                log.warning("cannot list the containers of %s: %s", backend.key, exc)
                complete = False
                continue
            seen: dict[str, ObservedContainer] = {}
            for c in found:
                if c.instance_id:
                    seen[c.instance_id] = c
            for iid, c in seen.items():
                st = self.states.get(iid)
                if st is None:
                    st = self._new_state(iid)
                    st.backend, st.observed = backend, c
                    st.acted_restarts = _label_int(c, LABEL_RESTARTS)
                    st.wake.set()
                    self._changed()
                    continue
                if st.busy or st.epoch != epochs.get(iid):
                    continue
                if st.backend is not None and st.backend is not backend:
                    continue
                if st.observed != c:
                    st.backend, st.observed = backend, c
                    if st.acted_restarts is None:
                        st.acted_restarts = _label_int(c, LABEL_RESTARTS)
                    st.vanished = False
                    st.wake.set()
                    self._changed()
            for iid, st in list(self.states.items()):
                if (
                    st.backend is backend
                    and st.observed is not None
                    and iid not in seen
                    and not st.busy
                    and st.epoch == epochs.get(iid)
                ):
                    log.warning("container of instance %s is gone", iid)
                    self._cancel_watchers(st)
                    st.observed = None
                    st.vanished = st.assignment is not None
                    st.wake.set()
                    self._changed()
        self.resync_count += 1
        return complete

    # ------------------------------------------------------------ the worker

    async def _work(self, st: InstanceState) -> None:
        delay = RETRY_BACKOFF[0]
        while True:
            st.wake.clear()
            st.busy = True
            try:
                step = await self._step(st)
            except asyncio.CancelledError:
                raise
            except ContainerRuntimeError as exc:
                log.warning("instance %s: %s; retrying in %.1fs", st.id, exc, delay)
                step = Step.RETRY
            except Exception:
                log.exception("instance %s: unexpected error; retrying in %.1fs", st.id, delay)
                step = Step.RETRY
            finally:
                st.busy = False
            if step is Step.DONE:
                self._forget(st)
                return
            if step is Step.PROGRESS:
                delay = RETRY_BACKOFF[0]
                continue
            timeout = None
            if step is Step.RETRY:
                timeout = delay
                delay = min(RETRY_BACKOFF[1], delay * 2)
            else:
                delay = RETRY_BACKOFF[0]
            # (asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation
            # that arrives together with the wake-up.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await st.wake.wait()

    def _forget(self, st: InstanceState) -> None:
        self._cancel_watchers(st)
        if self.states.get(st.id) is st:
            del self.states[st.id]
        self._changed()
        backend = st.backend
        if backend is not None and backend.user is not None:
            task = asyncio.get_running_loop().create_task(
                self._release_when_idle(backend, st.namespace, st.workload)
            )
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    def _backend_in_use(self, backend: Backend, namespace: str, workload: str) -> bool:
        return any(
            o.backend is backend or (o.namespace, o.workload) == (namespace, workload)
            for o in self.states.values()
        )

    async def _release_when_idle(self, backend: Backend, namespace: str, workload: str) -> None:
        """Stop a workload user's Podman service once none of its instances has been on
        this node for `idle_service_seconds` (a re-apply soon after finds it running)."""
        if self._backend_in_use(backend, namespace, workload):
            return
        await asyncio.sleep(self.settings.idle_service_seconds)
        if not self._backend_in_use(backend, namespace, workload):
            await self.pool.retire(
                backend,
                namespace,
                workload,
                lambda: self._backend_in_use(backend, namespace, workload),
            )

    async def _step(self, st: InstanceState) -> Step:
        if not self._applied:
            if st.observed is not None and st.observed.running:
                self._watch_exit(st)
            return Step.IDLE  # no desired state known yet: touch nothing
        a, obs = st.assignment, st.observed
        if a is None or a.instance.phase == P.TERMINATING:
            if obs is not None:
                await self._stop_and_remove(st, P.TERMINATING, "stopping")
                return Step.PROGRESS
            if st.error or st.vanished:
                st.error, st.vanished = "", False
                self._changed()
            if a is not None and a.instance.purge_volumes and not st.purged:
                await self._purge_volumes(st)
            return Step.DONE if a is None else Step.IDLE
        want = a.instance.restart_count
        if st.acted_restarts is not None and want < st.acted_restarts:
            # The leader reset its count (MAX_COUNT's resetSeconds): follow it.
            st.acted_restarts = want
            self._changed()
        if obs is None:
            if a.instance.phase in TERMINAL:
                # Done as far as the leader knows: never started again.
                if st.acted_restarts is None:
                    st.acted_restarts = want
                return Step.IDLE
            if st.acted_restarts is not None and want <= st.acted_restarts:
                if st.error or st.vanished:
                    return Step.IDLE  # FAILED: waiting for the leader's restart
            await self._create(st, a)
            return Step.PROGRESS
        if st.acted_restarts is None:
            st.acted_restarts = _label_int(obs, LABEL_RESTARTS)
            if st.acted_restarts is None:
                st.acted_restarts = want
        if obs.generation != a.instance.generation:
            await self._stop_and_remove(st, P.STARTING, "replacing the container")
            return Step.PROGRESS
        if want > st.acted_restarts:
            await self._stop_and_remove(st, P.STARTING, "restarting")
            return Step.PROGRESS
        if obs.running:
            if obs.container_id == st.health_failed:
                await self._stop_unhealthy(st)
                return Step.PROGRESS
            self._watch_exit(st)
            self._watch_health(st)
            return Step.IDLE
        if obs.state in NOT_STARTED:
            # Created but never started (an agent crash in between): start afresh.
            await self._stop_and_remove(st, P.STARTING, "")
            return Step.PROGRESS
        return Step.IDLE  # exited: reported; the leader decides about a restart

    # ------------------------------------------------------------ actions

    def _set_activity(self, st: InstanceState, phase: int | None, message: str = "") -> None:
        st.activity, st.message = phase, message
        self._changed()

    async def _create(self, st: InstanceState, a: kat_pb2.Assignment) -> None:
        inst, spec = a.instance, a.bundle.workload.spec
        st.epoch += 1
        st.error, st.vanished, st.health_failed, st.ready = "", False, "", False
        st.acted_restarts = inst.restart_count
        try:
            self._set_activity(st, P.PULLING, "")
            backend = await self.pool.backend_for(inst.namespace, inst.workload)
            st.backend = backend
            image = spec.source.image
            if not image and spec.source.HasField("git"):
                # Built into root's storage (once per workload and commit), then made
                # available to the backend like a pulled image.
                self._set_activity(st, P.BUILDING, f"building from {spec.source.git.repository}")
                image = await self.builder.image_for(a.bundle)
                log.info("instance %s: image %s built from git", st.id, image)
                self._set_activity(st, P.PULLING, "")
            if not image:
                raise ContainerRuntimeError(ErrorKind.INVALID, "this workload has no image")
            await self.pool.ensure_image(backend, image)
            self._set_activity(st, P.STARTING, "")
            ispec = InstanceSpec.from_proto(inst, spec, image=image, network=backend.network)
            labels = {
                LABEL_RESTARTS: str(inst.restart_count),
                LABEL_TYPE: kat_pb2.WorkloadSpec.Type.Name(spec.type),
            }
            if inst.job_run:
                labels[LABEL_JOB_RUN] = inst.job_run
            ispec = dataclasses.replace(ispec, extra_labels=labels)
            try:
                cid = await backend.runtime.create_and_start(ispec)
            except ContainerRuntimeError as exc:
                if exc.kind is not ErrorKind.NAME_CONFLICT:
                    raise
                # Ours from an earlier attempt that was not seen yet: adopt it.
                cid = ispec.container_name
            st.observed = await backend.runtime.observe(cid)
            metrics.CONTAINER_STARTS.inc()
            if inst.restart_count:
                metrics.CONTAINER_RESTARTS.inc()
            log.info(
                "instance %s (%s/%s) started: container %s%s",
                st.id,
                inst.namespace,
                inst.workload,
                st.observed.container_id[:12],
                f", ip {st.observed.ip}" if st.observed.ip else "",
            )
        except ContainerRuntimeError as exc:
            if exc.kind is ErrorKind.UNAVAILABLE:
                raise
            st.error = str(exc)
            metrics.CONTAINER_FAILURES.inc()
            log.warning("instance %s cannot start: %s", st.id, exc)
        except PodmanServiceError as exc:
            metrics.CONTAINER_FAILURES.inc()
            st.error = f"cannot run as the workload's user: {exc}"
            log.warning("instance %s cannot start: %s", st.id, st.error)
        finally:
            st.epoch += 1
            self._set_activity(st, None)

    async def _stop_and_remove(self, st: InstanceState, phase: int, message: str) -> None:
        obs, backend = st.observed, st.backend
        assert obs is not None and backend is not None
        st.epoch += 1
        self._cancel_watchers(st)
        self._set_activity(st, phase, message)
        try:
            if obs.running or obs.state == "paused":
                try:
                    await backend.runtime.stop(obs.container_id, self.settings.grace_seconds)
                except ContainerRuntimeError as exc:
                    if exc.kind not in (ErrorKind.NOT_FOUND, ErrorKind.NOT_RUNNING):
                        raise
            await backend.runtime.remove(obs.container_id, force=True)
            log.info("instance %s: container %s removed", st.id, obs.container_id[:12])
            st.observed = None
            st.ready = False
        finally:
            st.epoch += 1
            self._set_activity(st, None)

    async def _stop_unhealthy(self, st: InstanceState) -> None:
        obs, backend = st.observed, st.backend
        assert obs is not None and backend is not None
        st.epoch += 1
        self._cancel_watchers(st)
        st.ready = False
        self._changed()
        try:
            await backend.runtime.stop(obs.container_id, self.settings.grace_seconds)
        except ContainerRuntimeError as exc:
            if exc.kind not in (ErrorKind.NOT_FOUND, ErrorKind.NOT_RUNNING):
                raise
        try:
            st.observed = await backend.runtime.observe(obs.container_id)
        except ContainerRuntimeError as exc:
            if exc.kind is not ErrorKind.NOT_FOUND:
                raise
            st.observed, st.vanished = None, True
        st.epoch += 1
        metrics.CONTAINER_FAILURES.inc()
        log.warning("instance %s: health check failed; container stopped", st.id)
        self._changed()

    async def _purge_volumes(self, st: InstanceState) -> None:
        """delete --purge-volumes: remove the workload's simpleClusterStorage directory
        (<volumeBasePath>/<namespace>/<workload>) once none of its containers is left
        on this node."""
        ns, wl = st.namespace, st.workload
        others = [
            o
            for o in self.states.values()
            if o is not st and (o.namespace, o.workload) == (ns, wl) and o.observed is not None
        ]
        if others:
            return  # the last of them purges
        st.purged = True
        if not ns or not wl or any(c in x for x in (ns, wl) for c in "/\0") or ".." in (ns, wl):
            return
        path = self.settings.volume_base_path / ns / wl
        if path.is_dir():
            await asyncio.to_thread(shutil.rmtree, path, True)
            log.info("purged the volumes of %s/%s (%s)", ns, wl, path)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the namespace's directory, when empty

    # ------------------------------------------------------------ watchers

    def _cancel_watchers(self, st: InstanceState) -> None:
        for t in (_task(st.waiter), _task(st.health)):
            if t is not None:
                t.cancel()
        st.waiter = st.health = None

    def _watch_exit(self, st: InstanceState) -> None:
        obs, backend = st.observed, st.backend
        if obs is None or backend is None:
            return
        if st.waiter is not None and st.waiter[0] == obs.container_id and not st.waiter[1].done():
            return
        task = asyncio.get_running_loop().create_task(
            self._wait_exit(st, backend, obs.container_id), name=f"wait-{st.id}"
        )
        st.waiter = (obs.container_id, task)

    async def _wait_exit(self, st: InstanceState, backend: Backend, cid: str) -> None:
        delay = RETRY_BACKOFF[0]
        while True:
            try:
                await backend.runtime.wait(cid)
                obs = await backend.runtime.observe(cid)
            except ContainerRuntimeError as exc:
                if exc.kind is ErrorKind.NOT_FOUND:
                    return  # removed: the resync notices
                await asyncio.sleep(delay)  # Podman restarting: wait again
                delay = min(RETRY_BACKOFF[1], delay * 2)
                continue
            if not obs.running:
                break
            await asyncio.sleep(delay)  # Podman answered early: do not spin
        if st.observed is not None and st.observed.container_id == cid:
            st.observed = obs
            st.epoch += 1
            log.info("instance %s: container exited with code %s", st.id, obs.exit_code)
            if obs.exit_code:
                metrics.CONTAINER_FAILURES.inc()
            st.wake.set()
            self._changed()

    def _watch_health(self, st: InstanceState) -> None:
        obs, backend, check = st.observed, st.backend, st.health_check()
        if obs is None or backend is None or check is None:
            return
        if st.health is not None and st.health[0] == obs.container_id and not st.health[1].done():
            return
        task = asyncio.get_running_loop().create_task(
            self._check_health(st, backend, obs, check), name=f"health-{st.id}"
        )
        st.health = (obs.container_id, task)

    async def _check_health(
        self,
        st: InstanceState,
        backend: Backend,
        obs: ObservedContainer,
        check: kat_pb2.HealthCheck,
    ) -> None:
        period = check.period_seconds or HEALTH_DEFAULTS["period"]
        timeout = check.timeout_seconds or HEALTH_DEFAULTS["timeout"]
        need_ok = check.success_threshold or HEALTH_DEFAULTS["success"]
        need_bad = check.failure_threshold or HEALTH_DEFAULTS["failure"]
        command = list(check.exec.command)
        started = obs.started_at.timestamp() if obs.started_at else _now()
        first = check.initial_delay_seconds - (_now() - started)
        if first > 0:
            await asyncio.sleep(first)
        cid = obs.container_id
        good = bad = 0
        while True:
            began = time.monotonic()
            ok: bool | None
            try:
                code, output = await backend.runtime.exec(cid, command, timeout)
                ok = code == 0
                detail = f"exit code {code}: {output[:200]!r}"
            except ContainerRuntimeError as exc:
                if exc.kind in (ErrorKind.NOT_RUNNING, ErrorKind.NOT_FOUND):
                    return  # it stopped: the exit watcher reports that
                ok = None if exc.kind is ErrorKind.UNAVAILABLE else False
                detail = str(exc)
            if ok:
                good, bad = good + 1, 0
                if not st.ready and good >= need_ok:
                    st.ready = True
                    log.info("instance %s is ready", st.id)
                    self._changed()
            elif ok is False:
                good, bad = 0, bad + 1
                log.info(
                    "instance %s: health check failed (%d/%d): %s", st.id, bad, need_bad, detail
                )
                if bad >= need_bad:
                    if st.observed is not None and st.observed.container_id == cid:
                        st.health_failed, st.ready = cid, False
                        st.wake.set()
                        self._changed()
                    return
            await asyncio.sleep(max(0.0, period - (time.monotonic() - began)))

    # ------------------------------------------------------------ for the NodeAgent API

    def find(
        self, namespace: str, workload: str, instance_id: str
    ) -> list[tuple[InstanceState, Backend, str]]:
        """Instances with a container matching the request (instance id, else all of
        the workload's), as (state, backend, container id)."""
        out = []
        for st in self.states.values():
            if st.observed is None or st.backend is None:
                continue
            if instance_id and st.id != instance_id:
                continue
            if namespace and st.namespace != namespace:
                continue
            if workload and st.workload != workload:
                continue
            if not (instance_id or workload):
                continue
            out.append((st, st.backend, st.observed.container_id))
        return sorted(out, key=lambda x: x[0].id)


def _task(pair: tuple[str, asyncio.Task[None]] | None) -> asyncio.Task[None] | None:
    return pair[1] if pair is not None else None


def _label_int(c: ObservedContainer, label: str) -> int | None:
    try:
        return int(c.labels[label])
    except (KeyError, ValueError):
        return None
