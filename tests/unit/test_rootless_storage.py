"""Pure parts of rootless storage (kat_agent/node/podman/imagestore.py)."""

from __future__ import annotations

from pathlib import Path

from kat_agent.node.podman.imagestore import (
    VFS,
    RootlessDriver,
    SharedImageStore,
    choose_driver,
    existing_driver,
    kernel_has_rootless_overlay,
    storage_conf,
)


def test_driver_order() -> None:
    fuse = choose_driver(
        fuse_overlayfs="/usr/bin/fuse-overlayfs", dev_fuse=True, kernel_overlay=True
    )
    assert fuse == RootlessDriver("overlay", "/usr/bin/fuse-overlayfs", shared=True)
    assert fuse.label == "fuse-overlayfs"
    # No /dev/fuse or no fuse-overlayfs: the kernel's overlay, without the shared store.
    for kw in (
        {"fuse_overlayfs": None, "dev_fuse": True},
        {"fuse_overlayfs": "/x", "dev_fuse": False},
    ):
        native = choose_driver(kernel_overlay=True, **kw)  # type: ignore[arg-type]
        assert native == RootlessDriver("overlay") and not native.shared
        assert native.label == "overlay"
    assert choose_driver(fuse_overlayfs=None, dev_fuse=False, kernel_overlay=False) == VFS
    assert VFS.label == "vfs"


def test_kernel_versions() -> None:
    assert kernel_has_rootless_overlay("6.18.44-fc-v1045")
    assert kernel_has_rootless_overlay("5.11.0")
    assert not kernel_has_rootless_overlay("5.10.0-28-amd64")
    assert not kernel_has_rootless_overlay("4.19.0")
    assert not kernel_has_rootless_overlay("weird")


def test_storage_conf_shared_and_not() -> None:
    fuse = RootlessDriver("overlay", "/usr/bin/fuse-overlayfs", shared=True)
    text = storage_conf(fuse, Path("/h/g"), Path("/run/user/5/r"), Path("/var/lib/kat-images/t"))
    assert 'driver = "overlay"' in text
    assert 'graphroot = "/h/g"' in text and 'runroot = "/run/user/5/r"' in text
    assert 'additionalimagestores = ["/var/lib/kat-images/t"]' in text
    assert 'mount_program = "/usr/bin/fuse-overlayfs"' in text
    plain = storage_conf(VFS, Path("/h/g"), Path("/r"), Path("/var/lib/kat-images/t"))
    assert 'driver = "vfs"' in plain
    assert "additionalimagestores" not in plain and "mount_program" not in plain


def test_existing_driver(tmp_path: Path) -> None:
    assert existing_driver(tmp_path) is None
    (tmp_path / "overlay-images").mkdir()
    assert existing_driver(tmp_path) == "overlay"
    # Storage made by an older KAT (vfs; seen without a vfs-images directory): kept.
    (tmp_path / "vfs-containers").mkdir()
    assert existing_driver(tmp_path) == "vfs"


def test_store_per_tag_and_flags() -> None:
    a = SharedImageStore.for_tag("aaaa", "/usr/bin/fuse-overlayfs")
    b = SharedImageStore.for_tag("bbbb", "/usr/bin/fuse-overlayfs")
    assert a.path == Path("/var/lib/kat-images/aaaa") and a.path != b.path
    assert len(str(a.runroot)) <= 50  # Podman's runroot limit
    args = a.global_args()
    assert "overlay.force_mask=shared" in args
    assert "overlay.mount_program=/usr/bin/fuse-overlayfs" in args
