"""Test helper around scripts/dev-cluster: a real multi-node KAT on this machine.

    from devcluster import DevCluster, unavailable_reason

    pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                    reason=unavailable_reason() or "")

    def test_something(tmp_path):
        with DevCluster(3, tmp_path / "cluster") as c:     # up() ... down(), always
            nodes = c.nodes_json()                         # `katcall get nodes -o json` items
            c.katcall("apply", "-f", "examples/web", check=True)
            c.kill("node2"); c.start("node2")              # agent crash and restart

Each DevCluster gets its own namespace/interface prefix and bridge subnet unless `name` /
`subnet` are given, so tests never collide with a developer's own `dev-cluster up` (prefix
`kat`, 10.99.0.0/24) or with each other.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import string
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "dev-cluster"
NETNS_DIR = "/var/run/netns"
_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


def unavailable_reason() -> str | None:
    """Why a dev cluster cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "the dev cluster needs root (network namespaces, a bridge)"
    for tool in ("ip", "nsenter"):
        if not shutil.which(tool, path=_PATH):
            return f"`{tool}` not found (run scripts/setup.sh)"
    if not SCRIPT.exists():
        return f"{SCRIPT} missing"
    return None


def wait_until(
    fn: Callable[[], Any], timeout: float = 30, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Poll fn until it returns something truthy (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:g}s (last error: {last_exc!r})")
        time.sleep(interval)


def _host_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, env={"PATH": _PATH}
    ).stdout
    nets = []
    for word in out.split():
        if "/" in word and word[0].isdigit():
            try:
                nets.append(ipaddress.IPv4Interface(word).network)
            except ValueError:
                pass
    return nets


def unique_name_and_subnet() -> tuple[str, str]:
    """A fresh interface prefix (short enough for 15-char interface names) and a /24 in
    10.99.1.0 - 10.99.254.0 that no interface on this host uses."""
    taken_ns = set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()
    rnd = random.Random()
    while True:
        name = "kt" + "".join(rnd.choices(string.ascii_lowercase + string.digits, k=5))
        if f"{name}-n1" not in taken_ns and not os.path.exists(f"/sys/class/net/{name}br0"):
            break
    used = _host_networks()
    for _ in range(500):
        net = ipaddress.IPv4Network(f"10.99.{rnd.randint(1, 254)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return name, str(net)
    raise RuntimeError("no free 10.99.X.0/24 subnet on this host")


class DevCluster:
    """A dev cluster of `nodes` nodes whose files live in `dir` (created; removed by down).

    net_only=True creates only the bridge, namespaces, directories and cluster.kat, without
    starting agents. `env` is added to the environment of scripts/dev-cluster (e.g.
    KAT_AGENT / KATCALL to run other commands than `kat-agent` / `katcall`)."""

    def __init__(
        self,
        nodes: int,
        dir: Path | str,
        *,
        name: str | None = None,
        subnet: str | None = None,
        net_only: bool = False,
        etcd_members: int = 1,
        env: dict[str, str] | None = None,
        extra_up_args: list[str] | tuple[str, ...] = (),
        timeout: float = 300,
    ) -> None:
        self.n = nodes
        self.dir = Path(dir).absolute()
        if name is None or subnet is None:
            auto_name, auto_subnet = unique_name_and_subnet()
            name = name or auto_name
            subnet = subnet or auto_subnet
        self.name = name
        self.subnet = subnet
        self.net_only = net_only
        self.etcd_members = etcd_members
        self.env = {**os.environ, "PATH": _PATH, **(env or {})}
        self.extra_up_args = list(extra_up_args)
        self.timeout = timeout
        self.katconfig: Path | None = None
        self.up_output = ""
        self._procs: list[subprocess.Popen] = []

    # -- lifecycle ------------------------------------------------------------------------

    def script(
        self, *args: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        """Run scripts/dev-cluster SUBCOMMAND ARGS... --dir DIR (stdout+stderr merged)."""
        cmd = [sys.executable, str(SCRIPT), *args]
        p = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            timeout=timeout or self.timeout,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"dev-cluster {' '.join(args)} failed ({p.returncode}):\n{p.stdout}")
        return p

    def up(self) -> Path:
        """Bring the cluster up; returns the admin KATCONFIG path. Tears down on failure."""
        args = ["up", "--nodes", str(self.n), "--dir", str(self.dir), "--name", self.name]
        args += ["--subnet", self.subnet, "--etcd-members", str(self.etcd_members)]
        if self.net_only:
            args.append("--net-only")
        try:
            p = self.script(*args, *self.extra_up_args, check=True)
        except BaseException:
            self.down()
            raise
        self.up_output = p.stdout
        last = [ln for ln in p.stdout.splitlines() if ln.strip()][-1]
        if not last.startswith("KATCONFIG="):
            self.down()
            raise RuntimeError(f"dev-cluster up: unexpected last line {last!r}:\n{p.stdout}")
        self.katconfig = Path(last.split("=", 1)[1])
        return self.katconfig

    def down(self) -> None:
        """Stop everything and remove namespaces, bridge and dir. Safe to call repeatedly."""
        try:
            p = self.script("down", "--dir", str(self.dir), "--name", self.name, check=False)
            if p.returncode != 0:
                print(f"dev-cluster down failed ({p.returncode}):\n{p.stdout}", file=sys.stderr)
        finally:
            for proc in self._procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
            self._procs.clear()

    def __enter__(self) -> DevCluster:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- nodes ----------------------------------------------------------------------------

    def state(self) -> dict:
        return json.loads((self.dir / "state.json").read_text())

    def node(self, ref: str) -> dict:
        """The state.json record of a node given as nodeK, K, its name or its address."""
        for n in self.state()["nodes"]:
            if ref in (n["key"], str(n["index"]), n.get("name"), n["netns"], n["address"]):
                return n
        raise KeyError(ref)

    def address(self, ref: str) -> str:
        return self.node(ref)["address"]

    def kill(self, node: str, everything: bool = False) -> None:
        """SIGKILL the node's agent and its etcd (a crash); everything=True also kills its
        containers and every other process in its namespace (a power loss)."""
        self.script("kill", "--dir", str(self.dir), node, *(["--all"] if everything else []))

    def start(self, node: str) -> None:
        """Start the node's agent again with the command line it was first started with."""
        self.script("start", "--dir", str(self.dir), node)

    def status(self) -> dict:
        return json.loads(self.script("status", "--dir", str(self.dir), "--json").stdout)

    # -- talking to the cluster -----------------------------------------------------------

    def katcall(
        self, *args: str, check: bool = False, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run katcall (or $KATCALL) with KATCONFIG set to the cluster's admin config."""
        if self.katconfig is None:
            raise RuntimeError("cluster is not up")
        cmd = self.state()["katcall_cmd"]
        env = {**self.env, "KATCONFIG": str(self.katconfig)}
        return subprocess.run(
            [*cmd, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=check,
            input=input,
        )

    def nodes_json(self) -> list[dict]:
        """The items of `katcall get nodes -o json`."""
        p = self.katcall("get", "nodes", "-o", "json")
        if p.returncode != 0:
            raise RuntimeError(f"katcall get nodes failed ({p.returncode}): {p.stderr.strip()}")
        return json.loads(p.stdout)["items"]

    def ready_nodes(self) -> list[str]:
        return [
            n["metadata"]["name"]
            for n in self.nodes_json()
            if (n.get("status") or {}).get("condition") == "READY"
        ]

    # -- running things inside a node's network namespace ---------------------------------

    def _nsenter(self, node: str) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR}/{self.node(node)['netns']}"]

    def exec(
        self, node: str, *cmd: str, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess:
        """Run cmd to completion in the node's network namespace (nsenter, not ip netns)."""
        return subprocess.run(
            [*self._nsenter(node), *cmd],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=check,
        )

    def popen(self, node: str, *cmd: str, **kw: Any) -> subprocess.Popen:
        """Start cmd in the background in the node's network namespace; it is killed by
        down() at the latest."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        kw.setdefault("env", self.env)
        p = subprocess.Popen([*self._nsenter(node), *cmd], start_new_session=True, **kw)
        self._procs.append(p)
        return p
