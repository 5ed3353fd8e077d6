"""Workload commands: `get workloads|instances`, `describe workload`, `logs`, `exec`,
`delete workload|namespace`, `rollback workload` and `create namespace`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc

from api.v1alpha1 import kat_pb2
from katcall import get_cmd, output
from katcall.client import CallError, Client
from katcall.ingress_cmd import service_section
from katcall.session import connect

_Inst = kat_pb2.Instance
PHASE = _Inst.Phase.Name
TYPE = kat_pb2.WorkloadSpec.Type.Name
T = TypeVar("T")


def _namespace(args: argparse.Namespace) -> str:
    """The request namespace: "*" with -A, else -n (default "default")."""
    if getattr(args, "all_namespaces", False):
        return "*"
    return getattr(args, "namespace", "") or "default"


def _ns_column(items: Sequence[T], get_ns: Callable[[T], str]) -> bool:
    """Show a NAMESPACE column unless everything is in "default"."""
    return any(get_ns(i) != "default" for i in items)


def _age(seconds: int) -> str:
    return output.age(time.time() - seconds) if seconds else "-"


def _phase(inst: kat_pb2.Instance) -> str:
    return PHASE(inst.phase) if inst.phase else "PENDING"


# ------------------------------------------------------------------ get


def _workload_rows(items: list[kat_pb2.Workload], wide: bool) -> str:
    with_ns = _ns_column(items, lambda w: w.metadata.namespace)
    headers = ["NAME", "TYPE", "READY", "UP-TO-DATE", "AVAILABLE", "GENERATION", "AGE"]
    if with_ns:
        headers.insert(0, "NAMESPACE")
    if wide:
        headers += ["IMAGE", "STATUS"]
    rows = []
    for w in items:
        st, meta = w.status, w.metadata
        row = [
            meta.name,
            TYPE(w.spec.type),
            f"{st.ready_instances}/{st.desired_instances}",
            str(st.updated_instances),
            str(st.available_instances),
            str(meta.generation),
            _age(meta.creation_timestamp.seconds),
        ]
        if with_ns:
            row.insert(0, meta.namespace)
        if wide:
            source = w.spec.source
            image = source.image or (
                f"git:{source.git.repository}" if source.HasField("git") else ""
            )
            row += [image, condition_summary(w)]
        rows.append(row)
    return output.table(headers, rows)


def condition_summary(w: kat_pb2.Workload) -> str:
    cond = {c.type: c for c in w.status.conditions}
    for kind in ("RolloutHalted", "Failed", "Complete"):
        c = cond.get(kind)
        if c is not None and c.status == "True":
            return kind
    c = cond.get("Progressing")
    return c.reason if c is not None else ""


def _instance_rows(items: list[kat_pb2.Instance], wide: bool) -> str:
    with_ns = _ns_column(items, lambda i: i.namespace)
    headers = ["NAME", "WORKLOAD", "NODE", "PHASE", "READY", "RESTARTS", "IP", "AGE"]
    if with_ns:
        headers.insert(0, "NAMESPACE")
    if wide:
        headers += ["GENERATION", "CONTAINER", "MESSAGE"]
    rows = []
    for i in items:
        row = [
            i.id,
            i.workload,
            i.node or "<none>",
            _phase(i),
            "true" if i.ready else "false",
            str(i.restart_count),
            i.ip or "-",
            _age(i.started_at.seconds),
        ]
        if with_ns:
            row.insert(0, i.namespace)
        if wide:
            row += [str(i.generation), i.container_id[:12] or "-", i.message]
        rows.append(row)
    table = output.table(headers, rows)
    if not wide:
        notes = [f"{i.id}: {i.message}" for i in items if i.message and i.phase == _Inst.PENDING]
        if notes:
            table += "\n" + "\n".join(notes)
    return table


def _list_workloads(c: Client, a: argparse.Namespace) -> list:
    return list(c.call("ListWorkloads", kat_pb2.ListRequest(namespace=_namespace(a))).items)


def _list_instances(c: Client, a: argparse.Namespace) -> list:
    req = kat_pb2.ListInstancesRequest(namespace=_namespace(a))
    return list(c.call("ListInstances", req).items)


def _watch(args: argparse.Namespace, rows: Callable[[kat_pb2.Workload], list[str]]) -> int:
    """Follow WatchWorkloads, printing `rows(workload)` lines that were not printed last."""
    shown: dict[str, str] = {}
    with connect(args) as client:
        stream = client.stream("WatchWorkloads", kat_pb2.WatchRequest(namespace=_namespace(args)))
        try:
            for ev in stream:
                for line in rows(ev.workload):
                    key = line.split()[0] if line.split() else line
                    if shown.get(key) != line:
                        shown[key] = line
                        print(line, flush=True)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                return 0
            return _rpc_error(err)
        finally:
            stream.cancel()
    return 0


def _watch_workloads(args: argparse.Namespace) -> int:
    wide = args.output == "wide"
    print(_workload_rows([], wide))
    return _watch(
        args,
        lambda w: (
            []
            if args.name and w.metadata.name != args.name
            else (_workload_rows([w], wide).split("\n")[1:])
        ),
    )


def _watch_instances(args: argparse.Namespace) -> int:
    wide = args.output == "wide"
    print(_instance_rows([], wide))

    def rows(w: kat_pb2.Workload) -> list[str]:
        insts = [i for i in w.status.instances if not args.name or i.id == args.name]
        return [line for line in _instance_rows(insts, wide).split("\n")[1 : len(insts) + 1]]

    return _watch(args, rows)


# ------------------------------------------------------------------ describe


def cmd_describe_workload(args: argparse.Namespace) -> int:
    ns = args.namespace or "default"
    with connect(args) as client:
        w = client.call("GetWorkload", kat_pb2.ObjectRef(namespace=ns, name=args.name))
        revisions = client.call("ListRevisions", kat_pb2.ObjectRef(namespace=ns, name=args.name))
        events = client.call(
            "ListEvents",
            kat_pb2.ListEventsRequest(namespace=ns, object_name=args.name, limit=20),
        )
        discovery = service_section(client, ns, args.name)
    print(describe_workload(w, list(revisions.items), list(events.items)))
    print(discovery)
    return 0


def describe_workload(
    w: kat_pb2.Workload, revisions: list[kat_pb2.WorkloadRevision], events: list[kat_pb2.Event]
) -> str:
    meta, spec, st = w.metadata, w.spec, w.status
    source = spec.source
    image = source.image or (f"git {source.git.repository}" if source.HasField("git") else "")
    labels = ", ".join(f"{k}={v}" for k, v in sorted(meta.labels.items()))
    lines = [
        f"Name:         {meta.name}",
        f"Namespace:    {meta.namespace}",
        f"Type:         {TYPE(spec.type)}",
        f"Image:        {image}",
        f"Labels:       {labels or '<none>'}",
        f"Generation:   {meta.generation} (observed {st.observed_generation}, "
        f"instances run generation {st.template_generation or meta.generation})",
        f"Created:      {meta.creation_timestamp.ToJsonString()}",
        f"Instances:    {st.desired_instances} desired, {st.ready_instances} ready, "
        f"{st.updated_instances} updated, {st.available_instances} available",
    ]
    if spec.type == kat_pb2.WorkloadSpec.SERVICE:
        us = spec.update_strategy
        strategy = kat_pb2.UpdateStrategy.Type.Name(us.type)
        if us.max_surge:
            strategy += f" (maxSurge {us.max_surge})"
        lines.append(f"Strategy:     {strategy}")
    rp = spec.restart_policy
    restart = kat_pb2.RestartPolicy.Condition.Name(rp.condition)
    if rp.condition == kat_pb2.RestartPolicy.MAX_COUNT:
        restart += f" (maxRestarts {rp.max_restarts}, resetSeconds {rp.reset_seconds})"
    lines.append(f"Restarts:     {restart}")
    lines.append("Conditions:")
    if st.conditions:
        rows = [[c.type, c.status, c.reason, c.message] for c in st.conditions]
        lines += [
            "  " + r
            for r in output.table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows).split("\n")
        ]
    else:
        lines.append("  <none>")
    lines.append("Instances:")
    if st.instances:
        lines += ["  " + r for r in _instance_rows(list(st.instances), False).split("\n")]
    else:
        lines.append("  <none>")
    lines.append("Revisions:")
    if revisions:
        rows = [
            [
                str(r.revision),
                r.created.ToJsonString(),
                r.created_by,
                r.bundle.workload.spec.source.image,
            ]
            for r in revisions
        ]
        lines += [
            "  " + r for r in output.table(["REVISION", "CREATED", "BY", "IMAGE"], rows).split("\n")
        ]
    else:
        lines.append("  <none>")
    lines.append("Events:")
    if events:
        lines += ["  " + r for r in get_cmd._event_rows(events, False).split("\n")]
    else:
        lines.append("  <none>")
    return "\n".join(lines)


# ------------------------------------------------------------------ logs and exec


def _rpc_error(err: grpc.RpcError) -> int:
    print(f"error: {err.details() or err.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
    return 1


def cmd_logs(args: argparse.Namespace) -> int:
    """Raw output for one --instance; otherwise every line prefixed with its instance."""
    req = kat_pb2.LogsRequest(
        namespace=args.namespace or "default",
        workload=args.workload,
        instance_id=args.instance or "",
        follow=args.follow,
        tail=args.tail,
    )
    out = sys.stdout.buffer
    partial: dict[str, bytes] = {}
    with connect(args) as client:
        stream = client.stream("Logs", req)
        try:
            for chunk in stream:
                if args.instance:
                    out.write(chunk.data)
                else:
                    *lines, partial[chunk.instance_id] = (
                        partial.get(chunk.instance_id, b"") + chunk.data
                    ).split(b"\n")
                    for line in lines:
                        out.write(f"[{chunk.instance_id}] ".encode() + line + b"\n")
                out.flush()
        except grpc.RpcError as err:
            return _rpc_error(err)
        finally:
            stream.cancel()
            for inst, rest in partial.items():
                if rest:
                    out.write(f"[{inst}] ".encode() + rest + b"\n")
            out.flush()
    return 0


def _exec_requests(first: kat_pb2.ExecRequest, stdin: bool) -> Iterator[kat_pb2.ExecRequest]:
    yield first
    if stdin:
        while True:
            data = sys.stdin.buffer.read1(64 * 1024) if hasattr(sys.stdin.buffer, "read1") else b""
            if not data:
                return
            yield kat_pb2.ExecRequest(stdin=data)


def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if "--" in command:  # options given after the workload name: `exec web -i -- cat`
        cut = command.index("--")
        late = argparse.ArgumentParser(prog="katcall exec", add_help=False)
        late.add_argument("--instance", default=args.instance)
        late.add_argument("-i", "--stdin", action="store_true", default=args.stdin)
        late.add_argument("-n", "--namespace", default=args.namespace)
        late.parse_args(command[:cut], namespace=args)
        command = command[cut + 1 :]
    if not command:
        print("error: give the command after --, e.g. katcall exec web -- ls /", file=sys.stderr)
        return 2
    first = kat_pb2.ExecRequest(
        namespace=args.namespace or "default",
        workload=args.workload,
        instance_id=args.instance or "",
        command=command,
    )
    code = 0
    with connect(args) as client:
        responses = client.stream("Exec", _exec_requests(first, args.stdin))
        try:
            for resp in responses:
                if resp.stdout:
                    sys.stdout.buffer.write(resp.stdout)
                    sys.stdout.buffer.flush()
                if resp.stderr:
                    sys.stderr.buffer.write(resp.stderr)
                    sys.stderr.buffer.flush()
                if resp.exited:
                    code = resp.exit_code
        except grpc.RpcError as err:
            return _rpc_error(err)
    return code


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
            client.call("DeleteWorkload", req)
            note = " (volumes purged)" if args.purge_volumes else ""
            print(f"workload/{args.name} deleted{note}")
        elif kind in ("namespace", "namespaces", "ns"):
            if args.purge_volumes:
                raise CallError("--purge-volumes applies to workloads only")
            client.call("DeleteNamespace", kat_pb2.NamespaceRequest(name=args.name))
            print(f"namespace/{args.name} deleted")
        else:
            raise CallError(f"cannot delete {kind!r}: use workload or namespace")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    if args.kind not in ("workload", "workloads", "wl"):
        raise CallError(f"cannot roll back {args.kind!r}: only workloads have revisions")
    with connect(args) as client:
        w = client.call(
            "RollbackWorkload",
            kat_pb2.RollbackRequest(
                namespace=args.namespace or "default", name=args.name, to_revision=args.to_revision
            ),
        )
    print(f"workload/{args.name} rolled back (now generation {w.metadata.generation})")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    if args.kind not in ("namespace", "ns"):
        raise CallError(f"cannot create {args.kind!r} (use `katcall apply -f` for workloads)")
    with connect(args) as client:
        client.call("CreateNamespace", kat_pb2.NamespaceRequest(name=args.name))
    print(f"namespace/{args.name} created")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get_cmd.register_resource("workloads", _list_workloads, _workload_rows, "workload", "wl")
    get_cmd.register_resource("instances", _list_instances, _instance_rows, "instance", "inst")
    get_cmd.register_describer("workloads", cmd_describe_workload)
    get_cmd.register_watcher("workloads", _watch_workloads)
    get_cmd.register_watcher("instances", _watch_instances)

    lg = sub.add_parser("logs", help="print the logs of a workload's instances")
    lg.add_argument("workload")
    lg.add_argument("--instance", help="one instance (default: all instances of the workload)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep streaming new output")
    lg.add_argument("--tail", type=int, default=0, help="only the last N lines (default: all)")
    lg.add_argument("-n", "--namespace", default="")
    lg.set_defaults(func=cmd_logs)

    ex = sub.add_parser("exec", help="run a command in a running instance")
    ex.add_argument("workload")
    ex.add_argument("--instance", help="the instance (default: the first RUNNING one)")
    ex.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    ex.add_argument("-n", "--namespace", default="")
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    ex.set_defaults(func=cmd_exec)

    de = sub.add_parser("delete", help="delete a workload or a namespace (and what is in it)")
    de.add_argument("kind", metavar="workload|namespace")
    de.add_argument("name")
    de.add_argument("-n", "--namespace", default="")
    de.add_argument(
        "--purge-volumes", action="store_true", help="also delete simpleClusterStorage data"
    )
    de.set_defaults(func=cmd_delete)

    rb = sub.add_parser("rollback", help="return a workload to an earlier revision")
    rb.add_argument("kind", metavar="workload")
    rb.add_argument("name")
    rb.add_argument("-n", "--namespace", default="")
    rb.add_argument(
        "--to-revision", type=int, default=0, help="revision to return to (default: the previous)"
    )
    rb.set_defaults(func=cmd_rollback)

    cr = sub.add_parser("create", help="create a namespace")
    cr.add_argument("kind", metavar="namespace")
    cr.add_argument("name")
    cr.set_defaults(func=cmd_create)
