"""HAProxy configuration for an ingress node, rendered from the endpoint view (pure).

Every workload's `spec.ingress` rules become routes: a request whose Host header (port
stripped, any case) equals the rule's host (`*.example.com`: ends with `.example.com`)
and whose path starts with the rule's path goes to that workload's ready instances on the
named port, round robin. Longer path prefixes
win over shorter ones for the same host. A host with a `tls: true` rule is served on the
HTTPS port with its certificate, and its plain-HTTP requests are redirected there. A
request no rule matches gets 404. HAProxy retries a failed connection on another
instance, so that an instance that has just stopped costs no request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from api.v1alpha1 import kat_pb2

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
MARKER = "kat_config_"  # + the digest of the rest of the configuration: an unused backend


@dataclass(frozen=True)
class Route:
    host: str
    path: str
    backend: str  # backend name
    tls: bool
    namespace: str
    workload: str
    port: int  # container port
    servers: tuple[tuple[str, str], ...]  # (instance id, ip)


@dataclass
class IngressPlan:
    routes: list[Route] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # rules that could not be routed

    @property
    def tls_hosts(self) -> list[str]:
        return sorted({r.host for r in self.routes if r.tls})


def _port_of(rule: kat_pb2.IngressRule, ports: Iterable[kat_pb2.ServicePort]) -> int | None:
    for p in ports:
        if rule.service_port_name and p.name == rule.service_port_name:
            return p.container_port
    if rule.service_port:
        return rule.service_port
    only = list(ports)
    if not rule.service_port_name and len(only) == 1:
        return only[0].container_port  # the workload's one port (validation allows this)
    return None


def plan_routes(services: Iterable[kat_pb2.ServiceEndpoints]) -> IngressPlan:
    """Routes of every ingress rule, most specific first (host, then longest path)."""
    plan = IngressPlan()
    seen: set[tuple[str, str]] = set()
    for s in services:
        for rule in s.ingress:
            host = rule.host.lower().rstrip(".")
            path = rule.path or "/"
            where = f"{s.namespace}/{s.workload}: ingress {host}{path}"
            if not _HOST.match(host.removeprefix("*.")) or not _PATH.match(path):
                plan.problems.append(f"{where}: host or path not usable")
                continue
            port = _port_of(rule, s.ports)
            if port is None:
                plan.problems.append(f"{where}: no port {rule.service_port_name!r}")
                continue
            if (host, path) in seen:
                plan.problems.append(f"{where}: already routed by another workload")
                continue
            seen.add((host, path))
            backend = _SAFE.sub("_", f"be_{s.namespace}_{s.workload}_{port}")
            plan.routes.append(
                Route(
                    host,
                    path,
                    backend,
                    rule.tls,
                    s.namespace,
                    s.workload,
                    port,
                    tuple((e.instance_id, e.ip) for e in s.endpoints if e.ip),
                )
            )
    plan.routes.sort(key=lambda r: (r.host, -len(r.path), r.path))
    return plan


def render(
    plan: IngressPlan,
    *,
    http_port: int,
    https_port: int,
    runtime_dir: str,
    tls_ready: Collection[str] = (),
    cert_dir: str = "",
) -> str:
    """The whole haproxy.cfg. `tls_ready`: the tls hosts whose PEM (certificate + key) is
    in `cert_dir`; HAProxy loads that whole directory on the HTTPS port and picks the
    certificate by SNI (the first file is served to clients without a matching name)."""
    out = [
        "# Written by kat-agent; every change is replaced on the next update.",
        "global",
        f"    stats socket {runtime_dir}/admin.sock mode 600 level admin expose-fd listeners",
        "    hard-stop-after 30s",
        "    log stdout format raw local0 warning",
        "defaults",
        "    mode http",
        "    log global",
        "    option forwardfor",
        "    option redispatch",
        "    retries 3",
        "    retry-on all-retryable-errors",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout http-request 10s",
        "    default-server init-addr none",
        "",
        "frontend http",
        f"    bind :{http_port}",
        "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
    ]
    tls_hosts = [h for h in plan.tls_hosts if h in tls_ready] if cert_dir else []
    for h in tls_hosts:
        out.append(f"    http-request redirect {_https_target(https_port)} if {_host_cond(h)}")
    out += _use_backends(r for r in plan.routes if r.host not in tls_hosts)
    out.append("    default_backend no_route")
    if tls_hosts:
        out += [
            "",
            "frontend https",
            f"    bind :{https_port} ssl crt {cert_dir} alpn http/1.1",
            "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
            "    http-request set-header X-Forwarded-Proto https",
        ]
        out += _use_backends([r for r in plan.routes if r.host in tls_hosts])
        out.append("    default_backend no_route")
    out += [
        "",
        "backend no_route",
        "    http-request return status 404 content-type text/plain "
        'string "no ingress rule for this host and path\\n"',
    ]
    done: set[str] = set()
    for r in plan.routes:
        if r.backend in done:
            continue
        done.add(r.backend)
        out += ["", f"backend {r.backend}", "    balance roundrobin"]
        for inst, ip in r.servers:
            out.append(f"    server {_SAFE.sub('_', inst)} {ip}:{r.port} check inter 2s")
        if not r.servers:
            out.append(
                "    http-request return status 503 content-type text/plain "
                'string "no ready instance\\n"'
            )
    return "\n".join(out) + "\n"


def _https_target(https_port: int) -> str:
    """Where a tls host's plain-HTTP request goes: the same host and URI over HTTPS."""
    if https_port == 443:
        return "scheme https code 301"
    return f"location https://%[var(txn.host)]:{https_port}%[capture.req.uri] code 301"


def _host_cond(host: str) -> str:
    """An ACL for the Host header: exact, or `*.example.com` for any subdomain."""
    if host.startswith("*."):
        return f"{{ var(txn.host) -m end {host[1:]} }}"
    return f"{{ var(txn.host) -m str {host} }}"


def _use_backends(routes: Iterable[Route]) -> list[str]:
    lines = []
    for r in routes:
        cond = _host_cond(r.host)
        if r.path != "/":
            cond += f" {{ path_beg {r.path} }}"
        lines.append(f"    use_backend {r.backend} if {cond}")
    return lines


def marker_of(text: str) -> str:
    """The name of the marker backend of a configuration made by with_marker."""
    return MARKER + hashlib.sha256(text.split(f"\nbackend {MARKER}")[0].encode()).hexdigest()[:16]


def with_marker(text: str) -> str:
    """`text` with an unused backend named after its digest: HAProxy's stats socket lists
    the backends it serves, so the configuration a worker runs can be told."""
    return f"{text}\nbackend {marker_of(text)}\n"
