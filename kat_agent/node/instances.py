"""The node's reconciler, an executor: for each instance it observes (assignments from the
leader, containers from Podman), asks the pure `node_plan` (internal/core/node_plan.py, where
the contract with the leader is written out) what to do, does it through the container
runtime (kat_agent/node/podman/runtime.py, or the in-memory fake) and reports. One worker
task per instance, so a slow pull of one never holds up the others; level-triggered (every
step looks at the current facts) and restart-safe (containers are adopted by their labels).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from api.v1alpha1 import kat_pb2
from internal.core.node_plan import (
    Action,
    Adopt,
    Create,
    Forget,
    PurgeVolumes,
    Report,
    StopAndRemove,
    StopUnhealthy,
    Watch,
    created,
    desired_by_id,
    label_restarts,
    node_labels,
    plan_instance,
)
from internal.observability import metrics
from kat_agent.node.assignments import SnapshotStore
from kat_agent.node.build import Builder
from kat_agent.node.idle_users import IdleUsers
from kat_agent.node.instance_state import InstanceState, Step, compare, find_containers
from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind, PodmanServiceError
from kat_agent.node.podman.mounts import purge_workload_volumes
from kat_agent.node.podman.runtime import BackendPool, RuntimeBackend
from kat_agent.node.podman.services import NodeSettings, PodmanPool
from kat_agent.node.podman.spec import InstanceSpec
from kat_agent.node.previous_logs import PreviousLogs
from kat_agent.node.watchers import RETRY_BACKOFF, wait_for_exit, watch_health

log = logging.getLogger(__name__)


P = kat_pb2.Instance


def _utcnow() -> datetime:
    return datetime.now(UTC)


class NodeRuntime:
    """Reconciles the instances of one node. `on_change` is called whenever what
    `report()` returns changes (the agent then sends a heartbeat at once)."""

    def __init__(
        self,
        settings: NodeSettings,
        on_change: Callable[[], None] = lambda: None,
        pool: BackendPool | None = None,
    ) -> None:
        self.settings = settings
        self.pool: BackendPool = pool or PodmanPool(settings)
        self.builder = Builder(settings)  # images from spec.source.git
        self.snapshots = SnapshotStore(settings.state_dir)
        self.states: dict[str, InstanceState] = {}
        self.previous_logs = PreviousLogs(settings.state_dir / "previous-logs", self.states)
        self._on_change = on_change
        self._desired: kat_pb2.AssignmentSet | None = None
        self._applied = False  # a desired state is known and applied
        self._started = False
        self.ready = asyncio.Event()  # Podman is up and the first adoption is done
        self.version = 0
        self.resync_count = 0
        self._reported = 0
        self._pump: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()  # idle services, vanished remains
        self.idle_users = IdleUsers(
            self.pool,
            lambda: self.settings.idle_service_seconds,
            lambda: self.states.values(),
            self._side_task,
        )
        self._to_save: kat_pb2.AssignmentSet | None = None
        self._saver: asyncio.Task[None] | None = None
        # Whether the leader is unreachable now (the agent's heartbeat path is down): then
        # failed services are restarted here (node_plan's detached restarts).
        self.detached: Callable[[], bool] = lambda: False
        # The overlay address of an instance whose network KAT plumbs itself (rootless;
        # kat_agent/node/network/instance_net.py), for instances Podman gives none.
        self.plumbed_ip: Callable[[str], str] = lambda instance_id: ""
        # That plumbing runs: rootless containers reach the node's DNS over kat0 too.
        self.plumbs_rootless = False

    # ------------------------------------------------------------ reporting

    def report(self) -> list[kat_pb2.Instance]:
        """Every instance the node knows of, for the heartbeat."""
        self._reported = self.version
        out = []
        for st in list(self.states.values()):
            inst = st.report(self.settings.node_name)
            if inst is not None:
                inst.ip = inst.ip or self.plumbed_ip(st.id)
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
        desired, foreign = desired_by_id(snapshot, self.settings.node_name)
        for a in foreign:
            log.warning("ignoring instance %s assigned to %s", a.instance.id, a.instance.node)
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

    def link_changed(self) -> None:
        """The agent's link to the leader came up or went down: look at every instance
        again (detached restarts start or stop)."""
        for st in self.states.values():
            st.wake.set()

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
                self.idle_users.sweep()
        finally:
            self._started = False
            tasks = []
            for st in self.states.values():
                for t in (st.worker, *st.watchers()):
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
            for t in self._side_tasks:
                t.cancel()
            await asyncio.gather(*tasks, *self._side_tasks, return_exceptions=True)
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
            diff = compare(self.states, backend, found, epochs)
            for iid, c in diff.found:
                st = self._new_state(iid)
                st.backend, st.observed = backend, c
                st.acted_restarts = label_restarts(c)
                st.wake.set()
            for st, c in diff.changed:
                st.backend, st.observed = backend, c
                if st.acted_restarts is None:
                    st.acted_restarts = label_restarts(c)
                st.vanished = False
                st.wake.set()
            for st in diff.gone:
                self._vanished(st, st.observed.container_id if st.observed else "")
            if diff.found or diff.changed:
                self._changed()
        self.resync_count += 1
        return complete

    def _vanished(self, st: InstanceState, cid: str) -> None:
        """The container `cid` of `st` is gone without KAT removing it: the instance is
        FAILED ("container removed outside KAT") until the leader asks for a restart."""
        if st.busy or st.observed is None or st.observed.container_id != cid:
            return  # being acted on, or already replaced: nothing to notice
        log.warning("container %s of instance %s is gone", cid[:12], st.id)
        self._cancel_watchers(st)
        if st.backend is not None:
            self._side_task(self._clear_remains(st.backend, cid))
        st.observed = None
        st.vanished = st.assignment is not None
        st.ready = False
        st.epoch += 1
        st.wake.set()
        self._changed()

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
            if step is Step.LATER and st.wake_at is not None:
                timeout = max(0.0, (st.wake_at - _utcnow()).total_seconds())
            # (asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation
            # that arrives together with the wake-up.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await st.wake.wait()

    def _forget(self, st: InstanceState) -> None:
        self._cancel_watchers(st)
        self.previous_logs.drop(st.id)
        if self.states.get(st.id) is st:
            del self.states[st.id]
        self._changed()
        backend = st.backend
        if backend is not None:
            self.idle_users.idle(backend)

    def _side_task(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` beside the workers (cancelled when the runtime stops)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _clear_remains(self, backend: RuntimeBackend, cid: str) -> None:
        """What Podman still keeps of a vanished container goes, and what still runs of
        it although Podman lost sight of it is ended (Runtime.remove, podman/orphans.py):
        the replacement must not run beside it."""
        with contextlib.suppress(ContainerRuntimeError):
            await backend.runtime.remove(cid, force=True)

    async def _step(self, st: InstanceState) -> Step:
        """Plan (internal/core/node_plan.py) and execute one step of one instance."""
        plan = plan_instance(
            st.view(), _utcnow(), desired_known=self._applied, detached=self.detached()
        )
        if st.remember(plan.memory):
            self._changed()
        for action in plan.actions:
            await self._execute(st, action)
        if plan.done:
            return Step.DONE
        if plan.progress:
            return Step.PROGRESS
        st.wake_at = plan.wake_at
        return Step.IDLE if plan.wake_at is None else Step.LATER

    async def _execute(self, st: InstanceState, action: Action) -> None:
        match action:
            case Create(assignment=a):
                await self._create(st, a)
            case StopAndRemove(phase=phase, message=message, reason=reason):
                await self._stop_and_remove(st, phase, message, reason)
            case StopUnhealthy():
                await self._stop_unhealthy(st)
            case Watch(health=health):
                self._watch_exit(st)
                if health:
                    watch_health(st, self._changed)
            case PurgeVolumes():
                await self._purge_volumes(st)
            case Adopt(container_id=cid, restart_count=count):
                log.debug("instance %s: adopted container %s (restart %d)", st.id, cid[:12], count)
            case Forget() | Report():
                pass  # the worker forgets; reports are made on demand (report())

    # ------------------------------------------------------------ actions

    def _set_activity(self, st: InstanceState, phase: int | None, message: str = "") -> None:
        st.activity, st.message = phase, message
        self._changed()

    async def _create(self, st: InstanceState, a: kat_pb2.Assignment) -> None:
        inst, spec = a.instance, a.bundle.workload.spec
        st.epoch += 1
        st.remember(created(st.memory(), a))
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
            ispec = dataclasses.replace(ispec, extra_labels=node_labels(a))
            if backend.network or (self.plumbs_rootless and backend.rootless):
                # The node's DNS (kat_agent/node/network/dns.py) with the cluster search path.
                servers, search = self.settings.container_dns(inst.namespace)
                ispec = dataclasses.replace(ispec, dns_servers=servers, dns_search=search)
            try:
                cid = await backend.runtime.create_and_start(ispec)
            except ContainerRuntimeError as exc:
                if exc.kind is not ErrorKind.NAME_CONFLICT:
                    raise
                # Ours from an earlier attempt that was not seen yet: adopt it.
                cid = ispec.container_name
            st.observed = await backend.runtime.observe(cid)
            metrics.container_started(inst.restart_count)
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

    async def _stop_and_remove(self, st: InstanceState, phase: int, message: str, why: str) -> None:
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
            if why == "restart":  # for `katcall logs --previous`
                await self.previous_logs.save(backend.runtime, obs.container_id, st.id)
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
        path = await asyncio.to_thread(
            purge_workload_volumes, self.settings.volume_base_path, ns, wl
        )
        if path is not None:
            log.info("purged the volumes of %s/%s (%s)", ns, wl, path)

    # ------------------------------------------------------------ watchers

    def _cancel_watchers(self, st: InstanceState) -> None:
        st.cancel_watchers()

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

    async def _wait_exit(self, st: InstanceState, backend: RuntimeBackend, cid: str) -> None:
        obs = await wait_for_exit(backend.runtime, cid)
        if obs is None:
            # Removed behind KAT's back (KAT cancels this watcher before it removes a
            # container itself): say so now, not at the next resync.
            self._vanished(st, cid)
        elif st.observed is not None and st.observed.container_id == cid:
            st.observed = obs
            st.epoch += 1
            log.info("instance %s: container exited with code %s", st.id, obs.exit_code)
            if obs.exit_code:
                metrics.CONTAINER_FAILURES.inc()
            st.wake.set()
            self._changed()

    # ------------------------------------------------------------ for the NodeAgent API

    def find(
        self, namespace: str, workload: str, instance_id: str
    ) -> list[tuple[InstanceState, RuntimeBackend, str]]:
        """Instances with a container matching the request (instance id, else all of
        the workload's), as (state, backend, container id)."""
        return find_containers(self.states.values(), namespace, workload, instance_id)
