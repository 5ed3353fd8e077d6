"""katcall at kubectl's level, run as a user runs it (the real `katcall` executable) against
a real leader (`kat-agent init`: real etcd, mTLS gRPC) with simulated agents as nodes
(tests/leader_harness.py): global flags anywhere, version/cluster-info/config view, output
formats and selectors, watches, logs and exec (a pty for -t), describe, clear errors,
partial bundle applies and shell completion. Each test checks output and exit code.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pty
import queue
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from internal.security import clientconfig, pki
from internal.version import VERSION
from tests.leader_harness import Bundle, Leader, SimNet, poll, service

pytestmark = pytest.mark.skipif(
    shutil.which("etcd") is None or shutil.which("kat-agent") is None,
    reason="needs etcd and kat-agent on PATH (scripts/setup.sh)",
)

P = kat_pb2.Instance
VLB = """apiVersion: kat.dws.rip/v1alpha1
kind: VirtualLoadBalancer
metadata:
  name: {name}
  namespace: default
spec:
  ports:
    - name: http
      containerPort: 8080
      protocol: TCP
"""


def labelled(text: str, namespace: str = "default", **labels: str) -> str:
    lines = "".join(f"    {k}: {v}\n" for k, v in labels.items())
    return text.replace(
        f"  namespace: {namespace}\n", f"  namespace: {namespace}\n  labels:\n{lines}"
    )


@pytest.fixture(scope="module")
def leader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leader]:
    with Leader(tmp_path_factory.mktemp("ux") / "cluster", tick=1, loss=3) as lead:
        yield lead


@pytest.fixture(scope="module")
def net(leader: Leader) -> Iterator[SimNet]:
    sims = SimNet(leader)
    try:
        yield sims
    finally:
        sims.close()


@pytest.fixture(scope="module")
def web(leader: Leader, net: SimNet, tmp_path_factory: pytest.TempPathFactory) -> P:
    """A one-replica workload `uxweb` (label app=uxweb) running on the simulated node `ux`."""
    net.add("ux", {"t": "ux"})
    text = labelled(service("uxweb", replicas=1, selector={"t": "ux"}), app="uxweb")
    root = Bundle(tmp_path_factory.mktemp("web"), {"workload.kat": text}).write()
    leader.katcall("apply", "-f", str(root), "--wait", "--timeout", "30s", check=True)
    return poll(
        lambda: next((i for i in leader.instances("default", "uxweb") if i.ready), None),
        within=20,
        what="uxweb ready",
    )


def katcall(leader: Leader, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """katcall with --katconfig given after the command (as a kubectl user would)."""
    return subprocess.run(
        ["katcall", *args, "--katconfig", str(leader.katconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ flags, version, info


def test_global_flags_anywhere_and_closest_command(leader: Leader, web: P) -> None:
    ctx = clientconfig.load(leader.katconfig).current
    after = katcall(leader, "get", "workloads", "-n", "default", "uxweb", "--context", ctx)
    assert after.returncode == 0 and after.stdout.split()[:2] == ["NAME", "TYPE"], after.stderr
    assert after.stdout.splitlines()[1].split()[:3] == ["uxweb", "SERVICE", "1/1"]
    name = ("-o", "name")
    before = leader.katcall("--context", ctx, "-n", "default", *name, "get", "workloads", "uxweb")
    mixed = katcall(leader, "get", "-o", "name", "workloads", "--context", ctx, "uxweb")
    assert before.stdout == mixed.stdout == "workload/uxweb\n", (before.stderr, mixed.stderr)
    wrong = katcall(leader, "get", "nodes", "--context", "nope")
    assert wrong.returncode == 1 and "no context named 'nope'" in wrong.stderr
    typo = leader.katcall("gte", "nodes")
    assert typo.returncode == 2 and "did you mean 'get'?" in typo.stderr


def test_version_cluster_info_and_config_view(leader: Leader, web: P) -> None:
    v = leader.katcall("version", check=True).stdout
    assert f"Client Version: {VERSION}" in v and f"Server Version: {VERSION}" in v
    doc = json.loads(katcall(leader, "version", "-o", "json").stdout)
    assert doc["clientVersion"] == VERSION and doc["serverVersion"]["version"] == VERSION
    nodes = {n["name"]: n["version"] for n in doc["nodes"]}
    assert nodes[leader.node_name] == VERSION and "ux" in nodes
    info = leader.katcall("cluster-info", check=True).stdout
    assert f"Leader:         {leader.node_name} at 127.0.0.1:{leader.ports['apiPort']}" in info
    assert "Cluster CIDR:" in info
    view = leader.katcall("config", "view", check=True).stdout
    assert "REDACTED" in view and "BEGIN" not in view and "127.0.0.1" in view
    unreachable = katcall(leader, "version", "--context", "nope")
    assert unreachable.returncode == 1 and f"Client Version: {VERSION}" in unreachable.stdout


# ------------------------------------------------------------------ output and selectors


def test_output_formats_and_selectors(leader: Leader, web: P, tmp_path: Path) -> None:
    obj = json.loads(leader.katcall("get", "workloads", "uxweb", "-o", "json", check=True).stdout)
    assert obj["metadata"]["name"] == "uxweb" and "items" not in obj
    insts = json.loads(leader.katcall("get", "instances", "-o", "json", check=True).stdout)
    mine = [i for i in insts["items"] if i["workload"] == "uxweb"]
    assert mine and mine[0]["restartCount"] == 0 and "exitCode" in mine[0]
    y = leader.katcall("get", "instances", web.id, "-o", "yaml", check=True).stdout
    assert "restartCount: 0" in y and "ready: true" in y
    assert leader.katcall("get", "wl", "-o", "name", check=True).stdout.split() == [
        "workload/uxweb"
    ]
    jp = leader.katcall(
        "get", "workloads", "-o", "jsonpath={.items[*].metadata.name}", check=True
    ).stdout
    assert jp.strip() == "uxweb"
    jp = leader.katcall(
        "get",
        "instances",
        "-l",
        "app=uxweb",
        "-o",
        r'jsonpath={range .items[*]}{.id} {.ready}{"\n"}{end}',
        check=True,
    ).stdout
    assert jp.splitlines() == [f"{web.id} true"]
    assert leader.katcall("get", "nodes", "-l", "t=ux", "-o", "name").stdout.split() == ["node/ux"]
    none = leader.katcall("get", "workloads", "-l", "app=nothing", check=True)
    assert "No workloads found in namespace 'default'." in none.stdout
    bad = leader.katcall("get", "workloads", "-o", "tabel")
    assert bad.returncode == 1 and "unknown output format 'tabel'" in bad.stderr
    wrong = leader.katcall("get", "tokens", "-l", "a=b")
    assert wrong.returncode != 0 and "-l applies to" in wrong.stderr
    missing = leader.katcall("get", "workloads", "nope")
    assert missing.returncode == 1 and "workload 'nope' not found" in missing.stderr
    # -f - reads a .kat from stdin
    ns = "apiVersion: kat.dws.rip/v1alpha1\nkind: Namespace\nmetadata:\n  name: uxstdin\n"
    p = leader.katcall("apply", "-f", "-", input=ns)
    assert p.returncode == 0 and "namespace/uxstdin created" in p.stdout, p.stderr
    assert "namespace/uxstdin" in leader.katcall("get", "ns", "-o", "name").stdout


# ------------------------------------------------------------------ watches


class Lines:
    """A process's stdout lines, read in the background."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines, self._q = proc, [], queue.Queue()  # type: ignore[var-annotated]
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))

    def until(self, pattern: str, within: float = 20.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in {self.lines}")


@pytest.fixture
def watcher(leader: Leader) -> Iterator[list[Lines]]:
    made: list[Lines] = []
    yield made
    for w in made:
        w.proc.terminate()
        w.proc.wait(timeout=10)


def start_watch(leader: Leader, made: list[Lines], *args: str) -> Lines:
    proc = subprocess.Popen(
        ["katcall", "--katconfig", str(leader.katconfig), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    made.append(Lines(proc))
    return made[-1]


def test_get_events_watch_prints_new_events(leader: Leader, web: P, watcher: list[Lines]) -> None:
    w = start_watch(leader, watcher, "get", "events", "-w", "-A")
    header = w.until("REASON")
    assert header.split() == ["NAMESPACE", "AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    leader.katcall("cordon", "ux", check=True)
    try:
        line = w.until(r"NodeCordoned\s+node/ux")
        assert line.index("NodeCordoned") == header.index("REASON")
    finally:
        leader.katcall("uncordon", "ux", check=True)
    w.until(r"NodeUncordoned\s+node/ux")


def test_get_instances_watch_header_matches_and_only_changes_print(
    leader: Leader, web: P, watcher: list[Lines], tmp_path: Path
) -> None:
    w = start_watch(leader, watcher, "get", "instances", "-w", "-A")
    header = w.until("PHASE")
    assert header.split()[:3] == ["NAMESPACE", "NAME", "WORKLOAD"]
    w.until(rf"^default\s+{web.id}\s")
    text = service("uxwatch", replicas=1, selector={"t": "ux"})
    leader.katcall("apply", "-f", str(Bundle(tmp_path, {"workload.kat": text}).write()), check=True)
    line = w.until(r"uxwatch.*RUNNING\s+true")
    assert line.split()[0] == "default" and len(line.split()) == len(header.split())
    # uxweb did not change: its row was printed once, although uxwatch's changes arrived.
    assert sum(1 for x in w.lines if web.id in x) == 1
    assert len(w.lines) == len(set(w.lines))
    leader.katcall("delete", "workload", "uxwatch", check=True)


def test_get_nodes_watch_polls_and_prints_changed_rows(
    leader: Leader, web: P, watcher: list[Lines]
) -> None:
    w = start_watch(leader, watcher, "get", "nodes", "ux", "-w")
    assert w.until("STATUS").split()[:2] == ["NAME", "STATUS"]
    w.until(r"^ux\s+READY\s")
    leader.katcall("cordon", "ux", check=True)
    try:
        w.until(r"^ux\s+READY,SchedulingDisabled")
    finally:
        leader.katcall("uncordon", "ux", check=True)


# ------------------------------------------------------------------ logs and exec


def test_logs_since_timestamps_and_stderr_apart(leader: Leader, web: P) -> None:
    p = leader.katcall("logs", "uxweb", check=True)
    assert p.stdout.splitlines() == [f"[{web.id}] line {i} of {web.id}" for i in (1, 2, 3)]
    assert p.stderr == f"[{web.id}] oops from {web.id}\n"
    p = leader.katcall("logs", "uxweb", "--instance", web.id, "--since", "90s", check=True)
    assert p.stdout == f"line 2 of {web.id}\nline 3 of {web.id}\n"
    p = leader.katcall("logs", "uxweb", "--timestamps", check=True)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z"
    assert all(re.match(rf"^\[{web.id}\] {stamp} line \d", x) for x in p.stdout.splitlines())
    bad = leader.katcall("logs", "uxweb", "--since", "soon")
    assert bad.returncode == 2 and "bad duration 'soon'" in bad.stderr


def _read_until(fd: int, text: bytes, within: float = 20.0) -> bytes:
    got = b""
    deadline = time.monotonic() + within
    while text not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {text!r} in {got!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                got += os.read(fd, 4096)
            except OSError:
                break
    return got


def test_exec_it_gets_a_terminal_with_its_size_and_resizes(leader: Leader, web: P) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        ["katcall", "--katconfig", str(leader.katconfig), "exec", "uxweb", "-it", "--", "sh"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    try:
        assert b"tty 24x80" in _read_until(master, b"tty 24x80")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        _read_until(master, b"resized 30x100")
        os.write(master, b"exit\r")
        assert b"got exit" in _read_until(master, b"got exit")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    piped = leader.katcall("exec", "uxweb", "-t", "--", "sh", input="")
    assert piped.returncode == 2 and "-t needs a terminal" in piped.stderr


# ------------------------------------------------------------------ describe


def test_describe_node_instance_namespace(leader: Leader, web: P) -> None:
    node = leader.katcall("describe", "node", "ux", check=True).stdout
    assert "memoryBytes" not in node and "8589934592" not in node
    assert re.search(r"cpu\s+4\s+4\s+100m \(2%\)", node), node
    assert re.search(r"memory\s+8Gi\s+8Gi\s+16Mi \(0%\)", node), node
    assert "Conditions:" in node and "Overlay:" in node and web.id in node
    inst = leader.katcall("describe", "instance", web.id, check=True).stdout
    for want in ("Workload:       uxweb", "Restarts:       0", "Container:", "Image:", "Events:"):
        assert want in inst
    ns = leader.katcall("describe", "namespace", "default", check=True).stdout
    assert "Workloads:" in ns and "uxweb" in ns
    nope = leader.katcall("describe", "instance", "nope")
    assert nope.returncode == 1 and "instance 'nope' not found" in nope.stderr


# ------------------------------------------------------------------ errors


def _config(tmp_path: Path, name: str, ctx: clientconfig.Context) -> str:
    path = tmp_path / f"{name}.katconfig"
    clientconfig.save(clientconfig.ClientConfig(contexts={ctx.name: ctx}, current=ctx.name), path)
    return str(path)


def test_tls_and_connection_errors_name_the_cause(leader: Leader, tmp_path: Path) -> None:
    ctx = clientconfig.load(leader.katconfig).context()
    other = pki.create_ca("other-ca")
    stranger = pki.issue_certificate(
        other.cert_pem, other.key_pem, common_name="stranger", role=pki.ROLE_ADMIN
    )
    cases = {
        "ca": (
            dataclasses.replace(ctx, ca=other.cert_pem),
            "TLS verification of 127.0.0.1:",
            "is not accepted by the CA of context",
        ),
        "client": (
            dataclasses.replace(ctx, cert=stranger.cert_pem, key=stranger.key_pem),
            "refused katcall's client certificate (CN=stranger",
            "issued by CN=other-ca",
        ),
        "down": (
            dataclasses.replace(ctx, endpoints=["127.0.0.1:1"]),
            "nothing listens at 127.0.0.1:1 (connection refused)",
            "is kat-agent running there?",
        ),
    }
    for name, (bad, *wants) in cases.items():
        p = subprocess.run(
            ["katcall", "--katconfig", _config(tmp_path, name, bad), "get", "nodes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1 and p.stdout == "", name
        assert len(p.stderr.splitlines()) == 1, p.stderr  # one sentence, no gRPC core lines
        for want in wants:
            assert want in p.stderr, (name, p.stderr)


def test_single_file_apply_reports_yaml_line_and_column(leader: Leader, tmp_path: Path) -> None:
    bad = tmp_path / "bad.kat"
    bad.write_text("apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata:\n  name: [x\n")
    p = leader.katcall("apply", "-f", str(bad))
    assert p.returncode == 1 and "cannot tell which bundle file" not in p.stderr
    assert re.search(r"bad\.kat: invalid YAML at line \d+, column \d+", p.stderr), p.stderr
    v = leader.katcall("validate", "-f", str(bad))
    assert re.search(r"line \d+, column \d+", v.stderr)
    assert "No workloads" in leader.katcall("get", "wl", "-l", "app=x").stdout


def test_partial_bundle_apply_asks_for_prune(leader: Leader, web: P, tmp_path: Path) -> None:
    text = service("uxlb", replicas=1, selector={"t": "ux"})
    full = {"workload.kat": text, "VirtualLoadBalancer.kat": VLB.format(name="uxlb")}
    leader.katcall("apply", "-f", str(Bundle(tmp_path / "full", full).write()), check=True)
    ref = kat_pb2.ObjectRef(namespace="default", name="uxlb")
    before = len(leader.stub().ListRevisions(ref, timeout=10).items)
    only = tmp_path / "only" / "workload.kat"
    only.parent.mkdir()
    only.write_text(text.replace("memory: 16Mi", "memory: 32Mi"))
    p = leader.katcall("apply", "-f", str(only))
    assert p.returncode == 1
    assert "would remove VirtualLoadBalancer.kat from workload/uxlb" in p.stderr
    assert "--prune" in p.stderr
    assert len(leader.stub().ListRevisions(ref, timeout=10).items) == before  # nothing stored
    p = leader.katcall("apply", "-f", str(only), "--prune", check=True)
    assert "VirtualLoadBalancer.kat pruned" in p.stdout
    revs = leader.stub().ListRevisions(ref, timeout=10).items
    assert not max(revs, key=lambda r: r.revision).bundle.HasField("virtual_load_balancer")
    leader.katcall("delete", "workload", "uxlb", check=True)


# ------------------------------------------------------------------ completion


def _complete(leader: Leader, line: str, tmp_path: Path) -> list[str]:
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        "KATCONFIG": str(leader.katconfig),
    }
    p = subprocess.run(["katcall"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return out.read_text().split()


def test_completion_scripts_and_cluster_names(leader: Leader, web: P, tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        p = leader.katcall("completion", shell, check=True)
        assert "katcall" in p.stdout and "_ARGCOMPLETE" in p.stdout, shell
    assert "workloads" in _complete(leader, "katcall get wo", tmp_path)
    assert "uxweb" in _complete(leader, "katcall get workloads ", tmp_path)
    assert "ux" in _complete(leader, "katcall cordon u", tmp_path)
    assert "uxweb" in _complete(leader, "katcall logs ux", tmp_path)
    assert "default" in _complete(leader, "katcall get workloads -n d", tmp_path)
    assert "describe" in _complete(leader, "katcall desc", tmp_path)
