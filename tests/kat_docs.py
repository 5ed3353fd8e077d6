"""Shared builders for resource tests: base documents and a path-based editor."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from internal.manifests import resources

API = "kat.dws.rip/v1alpha1"
DELETE = object()

WORKLOAD: dict[str, Any] = {
    "apiVersion": API,
    "kind": "Workload",
    "metadata": {"name": "web"},
    "spec": {
        "type": "SERVICE",
        "source": {"image": "localhost/busybox:latest"},
        "container": {"command": ["httpd", "-f", "-p", "8080"]},
    },
}
VLB: dict[str, Any] = {
    "apiVersion": API,
    "kind": "VirtualLoadBalancer",
    "metadata": {"name": "web"},
    "spec": {"ports": [{"name": "http", "containerPort": 8080}]},
}
JOB: dict[str, Any] = {
    "apiVersion": API,
    "kind": "JobDefinition",
    "metadata": {"name": "web"},
    "spec": {"schedule": "*/5 * * * *"},
}
BUILD: dict[str, Any] = {
    "apiVersion": API,
    "kind": "BuildDefinition",
    "metadata": {"name": "web"},
    "spec": {"dockerfilePath": "Dockerfile"},
}
NAMESPACE: dict[str, Any] = {"apiVersion": API, "kind": "Namespace", "metadata": {"name": "team-a"}}
CLUSTER: dict[str, Any] = {
    "apiVersion": API,
    "kind": "ClusterConfiguration",
    "metadata": {"name": "lab"},
    "spec": {},
}
JOB_WORKLOAD_EDITS = {"spec.type": "JOB"}
GIT_WORKLOAD_EDITS = {"spec.source": {"git": {"repository": "https://example.com/r.git"}}}

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def edit(doc: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of doc with "a.b[0].c" paths set (or removed with DELETE)."""
    out = copy.deepcopy(doc)
    for path, value in edits.items():
        steps: list[str | int] = [
            int(m[2]) if m[2] is not None else m[1] for m in _STEP.finditer(path)
        ]
        node: Any = out
        for step in steps[:-1]:
            if isinstance(step, str) and step not in node:
                node[step] = {}
            node = node[step]
        if value is DELETE:
            del node[steps[-1]]
        else:
            node[steps[-1]] = copy.deepcopy(value)
    return out


def dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False).encode()


def files_for(file: str, edits: dict[str, Any]) -> dict[str, bytes]:
    """A bundle exercising `file` with the given edits (plus the workload it needs)."""
    wl_edits: dict[str, Any] = {}
    base = {
        "workload.kat": WORKLOAD,
        "VirtualLoadBalancer.kat": VLB,
        "JobDefinition.kat": JOB,
        "BuildDefinition.kat": BUILD,
    }[file]
    if file == "JobDefinition.kat":
        wl_edits = JOB_WORKLOAD_EDITS
    elif file == "BuildDefinition.kat":
        wl_edits = GIT_WORKLOAD_EDITS
    files = {"workload.kat": dump(edit(WORKLOAD, wl_edits))}
    files[file] = dump(edit(base, edits) if file != "workload.kat" else edit(WORKLOAD, edits))
    return files


def problems_of(files: dict[str, bytes]) -> list[str]:
    try:
        resources.load_bundle_files(files)
    except resources.ValidationError as e:
        return [str(p) for p in e.problems]
    return []
