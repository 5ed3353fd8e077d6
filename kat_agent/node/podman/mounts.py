"""Volumes and host paths: where each volume of a container comes from on the host, and the
rules a host path must pass before it is bind-mounted (no I/O beyond the paths themselves).

- simpleClusterStorage is `<volume_base_path>/<namespace>/<workload>/<volume>`, created on
  demand (the last directory owned by `owner`, the workload user, when rootless).
- hostMount follows Kubernetes' hostPath types: DIRECTORY_OR_CREATE makes the directory (and
  its parents), DIRECTORY, FILE, SOCKET must exist and be one, FILE_OR_CREATE makes an empty
  file (its directory must exist); no ensureType only requires the path to exist.
- subPath is relative, without `..`, created as a directory when missing, and may not leave
  its volume (also not through a symlink).

Every refusal is a ContainerRuntimeError of kind BAD_MOUNT naming the volume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind

DEFAULT_VOLUME_BASE = Path("/var/lib/kat/volumes")


@dataclass(frozen=True)
class ClusterStorageVolume:
    """simpleClusterStorage: a directory per namespace, workload and volume."""


@dataclass(frozen=True)
class HostPathVolume:
    """hostMount; ensure_type is a HostMount.EnsureType name, "" for unspecified."""

    path: Path
    ensure_type: str = ""


VolumeSource = ClusterStorageVolume | HostPathVolume


@dataclass(frozen=True)
class MountSpec:
    volume: str
    mount_path: str
    sub_path: str = ""
    read_only: bool = False


class VolumePreparer:
    """Prepares the host side of a container's volumes. `owner` (uid, gid) is the workload
    user whose rootless Podman runs the container: directories KAT creates become theirs."""

    def __init__(
        self, volume_base_path: Path = DEFAULT_VOLUME_BASE, owner: tuple[int, int] | None = None
    ) -> None:
        self.volume_base_path = Path(volume_base_path)
        self.owner = owner

    def _chown(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner)

    def _mkdirs(self, path: Path, *, own_leaf: bool) -> None:
        """mkdir -p; the directories made are root's (0755), the last one `owner`'s."""
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        if own_leaf and path in missing:
            self._chown(path)

    def _host_path(self, name: str, vol: HostPathVolume) -> Path:
        path = vol.path
        what = f"hostMount volume {name!r} ({path})"
        if not path.is_absolute():
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what}: hostPath must be absolute")
        try:
            st: os.stat_result | None = path.stat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what}: {exc}") from exc
        t = vol.ensure_type

        def fail(problem: str) -> ContainerRuntimeError:
            return ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what}: {problem}")

        if t == "DIRECTORY_OR_CREATE":
            if st is None:
                self._mkdirs(path, own_leaf=True)
            elif not stat.S_ISDIR(st.st_mode):
                raise fail("exists and is not a directory")
        elif t == "DIRECTORY":
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise fail("is not an existing directory (ensureType DIRECTORY)")
        elif t == "FILE_OR_CREATE":
            if st is None:
                if not path.parent.is_dir():
                    raise fail(f"its directory {path.parent} does not exist")
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                    self._chown(path)
            elif not stat.S_ISREG(st.st_mode):
                raise fail("exists and is not a regular file")
        elif t == "FILE":
            if st is None or not stat.S_ISREG(st.st_mode):
                raise fail("is not an existing regular file (ensureType FILE)")
        elif t == "SOCKET":
            if st is None or not stat.S_ISSOCK(st.st_mode):
                raise fail("is not an existing unix socket (ensureType SOCKET)")
        elif t == "":
            if st is None:
                raise fail("does not exist")
        else:
            raise fail(f"unknown ensureType {t}")
        return path

    def _sub_path(self, base: Path, mount: MountSpec) -> Path:
        sub = mount.sub_path
        if not sub:
            return base
        what = f"volumeMount {mount.volume!r} at {mount.mount_path}: subPath {sub!r}"
        pure = PurePosixPath(sub)
        if pure.is_absolute() or ".." in pure.parts:
            raise ContainerRuntimeError(
                ErrorKind.BAD_MOUNT, f"{what} must be relative and without '..'"
            )
        target = base / pure
        if not target.exists() and not target.is_symlink() and base.is_dir():
            self._mkdirs(target, own_leaf=True)
        real, real_base = target.resolve(), base.resolve()
        if real != real_base and real_base not in real.parents:
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what} leads out of its volume")
        if not real.exists():
            raise ContainerRuntimeError(ErrorKind.BAD_MOUNT, f"{what} does not exist")
        return target

    def cluster_storage_path(self, namespace: str, workload: str, volume: str) -> Path:
        return self.volume_base_path / namespace / workload / volume

    def bind_mounts(
        self,
        namespace: str,
        workload: str,
        volumes: Mapping[str, VolumeSource],
        mounts: Sequence[MountSpec],
    ) -> list[dict[str, Any]]:
        """Podman bind mounts for `mounts`, after preparing (and checking) their volumes.
        Blocking (file system calls): run it in a thread."""
        sources: dict[str, Path] = {}
        for name, vol in volumes.items():
            if isinstance(vol, HostPathVolume):
                sources[name] = self._host_path(name, vol)
            else:
                path = self.cluster_storage_path(namespace, workload, name)
                self._mkdirs(path, own_leaf=True)
                sources[name] = path
        binds: list[dict[str, Any]] = []
        for m in mounts:
            if m.volume not in sources:
                raise ContainerRuntimeError(
                    ErrorKind.BAD_MOUNT, f"volumeMount {m.mount_path}: no volume named {m.volume!r}"
                )
            if not m.mount_path.startswith("/"):
                raise ContainerRuntimeError(
                    ErrorKind.BAD_MOUNT, f"volumeMount {m.volume!r}: mountPath must be absolute"
                )
            source = self._sub_path(sources[m.volume], m)
            binds.append(
                {
                    "type": "bind",
                    "source": str(source),
                    "destination": m.mount_path,
                    "options": ["rbind", "ro" if m.read_only else "rw"],
                }
            )
        return binds


def purge_workload_volumes(base: Path, namespace: str, workload: str) -> Path | None:
    """delete --purge-volumes: remove <base>/<namespace>/<workload> (every
    simpleClusterStorage volume of the workload) and the namespace's directory when it is
    empty; the path removed, None if there was none (or the names are not plain).
    Blocking."""
    names = (namespace, workload)
    if not all(names) or any(c in x for x in names for c in "/\0") or ".." in names:
        return None
    path = base / namespace / workload
    removed = None
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        removed = path
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the namespace's directory, when empty
    return removed
