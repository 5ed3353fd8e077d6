"""`katcall admin create|revoke|list`: one admin identity per person.

`create` makes the new admin's key here (it never leaves this machine), sends only a
CSR, and writes a katconfig (0600) for the cluster of the current context with the
certificate the leader signed: its subject names the person, and the audit trail
names them for every call made with it. With `--role monitoring` it writes a
directory for a Prometheus server instead (ca.crt, NAME.crt, NAME.key 0600): a
kat:monitoring certificate reads every node's /metrics and can call no API. `revoke`
ends every certificate of a name at once (also on connections already open); the name
can then be created again."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC
from pathlib import Path

from api.v1alpha1 import kat_pb2
from internal.security import clientconfig, pki
from katcall import output
from katcall.session import connect


def _write_monitoring_dir(
    out: Path, name: str, resp: kat_pb2.CreateAdminResponse, key: bytes
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    pki.write_certificate(out / "ca.crt", resp.ca_pem)
    pki.write_certificate(out / f"{name}.crt", resp.certificate_pem)
    pki.write_private_key(out / f"{name}.key", key)


def cmd_create(args: argparse.Namespace) -> int:
    monitoring = args.role == "monitoring"
    path = Path(args.file or (args.name if monitoring else f"{args.name}.katconfig"))
    if monitoring and path.exists() and not path.is_dir():
        print(f"error: {path} exists and is not a directory", file=sys.stderr)
        return 1
    if monitoring and (path / f"{args.name}.key").exists() and not args.force:
        print(f"error: {path / (args.name + '.key')} exists (use --force)", file=sys.stderr)
        return 1
    if not monitoring and path.exists() and not args.force:
        print(f"error: {path} exists (use --force to replace it)", file=sys.stderr)
        return 1
    key = pki.generate_private_key()
    mine = clientconfig.load(clientconfig.resolve_path(getattr(args, "katconfig", None)))
    ctx_name = mine.context(getattr(args, "context", None)).name
    with connect(args) as client:
        resp = client.create_admin(
            kat_pb2.CreateAdminRequest(name=args.name, csr_pem=pki.create_csr(key), role=args.role)
        )
    expires = resp.admin.not_after.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d")
    if monitoring:
        _write_monitoring_dir(path, args.name, resp, key)
        print(f"monitoring certificate {args.name} created (until {expires}): {path}/")
        print(f"  ca.crt, {args.name}.crt, {args.name}.key (0600): reads /metrics, nothing else")
        return 0
    cfg = clientconfig.ClientConfig()
    endpoints = list(resp.api_endpoints) or mine.context(ctx_name).endpoints
    cfg.upsert(clientconfig.Context(ctx_name, endpoints, resp.ca_pem, resp.certificate_pem, key))
    clientconfig.save(cfg, path)
    print(f"admin {args.name} created (certificate until {expires}); config written to {path}")
    print(f"hand it to {args.name} privately: it holds their key. Use: katcall --katconfig {path}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rec = client.revoke_admin(kat_pb2.AdminRequest(name=args.name))
    n = len(rec.certificate_sha256)
    print(f"admin {rec.name} revoked ({n} certificate{'s' if n != 1 else ''} refused from now on)")
    return 0


def _role(rec: kat_pb2.AdminRecord) -> str:
    return (rec.role or pki.ROLE_ADMIN).removeprefix("kat:")


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
            _role(i),
            _status(i),
            i.created_by,
            day(i.created),
            day(i.not_after),
            str(len(i.certificate_sha256)),
        ]
        for i in items
    ]
    print(
        output.table(["NAME", "ROLE", "STATUS", "CREATED-BY", "CREATED", "EXPIRES", "CERTS"], rows)
    )
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
        help="katconfig to write (default NAME.katconfig); with --role monitoring the "
        "directory for ca.crt, NAME.crt, NAME.key (default ./NAME)",
    )
    c.add_argument(
        "--role",
        choices=("admin", "monitoring"),
        default="admin",
        help="admin (default): a katconfig for a person; monitoring: a certificate that "
        "reads /metrics on every node and nothing else (for Prometheus)",
    )
    c.add_argument("--force", action="store_true", help="replace FILE if it exists")
    c.set_defaults(func=cmd_create)
    r = asub.add_parser("revoke", help="end every certificate of an admin, at once")
    r.add_argument("name")
    r.set_defaults(func=cmd_revoke)
    ls = asub.add_parser("list", help="list admins and whether they are revoked")
    ls.set_defaults(func=cmd_list)
