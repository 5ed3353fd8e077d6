"""`katcall describe RESOURCE NAME`: one object for a person, with its recent events.

Nodes show capacity, what their instances request against it, conditions, instances and
overlay; instances their container, restarts, last exit and events; namespaces what
runs in them; workloads their spec summary, conditions, instances and revisions.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from api.v1alpha1 import kat_pb2
from internal.core.scheduler import Requests
from internal.manifests.quantity import format_cpu
from katcall import describe_more, get_cmd, output, overlay_view
from katcall.client import CallError, Client
from katcall.ingress_cmd import service_section
from katcall.rollout_cmd import history_rows
from katcall.session import connect
from katcall.workload_cmd import TYPE, image_of, instance_table, phase

_Inst = kat_pb2.Instance
# Instances that no longer hold their node's resources.
_DONE = (_Inst.SUCCEEDED, _Inst.FAILED)


def _field(label: str, value: object) -> str:
    return f"{label + ':':<16}{value}"


def _section(title: str, body: str | list[str]) -> list[str]:
    lines = body.split("\n") if isinstance(body, str) else body
    return [f"{title}:"] + (
        ["  " + line for line in lines] if lines and lines != [""] else ["  <none>"]
    )


def _events(client: Client, namespace: str, name: str) -> list[str]:
    req = kat_pb2.ListEventsRequest(namespace=namespace, object_name=name, limit=20)
    events = list(client.list_events(req).items)
    return get_cmd.event_table(events).split("\n") if events else []


def _when(ts: object) -> str:
    seconds = getattr(ts, "seconds", 0)
    if not seconds:
        return "-"
    return f"{ts.ToJsonString()} ({output.age(time.time() - seconds)} ago)"  # type: ignore[attr-defined]


def _cpu_memory(r: kat_pb2.ResourceList) -> str:
    return f"cpu {r.cpu or '-'}, memory {r.memory or '-'}"


def _percent(part: int, whole: int) -> str:
    return f" ({100 * part // whole}%)" if whole else ""


# ------------------------------------------------------------------ node


def _describe_node(client: Client, args: argparse.Namespace) -> str:
    node = client.get_node(kat_pb2.NodeRequest(name=args.name))
    workloads = client.list_workloads(kat_pb2.ListRequest(namespace="*")).items
    by_key = {(w.metadata.namespace, w.metadata.name): w for w in workloads}
    insts = [i for i in node.status.instances]
    if not insts:
        listed = client.list_instances(kat_pb2.ListInstancesRequest(namespace="*", node=args.name))
        insts = list(listed.items)
    return describe_node(node, insts, by_key, _events(client, "", args.name))


def describe_node(
    node: kat_pb2.Node,
    instances: list[kat_pb2.Instance],
    workloads: dict[tuple[str, str], kat_pb2.Workload],
    events: list[str],
) -> str:
    st, spec = node.status, node.spec
    cpu = mem = 0
    for i in instances:
        w = workloads.get((i.namespace, i.workload))
        if w is not None and i.phase not in _DONE:
            try:
                req = Requests.from_spec(w.spec)
            except ValueError:
                continue
            cpu, mem = cpu + req.cpu_millis, mem + req.memory_bytes
    cap, alloc = st.capacity, st.allocatable
    gpus = ", ".join(
        f"{kat_pb2.GPURequest.Driver.Name(g.driver)} {g.model} {g.vram_mb}MB" for g in cap.gpus
    )
    resources = output.table(
        ["RESOURCE", "CAPACITY", "ALLOCATABLE", "REQUESTED"],
        [
            [
                "cpu",
                format_cpu(cap.cpu_millis),
                format_cpu(alloc.cpu_millis),
                format_cpu(cpu) + _percent(cpu, alloc.cpu_millis),
            ],
            [
                "memory",
                output.approx_memory(cap.memory_bytes),
                output.approx_memory(alloc.memory_bytes),
                output.approx_memory(mem) + _percent(mem, alloc.memory_bytes),
            ],
        ],
    )
    beat = st.last_heartbeat
    conditions = output.table(
        ["TYPE", "STATUS", "LAST-HEARTBEAT"],
        [
            ["Ready", "True" if st.condition == kat_pb2.NodeStatus.READY else "False", _when(beat)],
            ["Schedulable", "False" if spec.unschedulable else "True", "-"],
        ],
    )
    lines = [
        _field("Name", node.metadata.name),
        _field("Status", get_cmd.node_status(node)),
        _field("Roles", get_cmd.node_roles(node)),
        _field("Address", f"{st.advertise_address} (agent port {st.agent_port or '-'})"),
        _field("Version", st.agent_version or "unknown"),
        _field("Labels", get_cmd.labels_text(node.metadata.labels)),
        _field("Taints", get_cmd.taints_text(node)),
        _field("Created", _when(node.metadata.creation_timestamp)),
        _field("GPUs", gpus or "none"),
        *_section("Resources", resources),
        *_section("Conditions", conditions),
        *_section(
            "Overlay",
            [
                _field("Subnet", st.subnet or "-"),
                _field("WireGuard key", st.wireguard_public_key or "-"),
                *overlay_view.lines(node),
            ],
        ),
        *_section("Instances", instance_table(instances) if instances else []),
        *_section("Events", events),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ instance


def _find_instance(client: Client, args: argparse.Namespace) -> kat_pb2.Instance:
    ns = "*" if args.all_namespaces else (args.namespace or "default")
    for i in client.list_instances(kat_pb2.ListInstancesRequest(namespace=ns)).items:
        if i.id == args.name:
            return i
    where = "" if ns == "*" else f" in namespace {ns!r} (use -A to look in all)"
    raise CallError(f"instance {args.name!r} not found{where}")


def _describe_instance(client: Client, args: argparse.Namespace) -> str:
    inst = _find_instance(client, args)
    ref = kat_pb2.ObjectRef(namespace=inst.namespace, name=inst.workload)
    try:
        w: kat_pb2.Workload | None = client.get_workload(ref)
    except CallError:
        w = None
    return describe_instance(inst, w, _events(client, inst.namespace, inst.id))


def describe_instance(inst: kat_pb2.Instance, w: kat_pb2.Workload | None, events: list[str]) -> str:
    last_exit = "-"
    if inst.HasField("finished_at") or inst.exit_code:
        last_exit = f"code {inst.exit_code} at {_when(inst.finished_at)}"
    lines = [
        _field("Name", inst.id),
        _field("Namespace", inst.namespace),
        _field("Workload", inst.workload),
        _field("Node", inst.node or "<none>"),
        _field("Phase", phase(inst)),
        _field("Ready", "true" if inst.ready else "false"),
        _field("IP", inst.ip or "-"),
        _field("Generation", inst.generation),
        _field("Restarts", inst.restart_count),
        _field("Started", _when(inst.started_at)),
        _field("Last exit", last_exit),
        _field("Message", inst.message or "-"),
    ]
    if inst.job_run:
        lines.append(_field("Job run", inst.job_run))
    container = [_field("ID", inst.container_id[:12] or "-")]
    if w is not None:
        c = w.spec.container
        res = c.resources
        container += [
            _field("Image", image_of(w)),
            _field("Command", " ".join([*c.command, *c.args]) or "(image default)"),
            _field(
                "Requests", f"cpu {res.requests.cpu or '-'}, memory {res.requests.memory or '-'}"
            ),
            _field("Limits", f"cpu {res.limits.cpu or '-'}, memory {res.limits.memory or '-'}"),
        ]
    lines += _section("Container", container)
    lines += _section("Events", events)
    return "\n".join(lines)


# ------------------------------------------------------------------ namespace


def _describe_namespace(client: Client, args: argparse.Namespace) -> str:
    found = [
        n
        for n in client.list_namespaces(kat_pb2.ListRequest()).items
        if n.metadata.name == args.name
    ]
    if not found:
        raise CallError(f"namespace {args.name!r} not found")
    ns = found[0]
    workloads = list(client.list_workloads(kat_pb2.ListRequest(namespace=args.name)).items)
    rows = [
        [
            w.metadata.name,
            TYPE(w.spec.type),
            f"{w.status.ready_instances}/{w.status.desired_instances}",
        ]
        for w in workloads
    ]
    lines = [
        _field("Name", ns.metadata.name),
        _field("Labels", get_cmd.labels_text(ns.metadata.labels)),
        _field("Created", _when(ns.metadata.creation_timestamp)),
        *_section("Workloads", output.table(["NAME", "TYPE", "READY"], rows) if rows else []),
        *_section("Events", _events(client, args.name, args.name)),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ workload


def _describe_workload(client: Client, args: argparse.Namespace) -> str:
    ref = kat_pb2.ObjectRef(namespace=args.namespace or "default", name=args.name)
    w = client.get_workload(ref)
    revisions = client.list_revisions(ref)
    req = kat_pb2.ListEventsRequest(namespace=ref.namespace, object_name=args.name, limit=20)
    events = client.list_events(req)
    text = describe_workload(w, list(revisions.items), list(events.items))
    return text + "\n" + service_section(client, ref.namespace, args.name)


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
    if spec.HasField("restarted_at"):
        lines.append(f"Restarted:    {_when(spec.restarted_at)} (katcall rollout restart)")
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
        lines += ["  " + r for r in instance_table(list(st.instances)).split("\n")]
    else:
        lines.append("  <none>")
    lines.append("Revisions:")
    if revisions:
        headers, rows = history_rows(revisions, meta.generation)
        lines += ["  " + r for r in output.table(headers, rows).split("\n")]
    else:
        lines.append("  <none>")
    lines.append("Events:")
    if events:
        lines += ["  " + r for r in get_cmd.event_table(events).split("\n")]
    else:
        lines.append("  <none>")
    return "\n".join(lines)


DESCRIBERS: dict[str, Callable[[Client, argparse.Namespace], str]] = {
    "nodes": _describe_node,
    "instances": _describe_instance,
    "namespaces": _describe_namespace,
    "workloads": _describe_workload,
    **describe_more.DESCRIBERS,
}


def cmd_describe(args: argparse.Namespace) -> int:
    res = get_cmd.resource(args.resource)
    describer = DESCRIBERS.get(res.name)
    if describer is None and res.name in get_cmd.DESCRIBERS:
        return get_cmd.DESCRIBERS[res.name](args)
    if describer is None:
        describer = describe_more.describe_listed  # any other listable kind
    with connect(args) as client:
        print(describer(client, args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("describe", help="show one resource in detail, with its recent events")
    d.add_argument(
        "resource",
        metavar="RESOURCE",
        help="node, instance, namespace, workload, token, event (or any kind `get` lists)",
    )
    d.add_argument("name", metavar="NAME")
    d.set_defaults(func=cmd_describe)
