"""`katcall admin create|revoke|list`: one admin identity per person.

`create` makes the new admin's key here (it never leaves this machine), sends only a
CSR, and writes a katconfig (0600) for the cluster of the current context with the
certificate the leader signed: its subject names the person, and the audit trail
names them for every call made with it. `revoke` ends every certificate of a name at
once (also on connections already open); the name can then be created again."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC
from pathlib import Path

from api.v1alpha1 import kat_pb2
from internal.security import clientconfig, pki
from katcall import output
from katcall.session import connect


def cmd_create(args: argparse.Namespace) -> int:
    path = Path(args.file or f"{args.name}.katconfig")
    if path.exists() and not args.force:
        print(f"error: {path} exists (use --force to replace it)", file=sys.stderr)
        return 1
    key = pki.generate_private_key()
    mine = clientconfig.load(clientconfig.resolve_path(getattr(args, "katconfig", None)))
    ctx_name = mine.context(getattr(args, "context", None)).name
    with connect(args) as client:
        resp = client.create_admin(
            kat_pb2.CreateAdminRequest(name=args.name, csr_pem=pki.create_csr(key))
        )
    cfg = clientconfig.ClientConfig()
    endpoints = list(resp.api_endpoints) or mine.context(ctx_name).endpoints
    cfg.upsert(clientconfig.Context(ctx_name, endpoints, resp.ca_pem, resp.certificate_pem, key))
    clientconfig.save(cfg, path)
    expires = resp.admin.not_after.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d")
    print(f"admin {args.name} created (certificate until {expires}); config written to {path}")
    print(f"hand it to {args.name} privately: it holds their key. Use: katcall --katconfig {path}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rec = client.revoke_admin(kat_pb2.AdminRequest(name=args.name))
    n = len(rec.certificate_sha256)
    print(f"admin {rec.name} revoked ({n} certificate{'s' if n != 1 else ''} refused from now on)")
    return 0


def _status(rec: kat_pb2.AdminRecord) -> str:
    if rec.revoked:
        return f"revoked by {rec.revoked_by or '?'}"
    return "active"


def cmd_list(args: argparse.Namespace) -> int:
    fmt = output.check_format(args.output or "", ("json", "yaml", "name", "jsonpath=EXPR"))
    with connect(args) as client:
        items = list(client.list_admins(kat_pb2.ListRequest()).items)
    if fmt:
        print(output.render(items, fmt, kind="admin"))
        return 0

    def day(ts: object) -> str:
        return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M") if ts.seconds else ""  # type: ignore[attr-defined]

    rows = [
        [
            i.name,
            _status(i),
            i.created_by,
            day(i.created),
            day(i.not_after),
            str(len(i.certificate_sha256)),
        ]
        for i in items
    ]
    print(output.table(["NAME", "STATUS", "CREATED-BY", "CREATED", "EXPIRES", "CERTS"], rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="create, revoke and list per-person admin identities")
    asub = p.add_subparsers(dest="admin_cmd", required=True)
    c = asub.add_parser("create", help="issue an admin config for a person (key made here)")
    c.add_argument("name", help="the person, e.g. alice (named in the audit trail)")
    c.add_argument(
        "-o",
        "--output",
        dest="file",
        metavar="FILE",
        help="katconfig to write (default NAME.katconfig)",
    )
    c.add_argument("--force", action="store_true", help="replace FILE if it exists")
    c.set_defaults(func=cmd_create)
    r = asub.add_parser("revoke", help="end every certificate of an admin, at once")
    r.add_argument("name")
    r.set_defaults(func=cmd_revoke)
    ls = asub.add_parser("list", help="list admins and whether they are revoked")
    ls.set_defaults(func=cmd_list)
