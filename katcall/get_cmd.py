"""`katcall get RESOURCE` and `katcall describe RESOURCE NAME`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from api.v1alpha1 import kat_pb2
from internal.manifests.quantity import format_cpu
from katcall import output
from katcall.client import Client
from katcall.session import connect

NODE_CONDITION = kat_pb2.NodeStatus.Condition.Name


def _node_rows(nodes: list[kat_pb2.Node], wide: bool) -> str:
    now = time.time()
    headers = ["NAME", "STATUS", "ROLES", "ADDRESS", "SUBNET", "LAST-HEARTBEAT"]
    if wide:
        headers += ["VERSION", "CPU", "MEMORY", "LABELS", "TAINTS"]
    rows = []
    for n in nodes:
        st = n.status
        status = NODE_CONDITION(st.condition).removeprefix("CONDITION_")
        if n.spec.unschedulable:
            status += ",SchedulingDisabled"
        roles = [r for r, on in (("leader", st.leader), ("etcd", st.etcd_member)) if on] or [
            "agent"
        ]
        seen = (
            output.age(now - st.last_heartbeat.seconds) + " ago"
            if st.last_heartbeat.seconds
            else "never"
        )
        row = [n.metadata.name, status, ",".join(roles), st.advertise_address, st.subnet, seen]
        if wide:
            row += [
                st.agent_version or "<unknown>",
                format_cpu(st.allocatable.cpu_millis),
                output.approx_memory(st.allocatable.memory_bytes),
                ",".join(f"{k}={v}" for k, v in sorted(n.metadata.labels.items())) or "<none>",
                ",".join(
                    f"{t.key}={t.value}:{kat_pb2.Taint.Effect.Name(t.effect)}"
                    for t in n.spec.taints
                )
                or "<none>",
            ]
        rows.append(row)
    return output.table(headers, rows)


def _token_rows(items: list[kat_pb2.JoinToken], wide: bool) -> str:
    now = time.time()
    rows = []
    for t in items:
        left = t.expires.seconds + t.expires.nanos / 1e9 - now
        state = (
            "revoked"
            if t.revoked
            else ("expired" if left <= 0 else f"expires in {output.age(left)}")
        )
        uses = f"{t.uses}/{t.max_uses}" if t.max_uses else f"{t.uses}"
        rows.append([t.id, state, uses, t.description])
    return output.table(["ID", "STATE", "USES", "DESCRIPTION"], rows)


def _event_rows(items: list[kat_pb2.Event], wide: bool) -> str:
    now = time.time()
    rows = [
        [
            output.age(now - e.timestamp.seconds),
            kat_pb2.Event.Type.Name(e.type).title(),
            e.reason,
            f"{e.object_kind.lower()}/{e.object_name}",
            e.message,
        ]
        for e in items
    ]
    return output.table(["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"], rows)


def _namespace_rows(items: list[kat_pb2.Namespace], wide: bool) -> str:
    now = time.time()
    rows = [
        [n.metadata.name, output.age(now - n.metadata.creation_timestamp.seconds)] for n in items
    ]
    return output.table(["NAME", "AGE"], rows)


Lister = Callable[[Client, argparse.Namespace], list]
Tabler = Callable[[list, bool], str]

RESOURCES: dict[str, tuple[Lister, Tabler]] = {
    "nodes": (lambda c, a: list(c.call("ListNodes", kat_pb2.ListRequest()).items), _node_rows),
    "tokens": (lambda c, a: list(c.call("ListTokens", kat_pb2.ListRequest()).items), _token_rows),
    "events": (
        lambda c, a: list(
            c.call("ListEvents", kat_pb2.ListEventsRequest(namespace=a.namespace)).items
        ),
        _event_rows,
    ),
    "namespaces": (
        lambda c, a: list(c.call("ListNamespaces", kat_pb2.ListRequest()).items),
        _namespace_rows,
    ),
}
ALIASES = {
    "node": "nodes",
    "no": "nodes",
    "token": "tokens",
    "event": "events",
    "ev": "events",
    "namespace": "namespaces",
    "ns": "namespaces",
}


def register_resource(name: str, lister: Lister, tabler: Tabler, *aliases: str) -> None:
    RESOURCES[name] = (lister, tabler)
    for a in aliases:
        ALIASES[a] = name


def _resource(name: str) -> str:
    resolved = ALIASES.get(name, name)
    if resolved not in RESOURCES:
        raise SystemExit(
            f"error: unknown resource type {name!r} (known: {', '.join(sorted(RESOURCES))})"
        )
    return resolved


Watcher = Callable[[argparse.Namespace], int]
WATCHERS: dict[str, Watcher] = {}


def register_watcher(resource: str, watcher: Watcher) -> None:
    """`katcall get RESOURCE -w` for a resource (its canonical name)."""
    WATCHERS[resource] = watcher


def cmd_get(args: argparse.Namespace) -> int:
    resource = _resource(args.resource)
    if getattr(args, "watch", False):
        if resource not in WATCHERS:
            raise SystemExit(f"error: --watch supports {', '.join(sorted(WATCHERS))}")
        return WATCHERS[resource](args)
    lister, tabler = RESOURCES[resource]
    with connect(args) as client:
        items = lister(client, args)
    if args.name:
        items = [
            i
            for i in items
            if getattr(getattr(i, "metadata", None), "name", getattr(i, "id", "")) == args.name
        ]
        if not items:
            raise SystemExit(f"error: {args.resource} {args.name!r} not found")
    if args.output in ("json", "yaml"):
        print(output.render(items, args.output))
    elif items:
        print(tabler(items, args.output == "wide"))
    else:
        print(f"No {args.resource} found.")
    return 0


Describer = Callable[[argparse.Namespace], int]
DESCRIBERS: dict[str, Describer] = {}


def register_describer(resource: str, describer: Describer) -> None:
    """`katcall describe RESOURCE NAME` for another resource (its canonical name)."""
    DESCRIBERS[resource] = describer


def cmd_describe(args: argparse.Namespace) -> int:
    resource = _resource(args.resource)
    if resource in DESCRIBERS:
        return DESCRIBERS[resource](args)
    if resource != "nodes":
        raise SystemExit(f"error: describe does not support {args.resource!r} yet")
    with connect(args) as client:
        node = client.call("GetNode", kat_pb2.NodeRequest(name=args.name))
        events = client.call(
            "ListEvents", kat_pb2.ListEventsRequest(object_name=args.name, limit=20)
        )
    print(output.render([node], "yaml", single=True))
    print("events:")
    print(_event_rows(list(events.items), False) if events.items else "  <none>")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("get", help="list resources (nodes, tokens, events, namespaces, ...)")
    p.add_argument("resource")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=["wide", "json", "yaml"], default="")
    p.add_argument("-n", "--namespace", default="")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    p.add_argument("-w", "--watch", action="store_true", help="print changes as they happen")
    p.add_argument("--since", default="", help="audit: only records newer than this (e.g. 1h)")
    p.set_defaults(func=cmd_get)
    d = sub.add_parser("describe", help="show one resource in detail, with its recent events")
    d.add_argument("resource")
    d.add_argument("name")
    d.add_argument("-n", "--namespace", default="")
    d.set_defaults(func=cmd_describe)
