"""Apply planning: what storing a newly applied bundle means for the stored workload
(a new workload, a new generation with its stored revision, a metadata-only update, or
nothing). Pure: the time, the caller and the uid are given."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from api.v1alpha1 import kat_pb2
from internal.core.reconcile_model import same_instances, same_spec
from internal.manifests.changes import bundle_changes


@dataclass
class ApplyPlan:
    workload: kat_pb2.Workload
    revision: kat_pb2.WorkloadRevision | None  # None: no new generation
    changed: bool
    created: bool
    changes: list[str] = field(default_factory=list)


def plan_apply(
    current: kat_pb2.Workload | None,
    current_bundle: kat_pb2.Bundle | None,
    new: kat_pb2.Bundle,
    *,
    now: datetime,
    who: str,
    uid: str = "",
) -> ApplyPlan:
    """What storing `new` (defaults applied, server fields cleared) means: a new workload,
    a new generation (the spec changed), a metadata-only update, or nothing."""
    meta = new.workload.metadata
    if current is None:
        wl = kat_pb2.Workload()
        wl.CopyFrom(new.workload)
        wl.metadata.uid = uid or str(uuid.uuid4())
        wl.metadata.generation = 1
        wl.metadata.creation_timestamp.FromDatetime(now)
        wl.status.template_generation = 1
        return ApplyPlan(wl, _revision(new, wl, now, who), True, True, bundle_changes(None, new))
    cur = current.metadata
    old = kat_pb2.Bundle()
    if current_bundle is not None:
        old.CopyFrom(current_bundle)
    else:
        old.workload.CopyFrom(current)
    old.workload.ClearField("status")
    old.workload.metadata.labels.clear()
    old.workload.metadata.labels.update(cur.labels)
    old.workload.metadata.annotations.clear()
    old.workload.metadata.annotations.update(cur.annotations)
    spec_same = current_bundle is not None and same_spec(current_bundle, new)
    meta_same = dict(cur.labels) == dict(meta.labels) and dict(cur.annotations) == dict(
        meta.annotations
    )
    if spec_same and meta_same:
        return ApplyPlan(current, None, False, False, [])
    wl = kat_pb2.Workload()
    wl.CopyFrom(new.workload)
    wl.metadata.uid = cur.uid
    wl.metadata.creation_timestamp.CopyFrom(cur.creation_timestamp)
    wl.metadata.generation = cur.generation
    wl.metadata.resource_version = cur.resource_version
    wl.status.CopyFrom(current.status)
    revision = None
    if not spec_same:
        wl.metadata.generation = cur.generation + 1
        template = current.status.template_generation or cur.generation
        if current_bundle is None or not same_instances(current_bundle, new):
            template = wl.metadata.generation
        wl.status.template_generation = template
        revision = _revision(new, wl, now, who)
    return ApplyPlan(wl, revision, True, False, bundle_changes(old, new))


def _revision(
    new: kat_pb2.Bundle, wl: kat_pb2.Workload, now: datetime, who: str
) -> kat_pb2.WorkloadRevision:
    rev = kat_pb2.WorkloadRevision(revision=wl.metadata.generation, created_by=who)
    rev.bundle.CopyFrom(new)
    stored = rev.bundle.workload.metadata
    stored.uid = wl.metadata.uid
    stored.generation = wl.metadata.generation
    stored.creation_timestamp.CopyFrom(wl.metadata.creation_timestamp)
    rev.created.FromDatetime(now)
    return rev
