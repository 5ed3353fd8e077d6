"""Workload commands: `get workloads|instances`, `delete workload|namespace`,
`rollback workload` and `create namespace`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from api.v1alpha1 import kat_pb2
from internal.core.observe import CRASH_LOOP
from katcall import get_cmd, output, rollout_cmd
from katcall.client import CallError, Client
from katcall.get_cmd import Resource
from katcall.session import connect, namespace

_Inst = kat_pb2.Instance
PHASE = _Inst.Phase.Name
TYPE = kat_pb2.WorkloadSpec.Type.Name


def age_of(seconds: int) -> str:
    return output.age(time.time() - seconds) if seconds else "-"


def phase(inst: kat_pb2.Instance) -> str:
    """The PHASE cell: the phase, or, as kubectl's STATUS does, `CrashLoopBackOff` for an
    instance waiting out its back-off after failing again (the leader's message says so)."""
    if inst.phase == _Inst.STARTING and inst.message.startswith(CRASH_LOOP):
        return CRASH_LOOP
    return PHASE(inst.phase) if inst.phase else "PENDING"


# ------------------------------------------------------------------ get


def _workload_headers(wide: bool, with_ns: bool) -> list[str]:
    headers = ["NAME", "TYPE", "READY", "UP-TO-DATE", "AVAILABLE", "GENERATION", "AGE"]
    return (["NAMESPACE"] if with_ns else []) + headers + (["IMAGE", "STATUS"] if wide else [])


def image_of(w: kat_pb2.Workload) -> str:
    source = w.spec.source
    return source.image or (f"git:{source.git.repository}" if source.HasField("git") else "")


def _workload_row(w: kat_pb2.Workload, wide: bool, with_ns: bool) -> list[str]:
    st, meta = w.status, w.metadata
    row = [
        meta.name,
        TYPE(w.spec.type),
        f"{st.ready_instances}/{st.desired_instances}",
        str(st.updated_instances),
        str(st.available_instances),
        str(meta.generation),
        age_of(meta.creation_timestamp.seconds),
    ]
    if with_ns:
        row.insert(0, meta.namespace)
    if wide:
        row += [image_of(w), condition_summary(w)]
    return row


def condition_summary(w: kat_pb2.Workload) -> str:
    cond = {c.type: c for c in w.status.conditions}
    for kind in ("RolloutHalted", "Failed", "Complete"):
        c = cond.get(kind)
        if c is not None and c.status == "True":
            return kind
    c = cond.get("Progressing")
    return c.reason if c is not None else ""


def instance_headers(wide: bool, with_ns: bool = False) -> list[str]:
    headers = ["NAME", "WORKLOAD", "NODE", "PHASE", "READY", "RESTARTS", "IP", "AGE"]
    extra = ["GENERATION", "CONTAINER", "MESSAGE"] if wide else []
    return (["NAMESPACE"] if with_ns else []) + headers + extra


def instance_row(i: kat_pb2.Instance, wide: bool, with_ns: bool = False) -> list[str]:
    row = [
        i.id,
        i.workload,
        i.node or "<none>",
        phase(i),
        "true" if i.ready else "false",
        str(i.restart_count),
        i.ip or "-",
        age_of(i.started_at.seconds),
    ]
    if with_ns:
        row.insert(0, i.namespace)
    if wide:
        row += [str(i.generation), i.container_id[:12] or "-", i.message]
    return row


def instance_notes(items: list[kat_pb2.Instance]) -> list[str]:
    """Why instances are PENDING, under the table (the MESSAGE column is -o wide only)."""
    return [f"{i.id}: {i.message}" for i in items if i.message and i.phase == _Inst.PENDING]


def instance_table(items: list[kat_pb2.Instance]) -> str:
    rows = [instance_row(i, False) for i in items]
    return "\n".join([output.table(instance_headers(False), rows), *instance_notes(items)])


def _list_workloads(c: Client, a: argparse.Namespace, sel: dict[str, str]) -> list:
    req = kat_pb2.ListRequest(namespace=namespace(a), label_selector=sel)
    return list(c.list_workloads(req).items)


def _list_instances(c: Client, a: argparse.Namespace, sel: dict[str, str]) -> list:
    items = list(c.list_instances(kat_pb2.ListInstancesRequest(namespace=namespace(a))).items)
    if sel:  # instances carry no labels of their own: select by their workload's
        chosen = {(w.metadata.namespace, w.metadata.name) for w in _list_workloads(c, a, sel)}
        items = [i for i in items if (i.namespace, i.workload) in chosen]
    return items


def _workload_events(
    c: Client, a: argparse.Namespace, sel: dict[str, str]
) -> Iterator[kat_pb2.WorkloadWatchEvent]:
    stream = c.watch_workloads(kat_pb2.WatchRequest(namespace=namespace(a)))
    try:
        for ev in stream:
            if get_cmd.labels_match(ev.workload.metadata.labels, sel):
                yield ev
    finally:
        stream.cancel()


def _watch_workloads(c: Client, a: argparse.Namespace, sel: dict[str, str]) -> Iterator:
    for ev in _workload_events(c, a, sel):
        if ev.type != kat_pb2.WorkloadWatchEvent.DELETE:
            yield ev.workload


def _watch_instances(c: Client, a: argparse.Namespace, sel: dict[str, str]) -> Iterator:
    for ev in _workload_events(c, a, sel):
        yield from ev.workload.status.instances


def _key(namespace_: str, name: str) -> str:
    return f"{namespace_}/{name}"


get_cmd.register_resource(
    Resource(
        "workloads",
        "workload",
        _list_workloads,
        _workload_headers,
        _workload_row,
        key=lambda w: _key(w.metadata.namespace, w.metadata.name),
        namespaced=True,
        selectable=True,
        watcher=_watch_workloads,
    ),
    "wl",
)
get_cmd.register_resource(
    Resource(
        "instances",
        "instance",
        _list_instances,
        instance_headers,
        instance_row,
        key=lambda i: i.id,
        name_of=lambda i: i.id,
        namespaced=True,
        selectable=True,
        watcher=_watch_instances,
        notes=instance_notes,
    ),
    "inst",
)


# ------------------------------------------------------------------ changes


def cmd_delete(args: argparse.Namespace) -> int:
    kind = args.kind
    with connect(args) as client:
        if kind in ("workload", "workloads", "wl"):
            req = kat_pb2.DeleteWorkloadRequest(
                namespace=args.namespace or "default",
                name=args.name,
                purge_volumes=args.purge_volumes,
            )
            client.delete_workload(req)
            note = " (volumes purged)" if args.purge_volumes else ""
            print(f"workload/{args.name} deleted{note}")
        elif kind in ("namespace", "namespaces", "ns"):
            if args.purge_volumes:
                raise CallError("--purge-volumes applies to workloads only")
            client.delete_namespace(kat_pb2.NamespaceRequest(name=args.name))
            print(f"namespace/{args.name} deleted")
        else:
            raise CallError(f"cannot delete {kind!r}: use workload or namespace")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    if args.kind not in ("workload", "workloads", "wl"):
        raise CallError(f"cannot roll back {args.kind!r}: only workloads have revisions")
    with connect(args) as client:
        w = client.rollback_workload(
            kat_pb2.RollbackRequest(
                namespace=args.namespace or "default", name=args.name, to_revision=args.to_revision
            ),
        )
        print(f"workload/{args.name} rolled back (now generation {w.metadata.generation})")
        return rollout_cmd.finish(client, w, args)


def cmd_create(args: argparse.Namespace) -> int:
    if args.kind not in ("namespace", "ns"):
        raise CallError(f"cannot create {args.kind!r} (use `katcall apply -f` for workloads)")
    with connect(args) as client:
        client.create_namespace(kat_pb2.NamespaceRequest(name=args.name))
    print(f"namespace/{args.name} created")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    de = sub.add_parser("delete", help="delete a workload or a namespace (and what is in it)")
    de.add_argument("kind", metavar="workload|namespace")
    de.add_argument("name")
    de.add_argument(
        "--purge-volumes", action="store_true", help="also delete simpleClusterStorage data"
    )
    de.set_defaults(func=cmd_delete)

    rb = sub.add_parser("rollback", help="return a workload to an earlier revision")
    rb.add_argument("kind", metavar="workload")
    rb.add_argument("name")
    rb.add_argument(
        "--to-revision", type=int, default=0, help="revision to return to (default: the previous)"
    )
    rollout_cmd.add_wait(rb)
    rb.set_defaults(func=cmd_rollback)

    cr = sub.add_parser("create", help="create a namespace")
    cr.add_argument("kind", metavar="namespace")
    cr.add_argument("name")
    cr.set_defaults(func=cmd_create)
