"""Leader-only reconcile loops for workloads (scheduling, rollouts, restarts, jobs, node
loss). Started when leadership is won, cancelled when it is lost.

One loop does it all, in passes: plan each workload that may need work with the pure
`internal.core.reconcile`, write what changed (guarded by revisions: a conflicting write
is skipped and redone by the next pass), and publish the assignments each node should run
(`lc.assignments`). Inputs stay in memory across passes: the instance records
(`InstanceView`: listed once, then an etcd watch plus the pass's own writes), the
placement accounting (`internal.core.placed`: follows record changes instead of being
rebuilt from every node and instance), what each node runs (`AssignmentIndex`: only the
nodes whose list changed are published), and what the agents last reported (a heartbeat
listener). A workload needs work when its record or one of its instance records changed,
an agent reported a different state of one of its instances, one of its timers is due (a
restart back-off, a job's retry, deadline or next schedule tick, a rollout's progress
deadline), its conflicting write must be redone, or it waits for capacity and some came
free. Changes only mark workloads and wake the loop, so a row of Applies makes a few
passes, not one each. Node changes that placement or node loss read, a failed write, and
every FULL_PASS_SECONDS make a full pass: every workload, the accounting rebuilt from the
records (the level-triggered safety net). Passes are idempotent: a new leader starts with
a full one from a fresh list of the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from api.v1alpha1 import kat_pb2
from internal.core import endpoints, placed, reconcile, rollout, scheduler
from internal.core.reconcile_model import NodeFacts, Observed, Plan, template_generation
from internal.state.etcd_values import EtcdError
from internal.state.keys import workload_from_key, workload_key
from internal.state.kv import Compacted, EventType, StaleWrite, StoreError
from kat_agent.leader.assignment_index import AssignmentIndex
from kat_agent.leader.context import LeaderContext
from kat_agent.leader.instance_view import InstanceView, workload_of
from kat_agent.leader.observe import observe_instances, observe_plan

log = logging.getLogger(__name__)

_ID_CHARS = string.ascii_lowercase + string.digits
_NODE_POLL_SECONDS = 0.25  # how often the in-memory node registry is checked for changes
_RETRY_SECONDS = 1.0  # after a failed pass (etcd trouble)
RESYNC_SECONDS = 5
# A pass plans only the workloads that may need work; every FULL_PASS_SECONDS one plans
# them all and rebuilds the placement accounting from the records (the safety net).
FULL_PASS_SECONDS = 30.0
COALESCE_SECONDS = 0.01
WRITES_IN_FLIGHT = 8  # workloads whose plans are being written at the same time
OBSERVE_SECONDS = 1.0  # instance-count metrics: at most this often (a scan of all records)
_NO_REQUESTS = scheduler.Requests()
# Instance writes per etcd transaction: within etcd's default --max-txn-ops (128), with
# room for the failure branch's reads of the guarded keys.
TXN_BATCH = 100


def new_instance_suffix() -> str:
    # One draw from the system's randomness for all five characters (secrets.choice per
    # character was five getrandom calls: 3% of the leader's time placing 10,000).
    n = secrets.randbelow(len(_ID_CHARS) ** 5)
    chars = []
    for _ in range(5):
        n, i = divmod(n, len(_ID_CHARS))
        chars.append(_ID_CHARS[i])
    return "".join(chars)


class WorkloadController:
    def __init__(self, lc: LeaderContext) -> None:
        self.lc = lc
        self.store = lc.store
        self._wake = asyncio.Event()
        # What the agents reported: instance id -> latest state (node set), and per node
        # the ids of its latest heartbeat (only nodes heard from since this term began).
        self.reports: dict[str, kat_pb2.Instance] = {}
        self.reported: dict[str, frozenset[str]] = {}
        self.progress: dict[str, rollout.Progress] = {}  # workload uid -> rollout progress
        # (workload uid, generation) -> (bundle, when that revision was created)
        self.bundles: dict[tuple[str, int], tuple[kat_pb2.Bundle, datetime | None]] = {}
        self.passes = 0
        # The records (list + watch), the placement accounting that follows them, and
        # what each node should run, all kept across passes (see the module docstring).
        self.view = InstanceView(lc.store, self.wake)
        self.placed = placed.PlacedCluster()
        self.index = AssignmentIndex()
        # The workload records (list + watch + our own status writes).
        self._workloads: dict[tuple[str, str], kat_pb2.Workload] = {}
        self._workloads_loaded = asyncio.Event()
        self._endpoints_due = True
        self._ingress: tuple[int, list[str]] = (-1, [])  # (registry version, ingress nodes)
        self._profiles: dict[tuple[str, str], scheduler.WorkloadProfile] = {}
        self._dirty: set[tuple[str, str]] = set()  # workloads the next pass must plan
        self._waiting: set[tuple[str, str]] = set()  # workloads with PENDING instances
        self._wake_at: dict[tuple[str, str], datetime] = {}  # per workload: its next timer
        self._ready: dict[str, bool] = {}
        self._nodes_version = -1
        self._rebuild = True
        self._freed = False  # this pass's writes freed capacity
        self._last_full = 0.0
        self._observed_at = 0.0
        self._serving: dict[tuple[str, str], list[kat_pb2.Instance]] = {}  # endpoint records
        # A new leader knows readiness only from stored records until the agents report:
        # it publishes no endpoint view until every node not known to be lost has been
        # heard from (or nodeLossTimeoutSeconds passed), so that nodes keep answering from
        # their last view across a leader change instead of seeing instances vanish.
        self._term_began = 0.0
        self._endpoints_live = False

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------ inputs

    async def on_heartbeat(self, node: str, instances: Sequence[kat_pb2.Instance]) -> None:
        """Instance listener: remember the reports; wake the loop only on a change."""
        ids = frozenset(i.id for i in instances)
        before = self.reported.get(node)
        changed = before != ids
        if before is None:  # first report of this term: whatever ran there may be gone
            for inst_id in self.index.on_node(node):
                self._dirty_instance(inst_id)
        for old_id in (before or frozenset()) - ids:
            self._dirty_instance(old_id)
            gone = self.reports.get(old_id)
            if gone is not None and gone.node == node:
                del self.reports[old_id]
        for inst in instances:
            report = kat_pb2.Instance()
            report.CopyFrom(inst)
            report.node = node
            if self.reports.get(inst.id) != report:
                self.reports[inst.id] = report
                self._dirty.add((inst.namespace, inst.workload))
                changed = True
        self.reported[node] = ids
        if changed:
            self.wake()

    def _dirty_instance(self, inst_id: str) -> None:
        rec = self.view.records.get(inst_id)
        if rec is not None:
            self._dirty.add(workload_of(rec))

    async def _watch_workloads(self) -> None:
        """The workload records in memory: a list, then the watch from its revision."""
        while True:
            try:
                items, revision = await self.store.list_workloads_with_revision()
                listed = {(v.msg.metadata.namespace, v.msg.metadata.name): v.msg for v in items}
                self._dirty |= set(listed) | set(self._workloads)
                self._workloads = listed
                self._profiles.clear()
                self._workloads_loaded.set()
                self.wake()
                async for ev in self.store.watch_workloads(None, revision + 1):
                    key = workload_from_key(ev.key)
                    current = self._workloads.get(key)
                    if ev.type == EventType.PUT:
                        assert ev.msg is not None
                        if current is not None and current.metadata.resource_version >= ev.revision:
                            continue  # our own status write (or older)
                        self._workloads[key] = ev.msg
                    elif current is None or current.metadata.resource_version > ev.revision:
                        continue
                    else:
                        del self._workloads[key]
                    self._profiles.pop(key, None)
                    self._dirty.add(key)
                    self._endpoints_due = True  # ports, ingress, desired count
                    self.wake()
            except Compacted:
                continue
            except EtcdError as exc:
                log.warning("workload watch failed, listing again: %s", exc)
                await asyncio.sleep(_RETRY_SECONDS)

    async def _watch_nodes(self) -> None:
        seen = -1
        while True:
            if self.lc.registry.version != seen:
                seen = self.lc.registry.version
                self.wake()
            await asyncio.sleep(_NODE_POLL_SECONDS)

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        self._term_began = asyncio.get_running_loop().time()
        self._endpoints_live = False
        await self.lc.assignments.reset()
        await self.lc.endpoints.reset()
        self.lc.instance_listeners.append(self.on_heartbeat)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.view.run(), name="instance-view")
                tg.create_task(self._watch_workloads(), name="workload-watch")
                tg.create_task(self._watch_nodes(), name="node-watch")
                tg.create_task(self._loop(), name="workload-reconcile")
        finally:
            with contextlib.suppress(ValueError):
                self.lc.instance_listeners.remove(self.on_heartbeat)
            await self.lc.assignments.close()
            await self.lc.endpoints.close()

    async def _loop(self) -> None:
        # Changes wake the loop (workload watch, heartbeat reports, node changes) and
        # timers set wake_at; the periodic pass is only a safety net, and with
        # hundreds of nodes it is not free.
        resync = float(max(RESYNC_SECONDS, self.lc.spec.agent_tick_seconds))
        wake_at: datetime | None = None
        while True:
            timeout = resync
            if wake_at is not None:
                timeout = min(timeout, max(0.0, (wake_at - datetime.now(UTC)).total_seconds()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            # A row of changes (Applies, watch events) arriving together: one pass.
            await asyncio.sleep(COALESCE_SECONDS)
            self._wake.clear()
            try:
                wake_at = await self.reconcile_once()
            except (EtcdError, StoreError) as exc:
                log.warning("workload reconcile failed, retrying: %s", exc)
                self._rebuild = True  # plans may have reserved what was never written
                wake_at = datetime.now(UTC) + timedelta(seconds=_RETRY_SECONDS)

    async def reconcile_once(self, full: bool = False) -> datetime | None:
        """One pass over the workloads that may need work (see the module docstring);
        `full` (and every FULL_PASS_SECONDS): over every workload, with the placement
        accounting rebuilt from the records. Returns when the next timer is due."""
        self.passes += 1
        lc = self.lc
        view = self.view
        if not view.loaded.is_set():
            await view.loaded.wait()
        clock = asyncio.get_running_loop().time()
        full = full or self._rebuild or clock - self._last_full >= FULL_PASS_SECONDS
        if not self._workloads_loaded.is_set():
            await self._workloads_loaded.wait()
        workloads = dict(self._workloads)  # as of this pass (the watch goes on meanwhile)
        changes = view.take_changes()
        dirty, self._dirty = self._dirty, set()
        if lc.registry.version != self._nodes_version:
            self._nodes_version = lc.registry.version
            self._endpoints_due = True  # ingress nodes
            nodes = lc.registry.stored()
            ready = {n.metadata.name: n.status.condition == kat_pb2.NodeStatus.READY for n in nodes}
            if ready != self._ready or self.placed.nodes_changed(nodes):
                self._ready = ready
                full = True
        facts = NodeFacts(self._ready)  # replaced, never changed in place
        if full:
            self._rebuild = False
            self._last_full = clock
            dirty |= set(workloads) | set(view.workloads()) | set(self.index.workloads())
            self.placed.rebuild(lc.registry.stored(), view.records.values(), self._requests_of)
        else:
            freed = False
            for inst_id, key in changes.items():
                dirty.add(key)
                rec = view.records.get(inst_id)
                if rec is None or not placed.is_placed(rec):
                    freed = True
                if rec is None:
                    self.placed.forget(inst_id)
                else:
                    self.placed.sync(rec, self._requests_of(rec))
            if freed:  # capacity may have come free for instances that wait for it
                dirty |= self._waiting
        now = datetime.now(UTC)
        dirty |= {key for key, at in self._wake_at.items() if at <= now}
        observed = Observed(dict(self.reports), dict(self.reported))
        orphans: list[kat_pb2.Instance] = []
        planned: list[tuple[tuple[str, str], kat_pb2.Workload, Plan, list[kat_pb2.Instance]]] = []
        for key in sorted(dirty):
            self._wake_at.pop(key, None)
            self._waiting.discard(key)
            w = workloads.get(key)
            records = view.of_workload(key)
            if w is None:
                orphans.extend(records)
                continue
            planned.append(
                (key, w, await self._plan_one(w, records, facts, observed, now), records)
            )
        # The plans' writes go to etcd together (etcd commits concurrent transactions in
        # one raft round); each plan's own writes stay in order.
        writing = asyncio.Semaphore(WRITES_IN_FLIGHT)

        async def finish(
            key: tuple[str, str], w: kat_pb2.Workload, plan: Plan, records: list[kat_pb2.Instance]
        ) -> None:
            async with writing:
                await self._finish_one(key, w, plan, records)

        results = await asyncio.gather(*(finish(*item) for item in planned), return_exceptions=True)
        for failed in results:
            if isinstance(failed, BaseException):
                # Every plan got its chance to land; the loop retries after this one
                # (EtcdError, StoreError), the placement accounting rebuilt from records.
                self._rebuild = True
                self._dirty |= {key for key, *_ in planned}
                raise failed
        if orphans:
            plan = reconcile.plan_orphans(orphans, nodes=facts, observed=observed)
            wrote = plan.creates or plan.updates or plan.deletes
            if not await self._write(plan, None, {r.id: r for r in orphans}) or wrote:
                self._dirty |= {workload_of(r) for r in orphans}
        for key in dirty - set(workloads):
            self.index.update_workload(key, view.of_workload(key), lambda r: None)
            self._serve(key, [])
        if full:
            uids = {w.metadata.uid for w in workloads.values()}
            self.progress = {u: p for u, p in self.progress.items() if u in uids}
            self._prune_bundles()
        await self._publish(workloads, full)
        if full or clock - self._observed_at >= OBSERVE_SECONDS:
            self._observed_at = clock
            observe_instances(view.records.values())
        if self._freed:
            self._freed = False
            self._dirty |= self._waiting
        if self._dirty:
            self.wake()
        return min(self._wake_at.values(), default=None)

    def _requests_of(self, inst: kat_pb2.Instance) -> scheduler.Requests:
        """The requests an instance holds on its node: its workload's (none once the
        workload is gone), as Cluster.from_protos counted them."""
        key = workload_of(inst)
        profile = self._profiles.get(key)
        if profile is None:
            w = self._workloads.get(key)
            if w is None:
                return _NO_REQUESTS
            profile = self._profiles[key] = scheduler.WorkloadProfile.from_workload(w)
        return profile.requests

    async def _plan_one(
        self,
        w: kat_pb2.Workload,
        records: list[kat_pb2.Instance],
        facts: NodeFacts,
        observed: Observed,
        now: datetime,
    ) -> Plan:
        bundle, created = await self._bundle(w, w.metadata.generation)
        started = time.perf_counter()
        plan = reconcile.plan_workload(
            w,
            bundle,
            records,
            cluster=self.placed.cluster,
            nodes=facts,
            observed=observed,
            now=now,
            new_id=new_instance_suffix,
            progress=self.progress.get(w.metadata.uid),
            schedule_since=created,
        )
        observe_plan(w, plan, records, created, time.perf_counter() - started, now)
        if plan.progress is not None:
            self.progress[w.metadata.uid] = plan.progress
        return plan

    async def _finish_one(
        self,
        key: tuple[str, str],
        w: kat_pb2.Workload,
        plan: Plan,
        records: list[kat_pb2.Instance],
    ) -> None:
        """Write a workload's plan, then update what its nodes are told to run."""
        if not await self._write(plan, w, {r.id: r for r in records}):
            self._dirty.add(key)
        elif plan.creates or plan.updates or plan.deletes:
            # Plan it again on what was written, until a plan changes nothing (e.g. the
            # instances it just marked TERMINATING are removed once their node's report
            # lacks them), as a pass after the write's watch event did before.
            self._dirty.add(key)
        if plan.wake_at is not None:
            self._wake_at[key] = plan.wake_at
        final = self.view.of_workload(key)
        if any(r.phase == kat_pb2.Instance.PENDING for r in final):
            self._waiting.add(key)
        wanted: dict[int, kat_pb2.Bundle] = {}
        for gen in {r.generation for r in final}:
            at = gen
            if w.spec.type != kat_pb2.WorkloadSpec.JOB and gen == template_generation(w):
                at = w.metadata.generation  # same template: the current bundle
            wanted[gen] = (await self._bundle(w, at))[0]
        self.index.update_workload(key, final, lambda r: wanted.get(r.generation))
        self._serve(key, final)

    def _serve(self, key: tuple[str, str], records: list[kat_pb2.Instance]) -> None:
        serving = [r for r in records if endpoints.is_endpoint(r)]
        if serving != self._serving.get(key, []):
            self._endpoints_due = True
        if serving:
            self._serving[key] = serving
        else:
            self._serving.pop(key, None)

    # ------------------------------------------------------------ bundles

    async def _bundle(
        self, w: kat_pb2.Workload, generation: int
    ) -> tuple[kat_pb2.Bundle, datetime | None]:
        """The bundle of a generation of the workload (revisions are immutable: cached)."""
        key = (w.metadata.uid, generation)
        hit = self.bundles.get(key)
        if hit is not None:
            return hit
        rev = await self.store.get_workload_revision(
            w.metadata.namespace, w.metadata.name, generation
        )
        if rev is None:
            if generation != w.metadata.generation:
                return await self._bundle(w, w.metadata.generation)
            bundle = kat_pb2.Bundle()  # revision pruned or never stored: the record itself
            bundle.workload.CopyFrom(w)
            bundle.workload.ClearField("status")
            return bundle, None
        created = rev.msg.created.ToDatetime(tzinfo=UTC) if rev.msg.HasField("created") else None
        self.bundles[key] = (rev.msg.bundle, created)
        return self.bundles[key]

    def _prune_bundles(self) -> None:
        """Keep the bundles of the current generations and of generations records run."""
        keep = {(w.metadata.uid, w.metadata.generation) for w in self._workloads.values()}
        for r in self.view.records.values():
            w = self._workloads.get(workload_of(r))
            if w is not None:
                keep.add((w.metadata.uid, r.generation))
        self.bundles = {k: v for k, v in self.bundles.items() if k in keep}

    async def _publish(
        self, workloads: dict[tuple[str, str], kat_pb2.Workload], full: bool
    ) -> None:
        if full:
            await self.lc.assignments.publish(self.index.everything(), self.lc.peers())
        else:
            await self.lc.assignments.publish_changes(self.index.take_changes(), self.lc.peers())
        if full:
            self._endpoints_due = True
        if not self._endpoints_due:
            return
        if not self._endpoints_live:
            nodes = self.lc.registry.stored()
            waiting = endpoints.nodes_to_hear(nodes, self.reported)
            waited = asyncio.get_running_loop().time() - self._term_began
            if waiting and waited < self.lc.spec.node_loss_timeout_seconds:
                return
            self._endpoints_live = True
        current = {
            key: (await self._bundle(w, w.metadata.generation))[0] for key, w in workloads.items()
        }
        self._endpoints_due = False
        serving = (r for rs in self._serving.values() for r in rs)
        version = self.lc.registry.version
        if self._ingress[0] != version:
            self._ingress = (version, endpoints.ingress_nodes(self.lc.registry.stored()))
        await self.lc.endpoints.publish(
            endpoints.build_endpoint_set(serving, current), self._ingress[1]
        )

    # ------------------------------------------------------------ writes

    async def _write(
        self,
        plan: Plan,
        workload: kat_pb2.Workload | None,
        original: dict[str, kat_pb2.Instance],
    ) -> bool:
        """Write a plan; False when some write met a conflict (the next pass redoes it)."""
        store = self.store
        ok = True
        ops = [("c", i) for i in plan.creates]
        ops += [("u", i) for i in plan.updates]
        ops += [("d", i) for i in plan.deletes]
        for start in range(0, len(ops), TXN_BATCH):
            ok &= await self._write_batch(ops[start : start + TXN_BATCH], original, workload)
        if workload is not None and plan.status is not None:
            updated = kat_pb2.Workload()
            updated.CopyFrom(workload)
            updated.status.CopyFrom(plan.status)
            try:
                rev = await store.update_workload(updated, workload.metadata.resource_version)
            except StaleWrite:
                ok = False
            else:
                # Our own write: the next pass need not plan the workload again for it.
                key = (workload.metadata.namespace, workload.metadata.name)
                if self._workloads.get(key) is workload:
                    updated.metadata.resource_version = rev
                    self._workloads[key] = updated
        # A plan that did not land whole is made again by the next pass, with its own
        # events: these might tell of instances that were never written.
        for ev in plan.events if ok else ():
            try:
                await store.record_event(ev)
            except (EtcdError, StoreError) as exc:
                log.warning("could not record event %s: %s", ev.reason, exc)
        if not ok:
            # A plan's placements are reserved in the accounting: after a write that did
            # not land, start it over from the records.
            self._rebuild = True
        return ok

    async def _write_batch(
        self,
        ops: Sequence[tuple[str, kat_pb2.Instance]],
        original: dict[str, kat_pb2.Instance],
        workload: kat_pb2.Workload | None,
    ) -> bool:
        """Instance writes of a plan in one etcd transaction (one raft proposal instead of
        one per record); when a guard fails, one by one so that the other writes still
        land. False when some write met a conflict (the next pass redoes it). What landed
        goes into the instance view and the placement accounting at once.

        The writes are guarded by the workload record the plan was made from: instances
        and workloads come through two watches, so a pass can see a delete's instances
        TERMINATING before the workload is gone (and would replace them), or plan an
        older spec than the one just applied. Such a plan is dropped whole."""
        store = self.store
        try:
            if len({i.id for _, i in ops}) != len(ops):
                raise StoreError("an instance twice in one batch: write them one by one")
            revision = await store.write_instances(
                (i for k, i in ops if k == "c"),
                (i for k, i in ops if k == "u"),
                (i for k, i in ops if k == "d"),
                workload=workload,
            )
        except StoreError as exc:
            if len(ops) == 1 or _workload_changed(exc, workload):
                return False
        else:
            for kind, inst in ops:
                before = original.get(inst.id)
                if before is not None and placed.is_placed(before):
                    if kind == "d" or not placed.is_placed(inst):
                        self._freed = True  # capacity came free: waiting workloads retry
                if kind == "d":
                    self.view.deleted(inst, revision)
                    self.placed.forget(inst.id)
                    continue
                inst.resource_version = revision
                self.view.wrote(inst)
                reserved = before is None or before.phase == kat_pb2.Instance.PENDING
                self.placed.sync(inst, self._requests_of(inst), reserved=reserved)
            return True
        results = await asyncio.gather(*(self._write_batch([op], original, workload) for op in ops))
        return all(results)


def _workload_changed(exc: StoreError, workload: kat_pb2.Workload | None) -> bool:
    """The write failed on the workload's own guard (not an instance's)."""
    if workload is None or not isinstance(exc, StaleWrite):
        return False
    return exc.key == workload_key(workload.metadata.namespace, workload.metadata.name)


async def run_controllers(lc: LeaderContext) -> None:
    """Run the workload controllers until cancelled (leadership lost)."""
    await WorkloadController(lc).run()
