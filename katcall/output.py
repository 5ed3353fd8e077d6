"""Printing resources: tables for people, canonical JSON/YAML for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message


def to_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg)


def render(items: Sequence[Message], fmt: str, *, single: bool = False) -> str:
    doc: Any = to_dict(items[0]) if single else {"items": [to_dict(m) for m in items]}
    if fmt == "json":
        return json.dumps(doc, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False).rstrip()
    raise ValueError(f"unknown output format {fmt!r}")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [headers, *rows]
    ]
    return "\n".join(lines)


def age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def approx_memory(n: int) -> str:
    """Memory rounded for a table ("23.3Gi"); internal.manifests.quantity.format_memory is exact."""
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0", "")
    return str(n)
