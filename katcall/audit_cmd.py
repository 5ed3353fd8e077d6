"""`katcall get audit [--since 1h] [-o json]`: the leader's audit trail."""

from __future__ import annotations

import argparse
import time

from api.v1alpha1 import kat_pb2
from katcall import output
from katcall.client import Client
from katcall.get_cmd import register_resource
from katcall.token_cmd import parse_duration


def _list(client: Client, args: argparse.Namespace) -> list[kat_pb2.AuditRecord]:
    req = kat_pb2.ListAuditRequest()
    if getattr(args, "since", ""):
        try:
            since = parse_duration(args.since)
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(f"error: --since: {exc}") from None
        req.since.FromSeconds(int(time.time()) - since)
    return list(client.call("ListAudit", req).items)


def _rows(items: list[kat_pb2.AuditRecord], wide: bool) -> str:
    headers = ["TIME", "ACTOR", "VERB", "OBJECT", "OUTCOME"] + (
        ["METHOD", "MESSAGE"] if wide else []
    )
    rows = []
    for r in items:
        when = r.time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
        row = [when, r.actor, r.verb, r.object, r.outcome]
        if wide:
            row += [r.method, r.message]
        rows.append(row)
    return output.table(headers, rows)


def register(sub: argparse._SubParsersAction) -> None:
    # `get audit` is a resource of `katcall get` (its --since option is there too).
    register_resource("audit", _list, _rows)
