"""`katcall describe token|event NAME`, and for any other listable kind without a describer
of its own (audit records, ingress, kinds added later) the fields of the one item named,
found in its listing."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import yaml

from api.v1alpha1 import kat_pb2
from katcall import get_cmd, output
from katcall.client import CallError, Client
from katcall.session import namespace


def _field(label: str, value: object) -> str:
    return f"{label + ':':<14}{value}"


def _when(ts: Any) -> str:
    if not ts.seconds:
        return "-"
    ago = time.time() - ts.seconds
    when = "ago" if ago >= 0 else "from now"
    return f"{ts.ToJsonString()} ({output.age(abs(ago))} {when})"


def _token_state(t: kat_pb2.JoinToken) -> str:
    if t.revoked:
        return "revoked"
    if t.expires.seconds and t.expires.seconds <= time.time():
        return "expired"
    if t.max_uses and t.uses >= t.max_uses:
        return "used up"
    return "valid"


def describe_token(t: kat_pb2.JoinToken) -> str:
    uses = f"{t.uses} of {t.max_uses}" if t.max_uses else f"{t.uses} (unlimited until expiry)"
    return "\n".join(
        [
            _field("ID", t.id),
            _field("State", _token_state(t)),
            _field("Description", t.description or "<none>"),
            _field("Scope", "worker and etcd member" if t.etcd_member else "worker"),
            _field("Uses", uses),
            _field("Created", _when(t.created)),
            _field("Expires", _when(t.expires)),
            _field("Secret", "not shown (only once, at creation); stored as its SHA-256"),
        ]
    )


def _describe_token(client: Client, args: argparse.Namespace) -> str:
    tokens = [t for t in client.list_tokens(kat_pb2.ListRequest()).items if t.id == args.name]
    if not tokens:
        raise CallError(f"token {args.name!r} not found (katcall get tokens lists them)")
    return describe_token(tokens[0])


def describe_event(e: kat_pb2.Event) -> str:
    obj = f"{e.object_kind} {e.namespace + '/' if e.namespace else ''}{e.object_name}"
    return "\n".join(
        [
            _field("ID", e.id),
            _field("Type", kat_pb2.Event.Type.Name(e.type)),
            _field("Reason", e.reason),
            _field("Object", obj),
            _field("Source", e.source or "-"),
            _field("Time", _when(e.timestamp)),
            _field("Message", e.message),
        ]
    )


def _describe_event(client: Client, args: argparse.Namespace) -> str:
    req = kat_pb2.ListEventsRequest(namespace=namespace(args))
    found = [e for e in client.list_events(req).items if e.id == args.name]
    if not found and namespace(args) != "*":  # ids are unique: look in every namespace
        req = kat_pb2.ListEventsRequest(namespace="*")
        found = [e for e in client.list_events(req).items if e.id == args.name]
    if not found:
        raise CallError(f"event {args.name!r} not found (katcall get events -A lists them)")
    return describe_event(found[0])


def describe_listed(client: Client, args: argparse.Namespace) -> str:
    """Any listable kind: its item NAME, every field (zero values too) as YAML."""
    res = get_cmd.resource(args.resource)
    items = [i for i in res.lister(client, args, {}) if res.name_of(i) == args.name]
    if not items:
        raise CallError(f"{res.kind} {args.name!r} not found (katcall get {res.name} lists them)")
    doc = output.to_dict(items[0])
    return f"{res.kind.capitalize()} {args.name}\n" + yaml.safe_dump(doc, sort_keys=False).rstrip()


DESCRIBERS: dict[str, Callable[[Client, argparse.Namespace], str]] = {
    "tokens": _describe_token,
    "events": _describe_event,
}
