"""`katcall get audit [--since 1h] [-o wide|json]`: the leader's audit trail."""

from __future__ import annotations

import argparse
import time
from typing import Any

from api.v1alpha1 import kat_pb2
from katcall.client import Client
from katcall.get_cmd import Resource, register_resource
from katcall.token_cmd import parse_duration


def _list(client: Client, args: argparse.Namespace, _sel: dict[str, str]) -> list[Any]:
    req = kat_pb2.ListAuditRequest()
    if getattr(args, "since", ""):
        try:
            since = parse_duration(args.since)
        except argparse.ArgumentTypeError as exc:
            raise SystemExit(f"error: --since: {exc}") from None
        req.since.FromSeconds(int(time.time()) - since)
    return list(client.list_audit(req).items)


def _headers(wide: bool, _ns: bool) -> list[str]:
    return ["TIME", "ACTOR", "VERB", "OBJECT", "OUTCOME"] + (["METHOD", "MESSAGE"] if wide else [])


def _row(r: Any, wide: bool, _ns: bool) -> list[str]:
    row = [r.time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ"), r.actor, r.verb, r.object]
    row.append(r.outcome)
    return row + ([r.method, r.message] if wide else [])


def register(sub: argparse._SubParsersAction) -> None:
    # `get audit` is a resource of `katcall get` (its --since option is there too).
    register_resource(
        Resource(
            "audit", "audit", _list, _headers, _row, key=lambda r: r.id, name_of=lambda r: r.id
        )
    )
