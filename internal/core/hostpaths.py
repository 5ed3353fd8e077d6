"""Which host paths a hostMount may use (pure: paths in, a problem out).

A hostMount is refused unless its path, normalised (and, on the node, with its
symlinks resolved), lies under one of cluster.kat's `hostMountAllowedPaths`
prefixes; that list is empty by default, so hostMount is off until an operator
names what workloads may see. Some paths are never allowed, whatever the list
says: `/`, the data dir and the system directories below, nor any path that
holds one of them (mounting `/var` would expose `/var/lib/kat`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from api.v1alpha1 import kat_pb2
from internal.manifests.problems import Problem

NEVER = ("/etc", "/proc", "/sys", "/dev", "/boot", "/root")
DEFAULT_DATA_DIR = "/var/lib/kat"


def normalise(path: str) -> str:
    """Lexically normal absolute path: `/.`, `//etc/` and `/a/../etc` become `/` and `/etc`."""
    p = posixpath.normpath("/" + path.lstrip("/")) if path.startswith("/") else path
    return "/" + p.lstrip("/") if p.startswith("/") else p


def under(path: str, prefix: str) -> bool:
    """Is `path` `prefix` or inside it (both normalised)?"""
    return prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _never(path: str, data_dir: str) -> str:
    if path == "/":
        return "/ is never allowed"
    for bad in (*NEVER, normalise(data_dir)):
        if under(path, bad) or under(bad, path):
            return f"{path} is or holds {bad}, which no workload may mount"
    return ""


def allowed_prefix_problem(prefix: str, data_dir: str = DEFAULT_DATA_DIR) -> str:
    """What is wrong with a `hostMountAllowedPaths` entry ("" if nothing)."""
    if not prefix.startswith("/"):
        return f'"{prefix}" must be an absolute path'
    if "\0" in prefix:
        return "must not contain NUL"
    return _never(normalise(prefix), data_dir)


def host_mount_problem(path: str, allowed: Sequence[str], data_dir: str = DEFAULT_DATA_DIR) -> str:
    """Why a hostMount of `path` is refused ("" if it is allowed)."""
    if not path.startswith("/") or "\0" in path:
        return f'"{path}" must be an absolute path'
    p = normalise(path)
    problem = _never(p, data_dir)
    if problem:
        return problem
    prefixes = [normalise(a) for a in allowed if not allowed_prefix_problem(a, data_dir)]
    if not any(under(p, a) for a in prefixes):
        if not prefixes:
            return (
                f"{p}: hostMount is off in this cluster (cluster.kat's hostMountAllowedPaths "
                "is empty)"
            )
        return (
            f"{p} is not under any of cluster.kat's hostMountAllowedPaths ({', '.join(prefixes)})"
        )
    return ""


def workload_problems(
    spec: kat_pb2.WorkloadSpec, allowed: Sequence[str], file: str = "workload.kat"
) -> list[Problem]:
    """The leader's check at apply time (lexical: the node also resolves symlinks)."""
    out = []
    for i, vol in enumerate(spec.volumes):
        if vol.WhichOneof("source") == "host_mount":
            problem = host_mount_problem(vol.host_mount.host_path, allowed)
            if problem:
                out.append(Problem(file, f"spec.volumes[{i}].hostMount.hostPath", problem))
    return out
