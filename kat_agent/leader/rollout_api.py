"""`katcall rollout restart` on the leader (a mixin of `cluster_api.ClusterAPI`) and the two
rules the apply path shares with it: a stored revision's change cause, and a restart that
outlives later applies.

A restart stores the current bundle again with a new `spec.restarted_at`: the instance
template differs, so the workload controller replaces every instance by its usual rolling
update (maxSurge, readiness), exactly as for an image change. An apply that does not set
restarted_at (every manifest) keeps the stored one, or every apply after a restart would
replace the instances once more.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import grpc

from api.v1alpha1 import kat_pb2
from internal.manifests.defaults import DEFAULT_NAMESPACE, object_ref
from kat_agent.leader.guards import admin, caller

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

CHANGE_CAUSE_ANNOTATION = "kat.dws.rip/change-cause"
MAX_CAUSE = 200  # characters of a change cause made from the changes
_Ctx = grpc.aio.ServicerContext


def change_cause(bundle: kat_pb2.Bundle, changes: list[str]) -> str:
    """The applied workload's kat.dws.rip/change-cause annotation, else the first changes."""
    given = bundle.workload.metadata.annotations.get(CHANGE_CAUSE_ANNOTATION, "")
    if given:
        return given[:MAX_CAUSE]
    text = "; ".join(changes[:3]) or "apply"
    return text if len(text) <= MAX_CAUSE else text[: MAX_CAUSE - 3] + "..."


def keep_restarted_at(bundle: kat_pb2.Bundle, current: kat_pb2.Workload) -> None:
    """An applied bundle without restarted_at keeps the stored workload's (in place)."""
    spec = bundle.workload.spec
    if not spec.HasField("restarted_at") and current.spec.HasField("restarted_at"):
        spec.restarted_at.CopyFrom(current.spec.restarted_at)


class RolloutAPI:
    """RestartWorkload of the ClusterAPI; `ClusterAPI` inherits it (with WorkloadAPI)."""

    lc: LeaderContext

    @admin
    async def RestartWorkload(self, request: kat_pb2.ObjectRef, context: _Ctx) -> kat_pb2.Workload:
        namespace = request.namespace or DEFAULT_NAMESPACE
        found = await self.lc.store.get_workload(namespace, request.name)
        if found is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"workload {object_ref(namespace, request.name)} not found",
            )
            raise AssertionError("unreachable")
        wl = found.msg
        if wl.spec.type == kat_pb2.WorkloadSpec.JOB:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{object_ref(namespace, request.name)} is a JOB: its runs are not restarted "
                "(apply it again, or wait for its next scheduled run)",
            )
        stored = await self._stored_bundle(wl)  # type: ignore[attr-defined]
        bundle = kat_pb2.Bundle()
        if stored is not None:
            bundle.CopyFrom(stored)
        else:
            bundle.workload.CopyFrom(wl)
        bundle.workload.metadata.labels.clear()
        bundle.workload.metadata.labels.update(wl.metadata.labels)
        bundle.workload.metadata.annotations.clear()
        bundle.workload.metadata.annotations.update(wl.metadata.annotations)
        bundle.workload.spec.restarted_at.FromDatetime(datetime.now(UTC))
        who = caller(context)
        response = await self._apply_bundle(  # type: ignore[attr-defined]
            bundle, context, who=who, cause="restart"
        )
        gen = response.workload.metadata.generation
        await self._event(  # type: ignore[attr-defined]
            "Restarted",
            f"restart requested by {who} (now generation {gen}); instances are replaced",
            kind="Workload",
            name=request.name,
            namespace=namespace,
        )
        return response.workload
