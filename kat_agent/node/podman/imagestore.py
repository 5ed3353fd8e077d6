"""Rootless storage: the storage driver of workload users' Podman, and the node's shared
read-only image store that they read (`additionalimagestores`), so that an image is stored
once per node and a new workload (a new user) copies nothing.

Why fuse-overlayfs for users reading the shared store, and not the kernel's overlay: the
store is written by root, so its files belong to host uids that no workload user's user
namespace maps. Kernel overlay in a user namespace shows them as `nobody`, and the
container's root cannot even create /etc/mtab (measured here: "creating /etc/mtab symlink:
permission denied"). The store is therefore written with `overlay.force_mask=shared`
(files 0755 on disk, their real owner and mode kept in an xattr) and read through
fuse-overlayfs, which presents the real owner and mode inside the container and does the
copy-ups as the user. The driver is still `overlay` (the layers are shared, not copied).
Choice, in order (`choose_driver`):
1. fuse-overlayfs and /dev/fuse present: overlay via fuse-overlayfs + the shared store;
2. kernel overlay usable unprivileged (5.11 or later): native overlay, one image copy per
   workload user (copied from root's storage, as before), none per container;
3. otherwise `vfs` (a full copy per container), logged as a warning.
A user whose storage already exists with `vfs` (made before this) keeps it (Podman cannot
switch the driver of existing storage); that is logged too.

The store lives at /var/lib/kat-images/<tag> (tag: the same per-agent hash as the users'
storage, so agents on one machine never share or clobber a store), root-owned: workload
users can read but not write it. Its metadata directories are opened o+rx after every
change (Podman writes them 0700/0600); the layer contents keep their forced 0755 mode.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from internal.host.files import write_atomic
from kat_agent.node.podman.errors import PodmanServiceError
from kat_agent.node.podman.service import PodmanStorage
from kat_agent.node.podman.users import RUNTIME_DIR_BASE, WorkloadUser

log = logging.getLogger(__name__)

SHARED_STORE_BASE = Path("/var/lib/kat-images")
STORE_RUN_BASE = Path("/run/kat-images")
DEV_FUSE = Path("/dev/fuse")
# Metadata of a store its readers need (lists of images and layers, their configs).
_METADATA_DIRS = ("overlay-images", "overlay-layers")
_LOAD_TIMEOUT = 600


@dataclass(frozen=True)
class RootlessDriver:
    """How workload users' Podman stores containers."""

    name: str  # "overlay" or "vfs" (Podman's driver name)
    mount_program: str | None = None  # fuse-overlayfs, or None for the kernel's overlay
    shared: bool = False  # reads the node's shared image store

    @property
    def label(self) -> str:
        """What is logged and printed: fuse-overlayfs, overlay or vfs."""
        return "fuse-overlayfs" if self.mount_program else self.name


VFS = RootlessDriver("vfs")


def kernel_has_rootless_overlay(release: str) -> bool:
    """Unprivileged overlay mounts in a user namespace: Linux 5.11 or later."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (5, 11)


def choose_driver(
    *, fuse_overlayfs: str | None, dev_fuse: bool, kernel_overlay: bool
) -> RootlessDriver:
    """The driver for workload users (see the module docstring for the order)."""
    if fuse_overlayfs and dev_fuse:
        return RootlessDriver("overlay", fuse_overlayfs, shared=True)
    if kernel_overlay:
        return RootlessDriver("overlay")
    return VFS


def detect_driver() -> RootlessDriver:
    """`choose_driver` with this machine's facts."""
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    return choose_driver(
        fuse_overlayfs=shutil.which("fuse-overlayfs"),
        dev_fuse=DEV_FUSE.exists(),
        kernel_overlay="overlay" in filesystems.split()
        and kernel_has_rootless_overlay(os.uname().release),
    )


def existing_driver(graphroot: Path) -> str | None:
    """The driver a user's existing storage was made with ("vfs"/"overlay"), or None.
    (Podman records it in its database too and refuses to start with another one.)"""
    for name in ("vfs", "overlay"):
        if any((graphroot / f"{name}{part}").is_dir() for part in ("", "-containers", "-images")):
            return name
    return None


def storage_conf(driver: RootlessDriver, graphroot: Path, runroot: Path, store: Path | None) -> str:
    """A user's storage.conf (CONTAINERS_STORAGE_CONF of its Podman service)."""
    lines = [
        "# written by kat-agent: workload user storage (kat_agent/node/podman/imagestore.py)",
        "[storage]",
        f'driver = "{driver.name}"',
        f'graphroot = "{graphroot}"',
        f'runroot = "{runroot}"',
        "[storage.options]",
    ]
    if store is not None and driver.shared:
        lines.append(f'additionalimagestores = ["{store}"]')
    if driver.mount_program:
        lines += ["[storage.options.overlay]", f'mount_program = "{driver.mount_program}"']
    return "\n".join(lines) + "\n"


def write_user_storage_conf(
    path: Path,
    user: WorkloadUser,
    storage: PodmanStorage,
    driver: RootlessDriver,
    store: SharedImageStore | None,
) -> RootlessDriver:
    """Write the user's storage.conf at `path` (this node's driver and shared store, or
    vfs for storage that already exists with vfs: Podman cannot switch it) and make its
    graph root and runroot; the driver it uses. Blocking."""
    graphroot = storage.root or user.home / ".local" / "share" / "containers" / "storage"
    runroot = storage.runroot or RUNTIME_DIR_BASE / str(user.uid) / "containers"
    if existing_driver(graphroot) == "vfs" and driver.name != "vfs":
        log.warning(
            "workload user %s keeps its existing vfs storage (%s): Podman cannot switch "
            "the driver of existing storage",
            user.username,
            graphroot,
        )
        driver = VFS
    for d in (graphroot, runroot, path.parent.parent, path.parent):
        if not d.is_dir():
            d.mkdir(mode=0o700, parents=True)
            os.chown(d, user.uid, user.gid)
    text = storage_conf(driver, graphroot, runroot, store.path if store else None)
    write_atomic(path, text.encode(), 0o644)
    return driver


def shared_store_for(
    driver: RootlessDriver, tag: str, base: Path = SHARED_STORE_BASE
) -> SharedImageStore | None:
    """The node's shared store (prepared) if `driver` reads one; logs the choice. Blocking."""
    if driver.shared and driver.mount_program:
        store = SharedImageStore.for_tag(tag, driver.mount_program, base)
        store.prepare()
        log.info(
            "rootless workload storage: overlay via %s, images shared from %s",
            driver.mount_program,
            store.path,
        )
        return store
    if driver.name == "vfs":
        log.warning(
            "rootless workload storage: vfs (a full image copy per container): neither "
            "fuse-overlayfs nor unprivileged kernel overlay is available on this node"
        )
    else:
        log.info(
            "rootless workload storage: kernel overlay, one image copy per workload user "
            "(install fuse-overlayfs to share one copy per node)"
        )
    return None


@dataclass(frozen=True)
class SharedImageStore:
    """Root's Podman storage that holds the node's images for workload users."""

    path: Path
    runroot: Path
    mount_program: str

    @classmethod
    def for_tag(
        cls, tag: str, mount_program: str, base: Path = SHARED_STORE_BASE
    ) -> SharedImageStore:
        return cls(base / tag, STORE_RUN_BASE / tag, mount_program)

    def global_args(self) -> list[str]:
        return [
            "--root",
            str(self.path),
            "--runroot",
            str(self.runroot),
            "--tmpdir",
            str(self.path / "tmp"),
            "--storage-driver",
            "overlay",
            "--storage-opt",
            f"overlay.mount_program={self.mount_program}",
            "--storage-opt",
            "overlay.force_mask=shared",
        ]

    def _podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *self.global_args(), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def prepare(self) -> None:
        """The store's directory, root-owned and readable (not writable) by everyone."""
        for d in (self.path.parent, self.path):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, 0, 0)
            d.chmod(0o755)
        self.runroot.mkdir(parents=True, exist_ok=True)
        self.runroot.chmod(0o700)
        if not (self.path / "overlay-images" / "images.json").exists():
            # Made now, before any reader starts: a reader that met no store at its
            # start does not see images added to it later.
            res = self._podman("images", "-q")
            if res.returncode != 0:
                raise PodmanServiceError(
                    f"cannot set up the shared image store {self.path}: {res.stderr.strip()}"
                )
        self.open_to_readers()

    def has(self, ref: str) -> bool:
        """Blocking."""
        if not (self.path / "overlay-images").is_dir():
            return False
        return self._podman("image", "exists", ref).returncode == 0

    def load(self, archive: Path, ref: str) -> None:
        """Load an archive (root's `podman save` of `ref`) and open it to readers.
        Blocking."""
        self.prepare()
        res = self._podman("load", "-q", "-i", str(archive), timeout=_LOAD_TIMEOUT)
        if res.returncode != 0:
            raise PodmanServiceError(
                f"loading {ref} into the shared image store {self.path} failed: "
                f"{(res.stderr or res.stdout).strip()}"
            )
        if not self.has(ref):
            # "Loaded image: NAME" (or "Loaded image(s): NAME,..."): tag it as `ref`.
            loaded = [
                n
                for line in res.stdout.splitlines()
                if line.startswith("Loaded image")
                for n in line.split(":", 1)[1].strip().split(",")
                if n
            ]
            if not loaded or self._podman("tag", loaded[0], ref).returncode != 0:
                raise PodmanServiceError(f"{ref} not in {self.path} after loading it")
        self.open_to_readers()
        log.info("image %s is in the shared image store %s", ref, self.path)

    def open_to_readers(self) -> None:
        """Podman writes the store's metadata 0700/0600; readers need o+rx / o+r."""
        for top in (self.path / "overlay", *(self.path / d for d in _METADATA_DIRS)):
            if not top.is_dir():
                continue
            _add_other_read(top)
            # overlay/: only the layer directories and their link/lower files, never
            # into diff/ (the image's own files, already forced to 0755).
            depth_limited = top.name == "overlay"
            for root, dirs, files in os.walk(top):
                rel_depth = len(Path(root).relative_to(top).parts)
                for name in (*dirs, *files):
                    _add_other_read(Path(root) / name)
                if depth_limited and rel_depth >= 1:
                    dirs.clear()

    def remove(self) -> None:
        """Delete the store (a dev cluster or test going away). Blocking."""
        if self.path.is_dir():
            self._podman("rmi", "-a", "-f")
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


def _add_other_read(p: Path) -> None:
    try:
        st = p.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    want = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
    if st.st_mode & want != want:
        p.chmod(stat.S_IMODE(st.st_mode) | want)
