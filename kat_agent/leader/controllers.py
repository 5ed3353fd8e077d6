"""Leader-only reconcile loops for workloads (scheduling, rollouts, restarts, jobs, node
loss). Started when leadership is won, cancelled when it is lost.

One loop does it all, in passes: read the workloads and instance records from etcd, the
nodes from the registry and what the agents last reported (kept in memory by a heartbeat
listener), plan each workload with the pure `internal.core.reconcile`, write what changed
(guarded by revisions: a conflicting write is skipped and redone by the next pass), and
publish the assignments each node should run (`lc.assignments`). A pass runs when
something changed (a workload was applied or deleted, an agent reported a different
state, a node record changed), when a timer is due (a restart back-off, a job's retry,
deadline or next schedule tick, a rollout's progress deadline), and at least every
`agentTickSeconds`. Passes are idempotent: a new leader simply starts with one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from api.v1alpha1 import kat_pb2
from internal.core import endpoints, reconcile, rollout, scheduler
from internal.core.assignments import AssignmentCache, assignments_by_node
from internal.core.reconcile_model import NodeFacts, Observed, Plan, template_generation
from internal.state.etcd_values import EtcdError
from internal.state.kv import Compacted, StaleWrite, StoreError
from kat_agent.leader.context import LeaderContext
from kat_agent.leader.observe import observe_instances, observe_plan

log = logging.getLogger(__name__)

_ID_CHARS = string.ascii_lowercase + string.digits
_NODE_POLL_SECONDS = 0.25  # how often the in-memory node registry is checked for changes
_RETRY_SECONDS = 1.0  # after a failed pass (etcd trouble)
RESYNC_SECONDS = 5
# Instance writes per etcd transaction: within etcd's default --max-txn-ops (128), with
# room for the failure branch's reads of the guarded keys.
TXN_BATCH = 100


def new_instance_suffix() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(5))


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
        self._assignment_cache: AssignmentCache = {}  # reused Assignment objects
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
        changed = self.reported.get(node) != ids
        for old_id in self.reported.get(node, frozenset()) - ids:
            gone = self.reports.get(old_id)
            if gone is not None and gone.node == node:
                del self.reports[old_id]
        for inst in instances:
            report = kat_pb2.Instance()
            report.CopyFrom(inst)
            report.node = node
            if self.reports.get(inst.id) != report:
                self.reports[inst.id] = report
                changed = True
        self.reported[node] = ids
        if changed:
            self.wake()

    async def _watch_workloads(self) -> None:
        while True:
            try:
                start = await self.store.revision() + 1
                self.wake()
                async for _ in self.store.watch_workloads(None, start):
                    self.wake()
            except Compacted:
                continue
            except EtcdError as exc:
                log.warning("workload watch failed, retrying: %s", exc)
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
            self._wake.clear()
            try:
                wake_at = await self.reconcile_once()
            except (EtcdError, StoreError) as exc:
                log.warning("workload reconcile failed, retrying: %s", exc)
                wake_at = datetime.now(UTC) + timedelta(seconds=_RETRY_SECONDS)

    async def reconcile_once(self) -> datetime | None:
        """One pass over every workload; returns when the next timer is due."""
        self.passes += 1
        lc = self.lc
        workloads = [v.msg for v in await self.store.list_workloads()]
        records = [v.msg for v in await self.store.list_instances()]
        nodes = lc.registry.stored()
        facts = NodeFacts(
            {n.metadata.name: n.status.condition == kat_pb2.NodeStatus.READY for n in nodes}
        )
        observed = Observed(dict(self.reports), dict(self.reported))
        by_workload: dict[tuple[str, str], list[kat_pb2.Instance]] = {}
        for r in records:
            by_workload.setdefault((r.namespace, r.workload), []).append(r)
        profiles = {
            (w.metadata.namespace, w.metadata.name): scheduler.WorkloadProfile.from_workload(w)
            for w in workloads
        }
        none = scheduler.WorkloadProfile(key="")
        cluster = scheduler.Cluster.from_protos(
            nodes,
            (
                (r, profiles.get((r.namespace, r.workload), none).requests)
                for r in records
                if r.phase != kat_pb2.Instance.PENDING
            ),
        )
        now = datetime.now(UTC)
        final = {r.id: r for r in records}  # what the assignments are built from
        wake_at: datetime | None = None
        dirty = False
        known: dict[tuple[str, str], kat_pb2.Workload] = {}
        for w in sorted(workloads, key=lambda w: (w.metadata.namespace, w.metadata.name)):
            key = (w.metadata.namespace, w.metadata.name)
            known[key] = w
            bundle, created = await self._bundle(w, w.metadata.generation)
            started = time.perf_counter()
            plan = reconcile.plan_workload(
                w,
                bundle,
                by_workload.get(key, []),
                cluster=cluster,
                nodes=facts,
                observed=observed,
                now=now,
                new_id=new_instance_suffix,
                progress=self.progress.get(w.metadata.uid),
                schedule_since=created,
            )
            observe_plan(
                w, plan, by_workload.get(key, []), created, time.perf_counter() - started, now
            )
            if plan.progress is not None:
                self.progress[w.metadata.uid] = plan.progress
            dirty |= not await self._write(plan, final, w)
            if plan.wake_at is not None and (wake_at is None or plan.wake_at < wake_at):
                wake_at = plan.wake_at
        orphans = [r for key, rs in by_workload.items() if key not in known for r in rs]
        if orphans:
            dirty |= not await self._write(
                reconcile.plan_orphans(orphans, nodes=facts, observed=observed), final, None
            )
        uids = {w.metadata.uid for w in workloads}
        self.progress = {u: p for u, p in self.progress.items() if u in uids}
        await self._publish(final.values(), known)
        observe_instances(final.values())
        if dirty:
            self.wake()
        return wake_at

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

    async def _publish(
        self,
        records: Iterable[kat_pb2.Instance],
        workloads: dict[tuple[str, str], kat_pb2.Workload],
    ) -> None:
        insts = list(records)
        wanted: dict[tuple[str, int], kat_pb2.Bundle] = {}
        for r in insts:
            w = workloads.get((r.namespace, r.workload))
            if w is None or not r.node or r.phase == kat_pb2.Instance.PENDING:
                continue
            gen = r.generation
            if w.spec.type != kat_pb2.WorkloadSpec.JOB and gen == template_generation(w):
                gen = w.metadata.generation  # same template: the current bundle
            wanted[(w.metadata.uid, r.generation)] = (await self._bundle(w, gen))[0]
        live = {(w.metadata.uid, w.metadata.generation) for w in workloads.values()}
        keep = live | {
            (workloads[(r.namespace, r.workload)].metadata.uid, r.generation)
            for r in insts
            if (r.namespace, r.workload) in workloads
        }
        self.bundles = {k: v for k, v in self.bundles.items() if k in keep}

        def bundle_for(inst: kat_pb2.Instance) -> kat_pb2.Bundle | None:
            w = workloads.get((inst.namespace, inst.workload))
            return None if w is None else wanted.get((w.metadata.uid, inst.generation))

        per_node = assignments_by_node(insts, bundle_for, self._assignment_cache)
        await self.lc.assignments.publish(per_node, self.lc.peers())
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
        await self.lc.endpoints.publish(
            endpoints.build_endpoint_set(insts, current),
            endpoints.ingress_nodes(self.lc.registry.stored()),
        )

    # ------------------------------------------------------------ writes

    async def _write(
        self,
        plan: Plan,
        final: dict[str, kat_pb2.Instance],
        workload: kat_pb2.Workload | None,
    ) -> bool:
        """Write a plan; False when some write met a conflict (the next pass redoes it)."""
        store = self.store
        ok = True
        ops = [("c", i) for i in plan.creates]
        ops += [("u", i) for i in plan.updates]
        ops += [("d", i) for i in plan.deletes]
        for start in range(0, len(ops), TXN_BATCH):
            ok &= await self._write_batch(ops[start : start + TXN_BATCH], final)
        if workload is not None and plan.status is not None:
            updated = kat_pb2.Workload()
            updated.CopyFrom(workload)
            updated.status.CopyFrom(plan.status)
            try:
                await store.update_workload(updated, workload.metadata.resource_version)
            except StaleWrite:
                ok = False
        for ev in plan.events:
            try:
                await store.record_event(ev)
            except (EtcdError, StoreError) as exc:
                log.warning("could not record event %s: %s", ev.reason, exc)
        return ok

    async def _write_batch(
        self, ops: Sequence[tuple[str, kat_pb2.Instance]], final: dict[str, kat_pb2.Instance]
    ) -> bool:
        """Instance writes of a plan in one etcd transaction (one raft proposal instead of
        one per record); when a guard fails, one by one so that the other writes still
        land. False when some write met a conflict (the next pass redoes it)."""
        store = self.store
        try:
            if len({i.id for _, i in ops}) != len(ops):
                raise StoreError("an instance twice in one batch: write them one by one")
            revision = await store.write_instances(
                (i for k, i in ops if k == "c"),
                (i for k, i in ops if k == "u"),
                (i for k, i in ops if k == "d"),
            )
        except StoreError:
            if len(ops) == 1:
                return False
        else:
            for kind, inst in ops:
                if kind == "d":
                    final.pop(inst.id, None)
                else:
                    inst.resource_version = revision
                    final[inst.id] = inst
            return True
        results = await asyncio.gather(*(self._write_batch([op], final) for op in ops))
        return all(results)


async def run_controllers(lc: LeaderContext) -> None:
    """Run the workload controllers until cancelled (leadership lost)."""
    await WorkloadController(lc).run()
