"""What an apply changes, for people: `workload.kat: spec.replicas: 3 -> 5`.

Pure: compares two bundles field by field in their YAML view (camelCase names, enum names,
defaults omitted), so the paths read like the files the user wrote.
"""

from __future__ import annotations

import json
from typing import Any

from api.v1alpha1 import kat_pb2
from internal.manifests.problems import printable
from internal.manifests.resources import describe, to_dict

MAX_CHANGES = 50
_PARTS = (
    ("workload.kat", "workload"),
    ("VirtualLoadBalancer.kat", "virtual_load_balancer"),
    ("JobDefinition.kat", "job_definition"),
    ("BuildDefinition.kat", "build_definition"),
)
# Server-set fields are not part of what a user changes.
_IGNORED = ("metadata.uid", "metadata.generation", "metadata.resourceVersion", "status")
_IGNORED_PREFIXES = ("metadata.creationTimestamp", "status")


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        if not value and path:
            out[path] = {}
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list):
        if not value:
            out[path] = []
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = value


def _fields(msg: Any) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    _flatten(to_dict(msg), "", flat)
    return {
        k: v
        for k, v in flat.items()
        if k not in _IGNORED and not any(k.startswith(p) for p in _IGNORED_PREFIXES)
    }


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def bundle_changes(old: kat_pb2.Bundle | None, new: kat_pb2.Bundle) -> list[str]:
    """Human-readable changes from `old` (None: nothing stored yet) to `new`."""
    if old is None:
        return [f"create {describe(new)}"]
    lines: list[str] = []
    for file, field in _PARTS:
        had, has = old.HasField(field), new.HasField(field)
        if not had and not has:
            continue
        if not had:
            lines.append(f"{file}: added")
            continue
        if not has:
            lines.append(f"{file}: removed")
            continue
        before, after = _fields(getattr(old, field)), _fields(getattr(new, field))
        for path in sorted(set(before) | set(after)):
            a, b = before.get(path), after.get(path)
            if a == b:
                continue
            if path not in before:
                lines.append(f"{file}: {path}: set to {_show(b)}")
            elif path not in after:
                lines.append(f"{file}: {path}: removed (was {_show(a)})")
            else:
                lines.append(f"{file}: {path}: {_show(a)} -> {_show(b)}")
    if len(lines) > MAX_CHANGES:
        lines = lines[:MAX_CHANGES] + [f"... and {len(lines) - MAX_CHANGES} more changes"]
    return [printable(line) for line in lines]
