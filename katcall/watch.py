"""`katcall get RESOURCE -w`: the table once, then a row whenever an item's row changes.

The header and the first rows are printed together, so the header has exactly the
columns of every later row (NAMESPACE only with -A); later rows are padded to the
same widths. A row is printed only when its text differs from the one last printed for
that item. Resources with a watch RPC (workloads, instances, events) follow it; the
others (nodes, namespaces, tokens) are listed again every POLL_SECONDS.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from katcall.client import Client

if TYPE_CHECKING:
    from katcall.get_cmd import Resource

POLL_SECONDS = 2.0
VOLATILE_COLUMNS = ("AGE", "LAST-HEARTBEAT")


class RowPrinter:
    """Rows aligned to the widths of the first table; each key's row printed on change."""

    def __init__(self, headers: Sequence[str]) -> None:
        self.widths = [len(h) for h in headers]
        self.headers = list(headers)
        # Columns that change with the clock alone; a row whose other cells are the same
        # is not printed again.
        self.volatile = {i for i, h in enumerate(headers) if h in VOLATILE_COLUMNS}
        self.shown: dict[str, tuple[str, ...]] = {}

    def line(self, cells: Sequence[str]) -> str:
        return "   ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=False)).rstrip()

    def start(self, rows: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
        for _, cells in rows:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        out = [self.line(self.headers)]
        for key, cells in rows:
            out.append(self.show(key, cells) or "")
        return [o for o in out if o]

    def show(self, key: str, cells: Sequence[str]) -> str | None:
        """The line to print for `key`'s row, or None when it is unchanged."""
        stable = tuple(c for i, c in enumerate(cells) if i not in self.volatile)
        if self.shown.get(key) == stable:
            return None
        self.shown[key] = stable
        return self.line(cells)


def _poll(
    client: Client, args: argparse.Namespace, res: Resource, sel: dict[str, str]
) -> Iterator[Any]:
    while True:
        time.sleep(POLL_SECONDS)
        yield from res.lister(client, args, sel)


def run(
    client: Client,
    args: argparse.Namespace,
    res: Resource,
    items: list[Any],
    sel: dict[str, str],
    *,
    wide: bool,
    with_ns: bool,
) -> int:
    printer = RowPrinter(res.headers(wide, with_ns))

    def wanted(item: Any) -> bool:
        return not args.name or res.name_of(item) == args.name

    first = [(res.key(i), res.row(i, wide, with_ns)) for i in items if wanted(i)]
    for line in printer.start(first):
        print(line)
    sys.stdout.flush()
    if res.watcher is not None:
        changes = res.watcher(client, args, sel)
    else:
        changes = _poll(client, args, res, sel)
    try:
        for item in changes:
            if wanted(item):
                line = printer.show(res.key(item), res.row(item, wide, with_ns))
                if line is not None:
                    print(line, flush=True)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
            return 0
        print(f"error: {err.details() or err.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    return 0
