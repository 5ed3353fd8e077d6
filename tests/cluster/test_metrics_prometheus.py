"""Metrics on a real 3-node dev cluster: every node's /metrics answers a monitoring
certificate and refuses a connection without one, passes `promtool check metrics`,
and a real Prometheus (Debian's) with the scrape config of docs/monitoring.md
reports every node up and the leader's scheduling histograms counting an apply."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from internal.security import clientconfig
from tests.devcluster import REPO, DevCluster, unavailable_reason, wait_until

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or ""),
    pytest.mark.skipif(
        PROMETHEUS is None or PROMTOOL is None,
        reason="prometheus/promtool not installed (Debian package prometheus; scripts/setup.sh)",
    ),
]

METRICS_PORT = 9119  # the default metricsPort


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with DevCluster(3, tmp_path_factory.mktemp("metrics") / "cluster") as c:
        yield c


@pytest.fixture(scope="module")
def certs(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`katcall admin create prometheus --role monitoring`, as docs/monitoring.md says."""
    out = tmp_path_factory.mktemp("promcerts") / "kat"
    p = cluster.katcall("admin", "create", "prometheus", "--role", "monitoring", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert (out / "prometheus.key").stat().st_mode & 0o777 == 0o600
    assert {f.name for f in out.iterdir()} == {"ca.crt", "prometheus.crt", "prometheus.key"}
    return out


def targets(c: DevCluster) -> list[str]:
    return [f"{n['address']}:{METRICS_PORT}" for n in c.state()["nodes"]]


def scrape(target: str, certs: Path | None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt") if certs else None)
    if certs is None:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx.load_cert_chain(certs / "prometheus.crt", certs / "prometheus.key")
    with urllib.request.urlopen(f"https://{target}/metrics", context=ctx, timeout=10) as resp:
        assert resp.status == 200
        return resp.read()


def test_every_node_serves_valid_metrics_only_with_a_certificate(
    cluster: DevCluster, certs: Path
) -> None:
    for target in targets(cluster):
        body = wait_until(lambda t=target: scrape(t, certs), timeout=30, what=f"{target} metrics")
        check = subprocess.run(
            [str(PROMTOOL), "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert b"kat_node_instances{" in body and b"kat_build_info{" in body
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            scrape(target, None)


def test_every_node_reports_overlay_handshake_age_and_dns_queries(
    cluster: DevCluster, certs: Path
) -> None:
    nodes = cluster.state()["nodes"]
    names = {n["address"]: n.get("name") or n["key"] for n in nodes}

    def ages(target: str) -> dict[str, float]:
        text = scrape(target, certs).decode()
        found = re.findall(r'kat_overlay_peer_handshake_age_seconds\{peer="([^"]+)"\} (\S+)', text)
        assert 'kat_dns_queries_total{answer="zone"}' in text
        return {peer: float(v) for peer, v in found}

    for target in targets(cluster):
        own = names[target.rsplit(":", 1)[0]]
        want = set(names.values()) - {own}
        got = wait_until(
            lambda t=target, want=want: (
                (a := ages(t)) and set(a) == want and all(v < 180 for v in a.values()) and a
            ),
            timeout=120,
            what=f"{target}: a recent handshake with every other node",
        )
        assert all(v >= 0 for v in got.values()), got


def test_the_monitoring_certificate_can_call_no_api(
    cluster: DevCluster, certs: Path, tmp_path: Path
) -> None:
    admin = clientconfig.load(cluster.katconfig)
    cfg = clientconfig.ClientConfig()
    cfg.upsert(
        clientconfig.Context(
            "prometheus",
            list(admin.contexts[admin.current].endpoints),
            (certs / "ca.crt").read_bytes(),
            (certs / "prometheus.crt").read_bytes(),
            (certs / "prometheus.key").read_bytes(),
        )
    )
    clientconfig.save(cfg, tmp_path / "prom.katconfig")
    env = {**cluster.env, "KATCONFIG": str(tmp_path / "prom.katconfig")}
    for args in (["get", "nodes"], ["admin", "list"], ["token", "create"]):
        p = subprocess.run(
            [*cluster.state()["katcall_cmd"], *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert p.returncode != 0 and "kat:monitoring" in p.stderr, (args, p.stdout, p.stderr)
    listed = cluster.katcall("admin", "list")
    assert listed.returncode == 0 and re.search(r"prometheus\s+monitoring\s+active", listed.stdout)


def documented_config(certs: Path, scrape_targets: list[str]) -> dict:
    """The scrape config block of docs/monitoring.md with this test's paths and targets."""
    doc = (REPO / "docs" / "monitoring.md").read_text()
    block = re.search(r"```yaml\n(# prometheus.yml.*?)```", doc, re.S)
    assert block, "docs/monitoring.md lost its prometheus.yml block"
    config = yaml.safe_load(block.group(1))
    config["global"]["scrape_interval"] = "1s"
    [job] = config["scrape_configs"]
    for key in ("ca_file", "cert_file", "key_file"):
        job["tls_config"][key] = str(certs / Path(job["tls_config"][key]).name)
    job["static_configs"] = [{"targets": scrape_targets}]
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_prometheus_sees_every_node_and_counts_an_apply(
    cluster: DevCluster, certs: Path, tmp_path: Path
) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(documented_config(certs, targets(cluster))))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        + [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        up = wait_until(
            lambda: [r for r in query(port, 'up{job="kat"}') if r["value"][1] == "1"],
            timeout=60,
            what="Prometheus sees nodes up",
        )
        wait_until(
            lambda: len([r for r in query(port, 'up{job="kat"}') if r["value"][1] == "1"]) == 3,
            timeout=60,
            what="all three nodes up",
        )
        assert up
        leader = wait_until(
            lambda: [r["metric"]["instance"] for r in query(port, "kat_leader == 1")],
            timeout=30,
            what="a leader",
        )
        assert len(leader) == 1

        def count(name: str) -> float:
            rows = query(port, f'{name}_count{{instance="{leader[0]}"}}')
            return float(rows[0]["value"][1]) if rows else 0.0

        before = count("kat_apply_to_scheduled_seconds")
        bundle = tmp_path / "probe"
        bundle.mkdir()
        (bundle / "workload.kat").write_text(
            "apiVersion: kat.dws.rip/v1alpha1\nkind: Workload\nmetadata: {name: probe}\n"
            "spec:\n  type: SERVICE\n  source: {image: registry.kat.local/busybox:latest}\n"
            "  container: {name: probe, command: [sleep, '3600']}\n"
        )
        p = cluster.katcall("apply", "-f", str(bundle))
        assert p.returncode == 0, p.stderr
        wait_until(
            lambda: (
                count("kat_apply_to_scheduled_seconds") >= before + 1
                and count("kat_scheduling_duration_seconds") >= 1
            ),
            timeout=60,
            what="the leader's scheduling histograms count the apply",
        )
        applies = query(port, 'kat_api_requests_total{method="Apply",code="OK"}')
        assert applies and float(applies[0]["value"][1]) >= 1
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()
        cluster.katcall("delete", "workload", "probe")
