"""Ingress routing (kat_agent/node/network/haproxy_config.py): which rules become which
HAProxy routes, and that HAProxy itself accepts the rendered file (`haproxy -c`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from kat_agent.node.network import haproxy_config as hc


def svc(
    name: str, rules: list[kat_pb2.IngressRule], ips: tuple[str, ...] = ("10.100.0.5",)
) -> kat_pb2.ServiceEndpoints:
    return kat_pb2.ServiceEndpoints(
        namespace="default",
        workload=name,
        endpoints=[kat_pb2.Endpoint(instance_id=f"{name}-{i}", ip=ip) for i, ip in enumerate(ips)],
        ports=[kat_pb2.ServicePort(name="http", container_port=8080)],
        ingress=rules,
    )


def rule(host: str, path: str = "/", port: str = "http", tls: bool = False) -> kat_pb2.IngressRule:
    return kat_pb2.IngressRule(host=host, path=path, service_port_name=port, tls=tls)


def test_routes_most_specific_first_and_problems_named() -> None:
    plan = hc.plan_routes(
        [
            svc("web", [rule("Web.Kat.Local"), rule("web.kat.local", "/api")]),
            svc("other", [rule("web.kat.local"), rule("x.kat.local", port="nope")]),
        ]
    )
    assert [(r.host, r.path, r.workload) for r in plan.routes] == [
        ("web.kat.local", "/api", "web"),
        ("web.kat.local", "/", "web"),
    ]
    assert plan.routes[0].servers == (("web-0", "10.100.0.5"),)
    assert len(plan.problems) == 2
    assert any("already routed" in p for p in plan.problems)
    assert any("no port 'nope'" in p for p in plan.problems)


def test_bad_host_is_refused_not_rendered() -> None:
    plan = hc.plan_routes([svc("web", [rule("web kat; stats enable")])])
    assert not plan.routes and plan.problems


def test_rendered_config_routes_hosts_and_paths(tmp_path: Path) -> None:
    plan = hc.plan_routes(
        [
            svc("web", [rule("web.kat.local")], ("10.100.0.5", "10.100.2.7")),
            svc("idle", [rule("idle.kat.local")], ()),
        ]
    )
    text = hc.render(plan, http_port=8081, https_port=8443, runtime_dir=str(tmp_path))
    assert "bind :8081" in text
    assert "use_backend be_default_web_8080 if { var(txn.host) -m str web.kat.local }" in text
    assert "server web-0 10.100.0.5:8080 check" in text
    assert "server web-1 10.100.2.7:8080 check" in text
    assert "status 503" in text  # a routed workload without ready instances
    if shutil.which("haproxy"):
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(text)
        p = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("items", [["a=b", "c-"], ["kat.dws.rip/ingress=true"]])
def test_label_changes_parse(items: list[str]) -> None:
    from katcall.label_cmd import parse_changes

    set_, remove = parse_changes(items)
    assert len(set_) + len(remove) == len(items)


@pytest.mark.parametrize("items", [["novalue"], ["=v"], ["a=b", "a-"], ["-"]])
def test_bad_label_changes_are_refused(items: list[str]) -> None:
    from katcall.label_cmd import LabelError, parse_changes

    with pytest.raises(LabelError):
        parse_changes(items)


def test_get_ingress_table() -> None:
    from katcall.ingress_cmd import _rows

    s = svc("web", [rule("web.kat.local")], ("10.100.0.5", "10.100.2.7"))
    s.desired = 3
    text = _rows([s], wide=True)
    assert "web.kat.local" in text and "default/web" in text and "2/3" in text
    assert "10.100.0.5:8080,10.100.2.7:8080" in text


def test_describe_section_names_dns_and_ingress() -> None:
    from katcall.ingress_cmd import service_section

    s = svc("web", [rule("web.kat.local")], ("10.100.0.5",))

    class Answers:  # what the leader would answer (the RPCs are tested on a real cluster)
        def get_cluster_info(self, request: object) -> kat_pb2.ClusterInfo:
            info = kat_pb2.ClusterInfo()
            info.configuration.spec.cluster_domain = "kat.cluster.local"
            return info

        def get_endpoints(self, request: object) -> kat_pb2.EndpointSet:
            return kat_pb2.EndpointSet(services=[s], ingress_nodes=["vm-2"])

    text = service_section(Answers(), "default", "web")  # type: ignore[arg-type]
    assert "web.default.svc.kat.cluster.local  A: 10.100.0.5" in text
    assert "_http._tcp.web.default.svc.kat.cluster.local  SRV: port 8080" in text
    assert "web.kat.local/ -> port http(8080)" in text and "served by: vm-2" in text


def test_marker_names_the_configuration(tmp_path: Path) -> None:
    """The marker backend tells which configuration a running HAProxy serves (ingress.py
    reads it from the stats socket): one name per configuration, and HAProxy accepts it."""
    plan = hc.plan_routes([svc("web", [rule("web.kat.local")])])
    text = hc.render(plan, http_port=8081, https_port=8443, runtime_dir=str(tmp_path))
    other = text.replace("10.100.0.5", "10.100.0.6")
    marked = hc.with_marker(text)
    assert f"\nbackend {hc.marker_of(text)}\n" in marked
    assert hc.marker_of(marked) == hc.marker_of(text) != hc.marker_of(other)
    if shutil.which("haproxy"):
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(marked)
        p = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
