"""`kat-agent uninstall --purge` in a network namespace this test made (as a dev-cluster
node would be): KAT's interfaces (overlay, kat0 bridge, instance veth) and its nftables
table go, other interfaces and tables stay; a workload user (this session's prefix)
goes with its home and subordinate ids; the data dir is purged."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kat_agent.node.podman.users import (
    ensure_workload_user,
    remove_workload_user,
    workload_username,
)
from tests.devcluster import REPO

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nft")),
    reason="needs root, ip and nft",
)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"katun-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def links(ns: str) -> set[str]:
    out = sh("ip", "-n", ns, "-o", "link", "show")
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_uninstall_purge_removes_what_kat_put_on_the_node(netns: str, tmp_path: Path) -> None:
    ns = netns
    sh("ip", "-n", ns, "link", "add", "kat0", "type", "bridge")
    sh("ip", "-n", ns, "link", "add", "kv0123456789a", "type", "veth", "peer", "kc0123456789a")
    # the overlay: a WireGuard device where the kernel has it, else (wireguard-go's tun
    # is not at hand here) a veth of its name, whose peer's name is not KAT's
    wg = subprocess.run(
        ["ip", "-n", ns, "link", "add", "katc0ffee00ab", "type", "wireguard"], capture_output=True
    )
    if wg.returncode != 0:
        sh("ip", "-n", ns, "link", "add", "katc0ffee00ab", "type", "veth", "peer", "wgpeer")
    sh("ip", "-n", ns, "link", "add", "eth9", "type", "veth", "peer", "eth9p")  # not KAT's
    sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "kat_guard")
    sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "someone_else")
    assert {"kat0", "kv0123456789a", "katc0ffee00ab", "eth9"} <= links(ns)

    wl_ns, wl = f"un{secrets.token_hex(2)}", "web"
    homes = tmp_path / "homes"
    user = ensure_workload_user(wl_ns, wl, home_base=homes)
    data = tmp_path / "data"
    (data / "pki").mkdir(parents=True)
    units = tmp_path / "units"
    units.mkdir()
    (units / "kat-agent.service").write_text("[Service]\nExecStart=/bin/true\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        # root's Podman: a private, empty storage (never the machine's own containers)
        "KAT_PODMAN_ROOT": str(tmp_path / "podman-root"),
        "KAT_PODMAN_RUNROOT": str(tmp_path / "podman-run"),
    }
    try:
        p = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "kat_agent.cli", "uninstall"]
            + ["--purge", "--data-dir", str(data), "--unit-dir", str(units)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        left = links(ns)
        assert not {"kat0", "kv0123456789a", "kc0123456789a", "katc0ffee00ab"} & left, left
        assert "eth9" in left and "lo" in left
        tables = sh("ip", "netns", "exec", ns, "nft", "list", "tables")
        assert "kat_guard" not in tables and "someone_else" in tables
        with pytest.raises(KeyError):
            pwd.getpwnam(user.username)
        assert not (homes / user.username).exists()
        for table in ("/etc/subuid", "/etc/subgid"):
            owners = {line.split(":")[0] for line in Path(table).read_text().splitlines()}
            assert user.username not in owners
        assert not data.exists() and not (units / "kat-agent.service").exists()
        for what in ("interface kat0", "nftables table inet kat_guard", f"{wl_ns}/{wl}"):
            assert what in p.stdout, p.stdout
    finally:
        remove_workload_user(wl_ns, wl)
        assert workload_username(wl_ns, wl) == user.username
