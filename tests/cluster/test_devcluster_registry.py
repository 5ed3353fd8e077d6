"""scripts/dev-cluster's image registry: `up` (net-only here: no agents) runs Debian's
docker-registry on the bridge, pushes the example image into it and writes a
registries.conf; a node, with its own empty Podman storage and the environment the
agents get (`dev-cluster exec`), pulls registry.kat.local/busybox:latest from it and runs
it. `down` stops the registry and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

try:
    from devcluster import NETNS_DIR, DevCluster, unavailable_reason
except ImportError:  # tests/ imported as a package
    from tests.devcluster import NETNS_DIR, DevCluster, unavailable_reason

IMAGE = "registry.kat.local/busybox:latest"
HOST_NAMES = (IMAGE, "localhost/busybox:latest")
_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


def _why_not() -> str | None:
    why = unavailable_reason()
    if why:
        return why
    for tool in ("docker-registry", "podman"):
        if not shutil.which(tool, path=_PATH):
            return f"`{tool}` not found (run scripts/setup.sh)"
    have = any(
        subprocess.run(["podman", "image", "exists", n], capture_output=True).returncode == 0
        for n in HOST_NAMES
    )
    if not have and not os.path.exists("/bin/busybox"):
        return "no example image on this host and no busybox-static to build it from"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")

# In the node's namespace, with exactly the storage flags and environment an agent of
# that node gives its Podman (PodmanStorage.from_env reads the same KAT_PODMAN_*).
PODMAN = (
    'podman --root "$KAT_PODMAN_ROOT" --runroot "$KAT_PODMAN_RUNROOT" '
    '--tmpdir "$KAT_PODMAN_TMPDIR" --network-config-dir "$KAT_PODMAN_NETWORK_CONFIG_DIR"'
)


def _node_sh(c: DevCluster, node: str, script: str) -> subprocess.CompletedProcess:
    return c.script("exec", "--dir", str(c.dir), node, "--", "sh", "-c", script, check=False)


def _http(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as r:
        return r.status, r.read()


def _listening(addr: str) -> bool:
    """Whether a socket of this host listens on addr (from /proc/net/tcp: connecting is
    no test, the sandbox may answer connections to addresses that are gone)."""
    host, port = addr.rsplit(":", 1)
    raw = int.from_bytes(socket.inet_aton(host), sys.byteorder)  # as the kernel prints it
    want = f"{raw:08X}:{int(port):04X}"
    for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = ln.split()
        if f[1] == want and f[3] == "0A":
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_nodes_pull_the_example_image_from_the_cluster_registry(tmp_path):
    c = DevCluster(2, tmp_path / "dc", net_only=True)
    try:
        c.up()
        st = c.state()
        reg = st["registry"]
        addr = reg["address"]
        assert addr == f"{st['bridge_address']}:5000"
        assert _alive(reg["pid"]) and _listening(addr)
        assert Path(reg["storage"]).is_dir() and Path(reg["storage"]).is_relative_to(c.dir)

        # The image is in the registry (pushed from the host's storage).
        status, body = _http(f"http://{addr}/v2/_catalog")
        assert status == 200 and b'"busybox"' in body
        assert _http(f"http://{addr}/v2/busybox/tags/list")[1].count(b"latest") == 1

        # registries.conf maps the example registry to the bridge, plain HTTP, and every
        # user can read it (rootless workload users' Podman reads it too).
        conf = Path(reg["registries_conf"])
        text = conf.read_text()
        assert 'prefix = "registry.kat.local"' in text
        assert f'location = "{addr}"' in text and "insecure = true" in text
        assert stat.S_IMODE(conf.stat().st_mode) & 0o004
        assert all(os.stat(p).st_mode & 0o001 for p in conf.parents)

        # The agents' environment (`exec` uses the same) points at it.
        env = _node_sh(c, "node1", 'echo "conf=$CONTAINERS_REGISTRIES_CONF"').stdout
        assert f"conf={conf}" in env

        # Node 1's storage starts empty: it pulls, from the bridge, and runs the image.
        p = _node_sh(c, "node1", f"{PODMAN} image exists {IMAGE}")
        assert p.returncode == 1, p.stdout
        p = _node_sh(c, "node1", f"{PODMAN} pull -q {IMAGE}")
        assert p.returncode == 0, p.stdout
        p = _node_sh(c, "node1", f"{PODMAN} run --rm {IMAGE} echo hi")
        assert p.returncode == 0 and p.stdout.splitlines()[-1] == "hi", p.stdout
        log = Path(reg["log"]).read_text()
        node1 = c.address("node1")
        assert any(
            ln.startswith(f"{node1} ") and "GET /v2/busybox/manifests/latest" in ln
            for ln in log.splitlines()
        ), log[-2000:]
        # Node 2 has its own storage: nothing there until it pulls too.
        assert _node_sh(c, "node2", f"{PODMAN} image exists {IMAGE}").returncode == 1

        # Pushing by address works from a node too (e.g. a build cache).
        p = _node_sh(c, "node1", f"{PODMAN} push -q {IMAGE} {addr}/kat/cache-test:1 && echo pushed")
        assert p.returncode == 0 and "pushed" in p.stdout, p.stdout
        assert b"cache-test" in _http(f"http://{addr}/v2/_catalog")[1]

        pid = reg["pid"]
        c.down()
        assert not _alive(pid)
        assert not _listening(addr)
        assert not conf.exists()
        assert not c.dir.exists()
        assert not any(n.startswith(f"{c.name}-") for n in os.listdir(NETNS_DIR))
        assert not any(i.startswith(c.name) for i in os.listdir("/sys/class/net"))
    finally:
        c.down()


def test_no_images_means_no_registry(tmp_path):
    with DevCluster(1, tmp_path / "dc", net_only=True, extra_up_args=["--no-images"]) as c:
        st = c.state()
        assert "registry" not in st
        assert not (c.dir / "registry").exists()
        assert not _listening(f"{st['bridge_address']}:5000")
        out = _node_sh(c, "node1", 'echo "conf=${CONTAINERS_REGISTRIES_CONF:-none}"').stdout
        assert "conf=none" in out
