"""scripts/dev-cluster without real agents: the network (bridge, namespaces, veths),
teardown, and the agent bookkeeping (up/kill/start/down) with stand-in commands."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.request

import pytest

try:
    from devcluster import NETNS_DIR, DevCluster, unavailable_reason, wait_until
except ImportError:  # tests/ imported as a package
    from tests.devcluster import NETNS_DIR, DevCluster, unavailable_reason, wait_until

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")


HTTP_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.close()
"""


def _netns() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _assert_gone(c: DevCluster) -> None:
    assert not {n for n in _netns() if n.startswith(f"{c.name}-n")}
    assert not {i for i in _links() if i.startswith(c.name)}
    assert not c.dir.exists()


def _http_get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status


def _connect(addr: str, port: int) -> bytes:
    with socket.create_connection((addr, port), timeout=2) as s:
        return s.recv(100)


def test_net_only_cluster_is_reachable_and_goes_away(tmp_path):
    c = DevCluster(3, tmp_path / "dc", net_only=True)
    try:
        c.up()
        st = c.state()
        assert [n["netns"] for n in st["nodes"]] == [f"{c.name}-n{k}" for k in (1, 2, 3)]
        assert {n["netns"] for n in st["nodes"]} <= _netns()
        assert st["bridge"] in _links()
        assert (c.dir / "cluster.kat").read_text().startswith("# Written by scripts/dev-cluster")
        for n in st["nodes"]:
            assert (c.dir / n["key"] / "podman" / "root").is_dir()

        a1, a2, a3 = (c.address(k) for k in ("node1", "node2", "node3"))
        # own address, loopback up, default route via the bridge
        out = c.exec("node1", "ip", "-4", "-o", "addr", "show").stdout
        assert f"inet {a1}/24" in out and "inet 127.0.0.1/8" in out
        assert f"default via {st['bridge_address']}" in c.exec("node1", "ip", "route").stdout

        if shutil.which("busybox"):
            ping = ["busybox", "ping", "-c", "1", "-W", "2"]
            for a in (a1, a2, a3):  # host -> node
                r = subprocess.run([*ping, a], capture_output=True, text=True)
                assert r.returncode == 0, r.stdout
            assert c.exec("node1", *ping, a3).returncode == 0  # node -> node
            assert c.exec("node3", *ping, st["bridge_address"]).returncode == 0  # node -> host

        # a server in node2 is reachable from the host and from node3, not bound on the host
        # (not `python3 -m http.server`: it resolves its own name, and a namespace has no DNS)
        server = c.popen("node2", sys.executable, "-c", HTTP_SERVER, a2, "18080")
        url = f"http://{a2}:18080/"
        assert wait_until(lambda: _http_get(url) == 200, timeout=30, what="server in node2")
        probe = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=2).status)"
        r = c.exec("node3", sys.executable, "-c", probe)
        assert r.returncode == 0 and r.stdout.strip() == "200", r.stderr

        c.down()
        assert server.poll() is not None, "down left a process of node2 running"
        _assert_gone(c)
        # idempotent
        assert c.script("down", "--dir", str(c.dir), "--name", c.name).returncode == 0
        _assert_gone(c)
    finally:
        c.down()


def test_down_is_a_noop_when_nothing_exists(tmp_path):
    c = DevCluster(1, tmp_path / "never-up")
    assert c.script("down", "--dir", str(c.dir), "--name", c.name).returncode == 0
    assert c.script("down", "--dir", str(c.dir), "--name", c.name).returncode == 0
    _assert_gone(c)


# Stand-ins for kat-agent and katcall: the agent binds its advertise address (so it only
# works inside its namespace), starts an "etcd" child in a session of its own, and reports
# itself READY through a file the fake katcall reads.
FAKE_AGENT = r"""
import json, os, socket, subprocess, sys, time
args = sys.argv[1:]
opt = lambda n: args[args.index(n) + 1]
role, data, addr = args[0], opt("--data-dir"), opt("--advertise-address")
print("fake agent", os.getpid(), args, flush=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "--data-dir",
                  data + "/etcd"], start_new_session=True)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, 9116))
s.listen()
name = "fake-" + addr.rsplit(".", 1)[1]
with open(os.path.join(data, "fake-node.json"), "w") as f:
    json.dump({"metadata": {"name": name},
               "status": {"condition": "READY", "advertiseAddress": addr + ":9116"}}, f)
if role == "init":
    p = os.path.join(data, "admin.katconfig")
    with open(p + ".tmp", "w") as f:
        f.write("fake\n")
    os.chmod(p + ".tmp", 0o600)
    os.rename(p + ".tmp", p)
while True:
    c, _ = s.accept()
    c.sendall(name.encode())
    c.close()
"""

FAKE_KATCALL = r"""
import glob, json, os, sys
d = os.path.dirname(os.path.dirname(os.environ["KATCONFIG"]))
a = sys.argv[1:]
if a[:3] == ["token", "create", "--quiet"]:
    print("tok-%d" % os.getpid())
elif a[:4] == ["get", "nodes", "-o", "json"]:
    items = [json.load(open(p)) for p in sorted(glob.glob(d + "/node*/fake-node.json"))]
    print(json.dumps({"items": items}))
else:
    sys.exit("fake katcall: unsupported %r" % a)
"""


def _starts(log) -> int:
    return sum(ln.startswith("fake agent ") for ln in log.read_text().splitlines())


def _pids_mentioning(text: str) -> set[int]:
    out = set()
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
                with open(f"/proc/{e}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmd and state != "Z" and int(e) != os.getpid():
                out.add(int(e))
    return out


def test_up_kill_start_down_with_stand_in_agents(tmp_path):
    env = {
        "KAT_AGENT": shlex.join([sys.executable, "-c", FAKE_AGENT]),
        "KATCALL": shlex.join([sys.executable, "-c", FAKE_KATCALL]),
    }
    c = DevCluster(3, tmp_path / "dc", env=env, extra_up_args=["--no-images"])
    try:
        kc = c.up()
        assert kc == c.dir / "node1" / "admin.katconfig" and kc.exists()
        assert c.up_output.rstrip().splitlines()[-1] == f"KATCONFIG={kc}"
        assert sorted(c.ready_nodes()) == ["fake-11", "fake-12", "fake-13"]

        st = c.state()
        assert [n["name"] for n in st["nodes"]] == ["fake-11", "fake-12", "fake-13"]
        n1, n2, n3 = st["nodes"]
        assert n1["cmd"][-7:] == [
            "init",
            "--config",
            str(c.dir / "cluster.kat"),
            "--data-dir",
            str(c.dir / "node1"),
            "--advertise-address",
            n1["address"],
        ]
        assert n2["cmd"][-9:-7] == ["join", "--leader"]
        assert n2["cmd"][-7] == f"{n1['address']}:9115"
        # each agent runs in its own namespace: it could bind its node's address
        for n in st["nodes"]:
            assert _connect(n["address"], 9116) == n["name"].encode()
            assert _starts(c.dir / n["key"] / "agent.log") == 1

        # kill by node name: the agent and its child in another session die
        assert _pids_mentioning(str(c.dir / "node2" / "etcd"))
        c.kill("fake-12")
        assert not _pids_mentioning(str(c.dir / "node2"))
        assert c.state()["nodes"][1]["pid"] is None
        status = {r["node"]: r for r in c.status()["nodes"]}
        assert not status["node2"]["running"] and status["node1"]["running"]
        c.kill("node2")  # killing a stopped node is fine

        # start again with the same command line
        c.start("node2")
        n2b = c.state()["nodes"][1]
        assert n2b["cmd"] == n2["cmd"] and n2b["pid"] not in (None, n2["pid"])
        assert wait_until(lambda: _connect(n2["address"], 9116) == b"fake-12", timeout=30)
        assert wait_until(lambda: _starts(c.dir / "node2" / "agent.log") == 2, timeout=30)
        c.start("fake-12")  # already running: no second agent
        assert c.state()["nodes"][1]["pid"] == n2b["pid"]

        # kill node1 (the "init" node) and start it again: same init command
        c.kill("1")
        c.start("node1")
        assert c.state()["nodes"][0]["cmd"] == n1["cmd"]

        c.down()
        assert not _pids_mentioning(str(c.dir))
        _assert_gone(c)
    finally:
        c.down()


def test_up_fails_cleanly_when_the_agent_dies(tmp_path):
    c = DevCluster(2, tmp_path / "dc", env={"KAT_AGENT": "false"}, extra_up_args=["--no-images"])
    with pytest.raises(RuntimeError) as e:
        c.up()
    assert "exited before writing" in str(e.value)
    _assert_gone(c)  # up() tears down on failure


def test_status_json(tmp_path):
    with DevCluster(2, tmp_path / "dc", net_only=True) as c:
        s = c.status()
        assert s["phase"] == "ready" and len(s["nodes"]) == 2
        assert all(r["netns_present"] and not r["running"] for r in s["nodes"])
        json.dumps(s)
