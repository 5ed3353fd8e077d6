"""Printing resources: tables for people; JSON, YAML, names and JSONPath for scripts.

`-o json|yaml` shows every field, zero values included (`ready: false`,
`restartCount: 0`), as kubectl does, and 64-bit numbers as numbers. A named `get` prints the
object itself; a list prints `{"items": [...]}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

# Formats `-o` accepts; "jsonpath=EXPR" takes an expression.
FORMATS = ("wide", "json", "yaml", "name", "jsonpath=EXPR")


class OutputError(Exception):
    pass


def to_dict(msg: Message) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(
            msg, always_print_fields_with_no_presence=True, unquote_int64_if_possible=True
        )
    except TypeError:  # protobuf < 5.26 names it differently and always quotes int64
        return json_format.MessageToDict(msg, including_default_value_fields=True)  # type: ignore[call-arg]


def check_format(fmt: str, allowed: Sequence[str] = FORMATS) -> str:
    """`fmt` if it is one of `allowed` (a table is always allowed), else OutputError."""
    kind = "jsonpath=EXPR" if fmt.startswith("jsonpath=") else fmt
    if fmt and kind not in allowed:
        raise OutputError(f"unknown output format {fmt!r} (use {', '.join(allowed)})")
    if kind == "jsonpath=EXPR":
        parse_template(fmt.removeprefix("jsonpath="))
    return fmt


def object_name(msg: Message) -> str:
    meta = getattr(msg, "metadata", None)
    if meta is not None:
        return meta.name
    return str(getattr(msg, "id", "") or getattr(msg, "name", ""))


def render(items: Sequence[Message], fmt: str, *, single: bool = False, kind: str = "") -> str:
    """`items` in a machine format; `single` prints the one object instead of a list."""
    if fmt == "name":
        return "\n".join(f"{kind}/{object_name(m)}" if kind else object_name(m) for m in items)
    doc: Any = to_dict(items[0]) if single else {"items": [to_dict(m) for m in items]}
    if fmt == "json":
        return json.dumps(doc, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(doc, sort_keys=False).rstrip()
    if fmt.startswith("jsonpath="):
        return jsonpath(fmt.removeprefix("jsonpath="), doc)
    raise OutputError(f"unknown output format {fmt!r}")


# ------------------------------------------------------------------ kubectl-style JSONPath

_TOKEN = re.compile(r"\{([^{}]*)\}")


def parse_template(template: str) -> list[tuple[str, str]]:
    """Split `{.a.b}literal{range .items[*]}...{end}` into (kind, text) parts:
    kind is "text", "expr", "range" or "end". Raises OutputError on a bad expression."""
    from jsonpath_ng import parse as jp_parse  # imported lazily: only scripts need it

    parts: list[tuple[str, str]] = []
    pos = 0
    depth = 0
    for m in _TOKEN.finditer(template):
        if m.start() > pos:
            parts.append(("text", template[pos : m.start()]))
        body = m[1].strip()
        if body == "end":
            depth -= 1
            parts.append(("end", ""))
        elif body.startswith("range "):
            depth += 1
            parts.append(("range", body.removeprefix("range ").strip()))
        elif body.startswith('"') and body.endswith('"') and len(body) >= 2:
            try:
                parts.append(("text", json.loads(body, strict=False)))
            except ValueError:
                raise OutputError(f"bad jsonpath literal {m[0]!r}") from None
        else:
            parts.append(("expr", body))
        if parts[-1][0] in ("expr", "range"):
            try:
                jp_parse(_dollar(parts[-1][1]))
            except Exception as exc:  # jsonpath_ng raises bare Exceptions on syntax errors
                raise OutputError(f"bad jsonpath {m[0]!r}: {exc}") from None
        if depth < 0:
            raise OutputError("bad jsonpath: {end} without {range}")
        pos = m.end()
    if pos < len(template):
        parts.append(("text", template[pos:]))
    if depth:
        raise OutputError("bad jsonpath: {range} without {end}")
    if not any(k != "text" for k, _ in parts) and template.strip():
        parts = [("expr", template.strip())]  # `-o jsonpath=.metadata.name` without braces
    return parts


def _dollar(expr: str) -> str:
    expr = expr.strip()
    return "$" + expr if expr.startswith((".", "[")) else ("$" if expr in ("", "$") else expr)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


def jsonpath(template: str, doc: Any) -> str:
    from jsonpath_ng import parse as jp_parse

    parts = parse_template(template)

    def run(parts: list[tuple[str, str]], data: Any) -> str:
        out: list[str] = []
        i = 0
        while i < len(parts):
            kind, text = parts[i]
            if kind == "text":
                out.append(text)
            elif kind == "expr":
                found = [m.value for m in jp_parse(_dollar(text)).find(data)]
                out.append(" ".join(_scalar(v) for v in found))
            elif kind == "range":
                depth, j = 1, i + 1
                while depth:
                    depth += {"range": 1, "end": -1}.get(parts[j][0], 0)
                    j += 1
                body = parts[i + 1 : j - 1]
                for m in jp_parse(_dollar(text)).find(data):
                    out.append(run(body, m.value))
                i = j - 1
            i += 1
        return "".join(out)

    return run(parts, doc)


# ------------------------------------------------------------------ tables


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
