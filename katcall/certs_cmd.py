"""`katcall get certificates`: the inventory of issued leaf certificates, with expiry."""

from __future__ import annotations

import argparse
import time
from typing import Any

from api.v1alpha1 import kat_pb2
from katcall import output
from katcall.client import Client
from katcall.get_cmd import Resource, register_resource


def _list(client: Client, args: argparse.Namespace, _sel: dict[str, str]) -> list[Any]:
    return list(client.list_certificates(kat_pb2.ListRequest()).items)


def _headers(wide: bool, _ns: bool) -> list[str]:
    cols = ["IDENTITY", "ROLE", "SERIAL", "NOT-AFTER", "LEFT"]
    return cols + (["ADDRESSES", "REASON"] if wide else [])


def _row(c: Any, wide: bool, _ns: bool) -> list[str]:
    left = c.not_after.seconds - time.time()
    row = [
        c.common_name,
        c.role,
        c.serial,
        c.not_after.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ"),
        output.age(left) if left > 0 else "expired",
    ]
    return row + ([",".join(c.ip_addresses) or "-", c.reason] if wide else [])


def register(sub: argparse._SubParsersAction) -> None:
    # `get certificates` is a resource of `katcall get`.
    register_resource(
        Resource(
            "certificates",
            "certificate",
            _list,
            _headers,
            _row,
            key=lambda c: c.serial,
            name_of=lambda c: c.serial,
        ),
        "certs",
        "certificate",
    )
