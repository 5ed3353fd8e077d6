"""`katcall ingress cert set HOST --cert FILE --key FILE`, `... list`, `... remove HOST`:
the HTTPS certificates ingress nodes serve for `tls: true` rules. The key is sent once
and never shown again: listings carry no key. A tls host without one is served with a
certificate from the cluster CA (listed with source `cluster-ca` once issued)."""

from __future__ import annotations

import argparse
from pathlib import Path

from api.v1alpha1 import kat_pb2
from katcall import output
from katcall.session import connect

MAX_FILE_BYTES = 64 * 1024  # the leader refuses more anyway; do not read a huge file


def _read(path: str, what: str) -> bytes:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise SystemExit(f"error: {what} file {path} is larger than {MAX_FILE_BYTES} bytes")
        return p.read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: cannot read {what} file {path}: {exc.strerror}") from None


def _row(c: kat_pb2.IngressCertificate) -> list[str]:
    until = c.not_after.ToDatetime().strftime("%Y-%m-%d %H:%M") if c.HasField("not_after") else ""
    return [c.host, c.source, until, ",".join(c.dns_names), c.sha256[:16]]


def cmd_set(args: argparse.Namespace) -> int:
    request = kat_pb2.IngressCertificateRequest(
        host=args.host, cert_pem=_read(args.cert, "certificate"), key_pem=_read(args.key, "key")
    )
    with connect(args) as client:
        got = client.set_ingress_certificate(request)
    print(f"ingress certificate for {got.host} set (sha256 {got.sha256[:16]}...)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        items = list(client.list_ingress_certificates(kat_pb2.ListRequest()).items)
    if args.output and args.output != "wide":
        print(output.render(items, args.output, kind="ingresscertificate"))
        return 0
    headers = ["HOST", "SOURCE", "NOT-AFTER", "DNS-NAMES", "SHA256"]
    print(output.table(headers, [_row(c) for c in items]) if items else "No certificates.")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.remove_ingress_certificate(kat_pb2.IngressCertificateRequest(host=args.host))
    print(f"ingress certificate for {args.host} removed")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingress", help="HTTPS certificates of ingress hosts (ingress cert ...)")
    kinds = p.add_subparsers(dest="ingress_kind", required=True)
    cert = kinds.add_parser("cert", help="set, list or remove ingress certificates")
    verbs = cert.add_subparsers(dest="cert_verb", required=True)
    s = verbs.add_parser("set", help="serve this certificate (PEM chain) and key for HOST")
    s.add_argument("host")
    s.add_argument("--cert", required=True, metavar="FILE", help="PEM certificate (+ chain)")
    s.add_argument("--key", required=True, metavar="FILE", help="PEM private key (unencrypted)")
    s.set_defaults(func=cmd_set)
    ls = verbs.add_parser("list", help="list certificates (never their keys)")
    ls.set_defaults(func=cmd_list)
    rm = verbs.add_parser("remove", help="stop serving the stored certificate for HOST")
    rm.add_argument("host")
    rm.set_defaults(func=cmd_remove)
