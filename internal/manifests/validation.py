"""Semantic rules for each resource kind (one file at a time; bundle rules are in resources;
the small checks they share are in `checks`).

Validators work on the messages as written (before defaults) and report through a Reporter,
which also knows which paths the file wrote, so that a written zero can be told from an
absent field.
"""

from __future__ import annotations

import ipaddress
import re

from api.v1alpha1 import kat_pb2
from internal.core import hostpaths
from internal.manifests import cron, defaults, quantity
from internal.manifests.checks import (
    attr_name,
    check_abs_path,
    check_dns_label,
    check_envelope,
    check_image,
    check_label_key,
    check_label_value,
    check_labels,
    check_min,
    check_port,
    check_rel_path,
    is_dns_subdomain,
)
from internal.manifests.problems import Reporter, index_path, key_path

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")
_STAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLATFORM = re.compile(r"^[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_.]+)?$")
_MAX_SURGE = re.compile(r"^([0-9]+)(%?)$")
_GIT_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/\s].*$")
_Spec = kat_pb2.WorkloadSpec
_Restart = kat_pb2.RestartPolicy
_Update = kat_pb2.UpdateStrategy


# ------------------------------------------------------------------ Workload


def validate_workload(w: kat_pb2.Workload, rep: Reporter) -> None:
    check_envelope(w, rep, namespaced=True)
    if not w.HasField("spec"):
        rep.add("spec", "required")
        return
    spec = w.spec
    kind = spec.type
    if kind == _Spec.TYPE_UNSPECIFIED:
        rep.add("spec.type", "required: one of SERVICE, JOB, DAEMON_SERVICE")
    _check_source(spec.source, rep)
    if spec.HasField("replicas"):
        if kind == _Spec.DAEMON_SERVICE:
            rep.add("spec.replicas", "not allowed with DAEMON_SERVICE (one copy per eligible node)")
        elif kind == _Spec.JOB:
            rep.add(
                "spec.replicas", "not used by JOB: set completions/parallelism in JobDefinition"
            )
        else:
            check_min(spec.replicas, 0, "spec.replicas", rep)
    if spec.HasField("update_strategy"):
        _check_update_strategy(spec.update_strategy, kind, rep)
    if spec.HasField("restart_policy"):
        _check_restart_policy(spec.restart_policy, kind, rep)
    check_labels(dict(spec.node_selector), "spec.nodeSelector", rep)
    for i, tol in enumerate(spec.tolerations):
        _check_toleration(tol, index_path("spec.tolerations", i), rep)
    volume_names = _check_volumes(spec, rep)
    if not spec.HasField("container"):
        rep.add("spec.container", "required")
    else:
        _check_container(spec.container, volume_names, rep)


def _check_source(source: kat_pb2.WorkloadSource, rep: Reporter) -> None:
    which = source.WhichOneof("source")
    if which is None:
        rep.add("spec.source", "required: set either image or git")
        return
    if which == "image":
        if not source.image:
            rep.add("spec.source.image", "required")
        else:
            check_image(source.image, "spec.source.image", rep)
    else:
        _check_git(source.git, rep)
    if source.cache_image:
        if which != "git":
            rep.add("spec.source.cacheImage", "only used with spec.source.git")
        else:
            check_image(source.cache_image, "spec.source.cacheImage", rep, tag_allowed=False)


def _check_git(git: kat_pb2.GitSource, rep: Reporter) -> None:
    path = "spec.source.git"
    repo = git.repository
    if not repo:
        rep.add(f"{path}.repository", "required")
    elif repo.startswith("-") or any(c.isspace() for c in repo):
        rep.add(f"{path}.repository", f'"{repo}" is not a valid repository URL')
    elif not (repo.startswith(_GIT_SCHEMES) or _SCP_LIKE.match(repo)):
        rep.add(
            f"{path}.repository",
            f'"{repo}" is not a valid repository URL: use https://, http://, ssh://, git://, '
            "file:// or user@host:path",
        )
    if git.branch and git.tag:
        rep.add(f"{path}.tag", "set either branch or tag, not both")
    for name, value in (("branch", git.branch), ("tag", git.tag)):
        if value and not _valid_ref(value):
            rep.add(f"{path}.{name}", f'"{value}" is not a valid git {name} name')
    if git.commit and not _COMMIT.match(git.commit):
        rep.add(f"{path}.commit", f'"{git.commit}" is not a commit hash (7-64 lower-case hex)')


def _valid_ref(ref: str) -> bool:
    if ref.startswith(("-", "/")) or ref.endswith(("/", ".", ".lock")) or ".." in ref:
        return False
    if "@{" in ref or "//" in ref or ref == "@":
        return False
    return not any(c.isspace() or c in "~^:?*[\\" or ord(c) < 32 or ord(c) == 127 for c in ref)


def _check_update_strategy(us: kat_pb2.UpdateStrategy, kind: int, rep: Reporter) -> None:
    path = "spec.updateStrategy"
    if kind == _Spec.JOB:
        rep.add(path, "not used by JOB")
        return
    if not us.max_surge:
        if rep.written(f"{path}.maxSurge"):
            rep.add(f"{path}.maxSurge", "must not be empty")
        return
    if us.type == _Update.SIMULTANEOUS:
        rep.add(f"{path}.maxSurge", "only used with ROLLING")
        return
    m = _MAX_SURGE.match(us.max_surge.strip())
    if not m:
        rep.add(
            f"{path}.maxSurge", f'"{us.max_surge}" must be a count ("1") or a percentage ("25%")'
        )
        return
    number, percent = int(m.group(1)), m.group(2)
    if number < 1:
        rep.add(f"{path}.maxSurge", "must be at least 1 (a rolling update needs room to start)")
    elif percent and number > 100:
        rep.add(f"{path}.maxSurge", f'"{us.max_surge}" is more than 100%')


def _check_restart_policy(rp: kat_pb2.RestartPolicy, kind: int, rep: Reporter) -> None:
    path = "spec.restartPolicy"
    cond = rp.condition
    if cond == _Restart.CONDITION_UNSPECIFIED and (rp.max_restarts or rp.reset_seconds):
        rep.add(f"{path}.condition", "required with maxRestarts/resetSeconds: use MAX_COUNT")
        return
    if kind == _Spec.JOB and cond == _Restart.ALWAYS:
        rep.add(f"{path}.condition", "ALWAYS is not allowed for JOB (use NEVER or MAX_COUNT)")
    if cond == _Restart.MAX_COUNT:
        if rp.max_restarts == 0 and not rep.written(f"{path}.maxRestarts"):
            rep.add(f"{path}.maxRestarts", "required with MAX_COUNT")
        else:
            check_min(rp.max_restarts, 1, f"{path}.maxRestarts", rep)
        check_min(rp.reset_seconds, 0, f"{path}.resetSeconds", rep)
    else:
        for name, value in (("maxRestarts", rp.max_restarts), ("resetSeconds", rp.reset_seconds)):
            if value or rep.written(f"{path}.{name}"):
                rep.add(f"{path}.{name}", "only used with MAX_COUNT")


def _check_toleration(tol: kat_pb2.Toleration, path: str, rep: Reporter) -> None:
    if tol.key:
        check_label_key(tol.key, f"{path}.key", rep)
    if tol.operator == kat_pb2.Toleration.EXISTS:
        if tol.value:
            rep.add(f"{path}.value", "must be empty with operator EXISTS")
    else:
        if not tol.key:
            rep.add(f"{path}.key", "required with operator EQUAL (use EXISTS to match any key)")
        check_label_value(tol.value, f"{path}.value", rep)


def _check_volumes(spec: kat_pb2.WorkloadSpec, rep: Reporter) -> set[str]:
    seen: dict[str, int] = {}
    for i, vol in enumerate(spec.volumes):
        path = index_path("spec.volumes", i)
        check_dns_label(vol.name, f"{path}.name", rep)
        if vol.name in seen:
            rep.add(
                f"{path}.name",
                f'duplicate volume "{vol.name}" (also spec.volumes[{seen[vol.name]}])',
            )
        elif vol.name:
            seen[vol.name] = i
        which = vol.WhichOneof("source")
        if which is None:
            rep.add(path, "one of simpleClusterStorage or hostMount is required")
        elif which == "host_mount":
            check_abs_path(vol.host_mount.host_path, f"{path}.hostMount.hostPath", rep)
    return set(seen)


def _check_container(c: kat_pb2.Container, volumes: set[str], rep: Reporter) -> None:
    path = "spec.container"
    check_dns_label(c.name, f"{path}.name", rep, required=False)
    for field, items in (("command", c.command), ("args", c.args)):
        for i, item in enumerate(items):
            if "\0" in item:
                rep.add(index_path(f"{path}.{field}", i), "must not contain NUL characters")
    seen_env: dict[str, int] = {}
    for i, env in enumerate(c.env):
        p = index_path(f"{path}.env", i)
        if not env.name:
            rep.add(f"{p}.name", "required")
        elif not _ENV_NAME.match(env.name):
            rep.add(
                f"{p}.name",
                f'"{env.name}" is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)',
            )
        elif env.name in seen_env:
            rep.add(f"{p}.name", f'duplicate env var "{env.name}" (also env[{seen_env[env.name]}])')
        else:
            seen_env[env.name] = i
        if "\0" in env.value:
            rep.add(f"{p}.value", "must not contain NUL characters")
    seen_mounts: dict[str, int] = {}
    for i, vm in enumerate(c.volume_mounts):
        p = index_path(f"{path}.volumeMounts", i)
        if not vm.name:
            rep.add(f"{p}.name", "required")
        elif vm.name not in volumes:
            rep.add(f"{p}.name", f'no volume named "{vm.name}" in spec.volumes')
        check_abs_path(vm.mount_path, f"{p}.mountPath", rep)
        mount = vm.mount_path.rstrip("/")
        if mount and mount in seen_mounts:
            rep.add(
                f"{p}.mountPath",
                f'"{vm.mount_path}" is already mounted by volumeMounts[{seen_mounts[mount]}]',
            )
        elif mount:
            seen_mounts[mount] = i
        if vm.sub_path:
            check_rel_path(vm.sub_path, f"{p}.subPath", rep)
    if c.HasField("resources"):
        _check_resources(c.resources, f"{path}.resources", rep)


def _check_resources(res: kat_pb2.ResourceRequirements, path: str, rep: Reporter) -> None:
    parsed: dict[str, dict[str, int]] = {"requests": {}, "limits": {}}
    for group in ("requests", "limits"):
        rl: kat_pb2.ResourceList = getattr(res, group)
        for name, parse in (("cpu", quantity.parse_cpu), ("memory", quantity.parse_memory)):
            text = getattr(rl, name)
            p = f"{path}.{group}.{name}"
            if not text:
                if rep.written(p):
                    rep.add(p, "must not be empty")
                continue
            try:
                parsed[group][name] = parse(text)
            except ValueError as e:
                rep.add(p, str(e))
    for name in ("cpu", "memory"):
        limit = parsed["limits"].get(name)
        request = parsed["requests"].get(name)
        if limit is None:
            continue
        if limit == 0:
            rep.add(f"{path}.limits.{name}", "must be greater than 0")
        elif request is not None and limit < request:
            shown = getattr(res.requests, name)
            rep.add(f"{path}.limits.{name}", f"must be >= requests.{name} ({shown})")
    if res.HasField("gpu"):
        check_min(res.gpu.min_vram_mb, 0, f"{path}.gpu.minVRAM_MB", rep)


# ------------------------------------------------------------------ VirtualLoadBalancer


def validate_virtual_load_balancer(v: kat_pb2.VirtualLoadBalancer, rep: Reporter) -> None:
    check_envelope(v, rep, namespaced=True)
    if not v.HasField("spec"):
        rep.add("spec", "required (ports, healthCheck, ingress)")
        return
    spec = v.spec
    names: dict[str, int] = {}
    numbers: dict[int, int] = {}
    seen_ports: dict[tuple[int, int], int] = {}
    for i, port in enumerate(spec.ports):
        p = index_path("spec.ports", i)
        if port.name:
            check_dns_label(port.name, f"{p}.name", rep)
            if port.name in names:
                rep.add(
                    f"{p}.name",
                    f'duplicate port name "{port.name}" (also ports[{names[port.name]}])',
                )
            else:
                names[port.name] = i
        elif len(spec.ports) > 1:
            rep.add(f"{p}.name", "required when there is more than one port")
        check_port(port.container_port, f"{p}.containerPort", rep)
        proto = port.protocol or kat_pb2.ServicePort.TCP
        key = (port.container_port, proto)
        if port.container_port and key in seen_ports:
            proto_name = kat_pb2.ServicePort.Protocol.Name(proto)
            rep.add(
                f"{p}.containerPort",
                f"duplicate port {port.container_port}/{proto_name} "
                f"(also ports[{seen_ports[key]}])",
            )
        else:
            seen_ports[key] = i
        numbers.setdefault(port.container_port, i)
    if spec.HasField("health_check"):
        _check_health(spec.health_check, rep)
    seen_rules: dict[tuple[str, str], int] = {}
    for i, rule in enumerate(spec.ingress):
        p = index_path("spec.ingress", i)
        host = rule.host.removeprefix("*.")
        if not rule.host:
            rep.add(f"{p}.host", "required")
        elif not is_dns_subdomain(host):
            rep.add(f"{p}.host", f'"{rule.host}" is not a valid lower-case host name')
        if rule.path and not rule.path.startswith("/"):
            rep.add(f"{p}.path", f'"{rule.path}" must start with /')
        route = (rule.host, rule.path or defaults.INGRESS_PATH)
        if route in seen_rules:
            rep.add(
                p, f"duplicate rule for {route[0]}{route[1]} (also ingress[{seen_rules[route]}])"
            )
        else:
            seen_rules[route] = i
        if rule.service_port_name and rule.service_port:
            rep.add(f"{p}.servicePort", "set either servicePortName or servicePort, not both")
        elif rule.service_port_name:
            if rule.service_port_name not in names:
                rep.add(
                    f"{p}.servicePortName",
                    f'no port named "{rule.service_port_name}" in spec.ports',
                )
        elif rule.service_port:
            if rule.service_port not in numbers:
                rep.add(f"{p}.servicePort", f"no containerPort {rule.service_port} in spec.ports")
        elif not spec.ports:
            rep.add(p, "needs a port: spec.ports is empty")
        elif len(spec.ports) > 1:
            rep.add(
                p, "servicePortName or servicePort is required when there is more than one port"
            )


def _check_health(hc: kat_pb2.HealthCheck, rep: Reporter) -> None:
    path = "spec.healthCheck"
    if not hc.exec.command:
        rep.add(f"{path}.exec.command", "required: the command to run inside the container")
    check_min(hc.initial_delay_seconds, 0, f"{path}.initialDelaySeconds", rep)
    for name in ("periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold"):
        p = f"{path}.{name}"
        check_min(getattr(hc, attr_name(hc, name)), 1, p, rep, written=rep.written(p))
    period = hc.period_seconds or defaults.HEALTH_PERIOD_SECONDS
    timeout = hc.timeout_seconds or defaults.HEALTH_TIMEOUT_SECONDS
    if timeout > period > 0:
        rep.add(f"{path}.timeoutSeconds", f"{timeout} must not exceed periodSeconds ({period})")


# ------------------------------------------------------------------ JobDefinition


def validate_job_definition(j: kat_pb2.JobDefinition, rep: Reporter) -> None:
    check_envelope(j, rep, namespaced=True)
    spec = j.spec
    if spec.schedule or rep.written("spec.schedule"):
        try:
            cron.parse(spec.schedule)
        except ValueError as e:
            rep.add("spec.schedule", str(e))
    for name, low in (("completions", 1), ("parallelism", 1), ("backoffLimit", 0)):
        attr = attr_name(spec, name)
        if spec.HasField(attr):
            check_min(getattr(spec, attr), low, f"spec.{name}", rep)
    if spec.HasField("active_deadline_seconds"):
        check_min(spec.active_deadline_seconds, 1, "spec.activeDeadlineSeconds", rep)


# ------------------------------------------------------------------ BuildDefinition


def validate_build_definition(b: kat_pb2.BuildDefinition, rep: Reporter) -> None:
    check_envelope(b, rep, namespaced=True)
    spec = b.spec
    check_rel_path(spec.build_context, "spec.buildContext", rep)
    check_rel_path(spec.dockerfile_path, "spec.dockerfilePath", rep)
    for key in sorted(spec.build_args):
        if not _ENV_NAME.match(key):
            rep.add(key_path("spec.buildArgs", key), f'"{key}" is not a valid build argument name')
    if spec.target_stage and not _STAGE.match(spec.target_stage):
        rep.add("spec.targetStage", f'"{spec.target_stage}" is not a valid stage name')
    if spec.platform and not _PLATFORM.match(spec.platform):
        rep.add(
            "spec.platform", f'"{spec.platform}" must look like os/arch[/variant], e.g. linux/amd64'
        )
    if spec.HasField("cache"):
        if not spec.cache.registry_path:
            rep.add("spec.cache.registryPath", "required")
        else:
            check_image(spec.cache.registry_path, "spec.cache.registryPath", rep, tag_allowed=False)


# ------------------------------------------------------------------ Namespace


def validate_namespace(n: kat_pb2.Namespace, rep: Reporter) -> None:
    check_envelope(n, rep, namespaced=False)


# ------------------------------------------------------------------ ClusterConfiguration

MAX_NODE_PREFIX = 30


def validate_cluster_config(c: kat_pb2.ClusterConfiguration, rep: Reporter) -> None:
    """Validate a configuration with defaults already applied."""
    check_envelope(c, rep, namespaced=False)
    spec = c.spec
    cluster = _cidr(spec.cluster_cidr, "spec.clusterCIDR", rep)
    service = _cidr(spec.service_cidr, "spec.serviceCIDR", rep)
    if cluster and service and cluster.overlaps(service):
        rep.add("spec.serviceCIDR", f"{service} overlaps clusterCIDR {cluster}")
    bits = spec.node_subnet_bits
    if bits < 1:
        rep.add("spec.nodeSubnetBits", f"must be >= 1, got {bits}")
    elif cluster:
        prefix = cluster.prefixlen + bits
        if prefix > MAX_NODE_PREFIX:
            rep.add(
                "spec.nodeSubnetBits",
                f"{bits} bits on {cluster} gives /{prefix} node subnets; "
                f"at most /{MAX_NODE_PREFIX} leaves room for instances",
            )
    if not is_dns_subdomain(spec.cluster_domain):
        rep.add("spec.clusterDomain", f'"{spec.cluster_domain}" is not a valid lower-case DNS name')
    used: dict[int, str] = {}
    for name in (
        "apiPort",
        "joinPort",
        "agentPort",
        "etcdClientPort",
        "etcdPeerPort",
        "wireguardPort",
        "ingressHTTPPort",
        "ingressHTTPSPort",
        "metricsPort",
    ):
        value = getattr(spec, attr_name(spec, name))
        p = f"spec.{name}"
        if not 1 <= value <= 65535:
            rep.add(p, f"{value} is not a valid port (1-65535)")
        elif value in used:
            rep.add(p, f"{value} is also used by {used[value]}")
        else:
            used[value] = name
    for name in ("volumeBasePath", "backupPath"):
        value = getattr(spec, attr_name(spec, name))
        check_abs_path(value, f"spec.{name}", rep)
    for i, prefix in enumerate(spec.host_mount_allowed_paths):
        problem = hostpaths.allowed_prefix_problem(prefix)
        if problem:
            rep.add(index_path("spec.hostMountAllowedPaths", i), problem)
    for name in (
        "backupIntervalMinutes",
        "agentTickSeconds",
        "nodeLossTimeoutSeconds",
        "backupRetention",
        "auditRetentionDays",
        "certificateLifetimeHours",
    ):
        value = getattr(spec, attr_name(spec, name))
        check_min(value, 1, f"spec.{name}", rep)
    if 0 < spec.certificate_lifetime_seconds < 30:
        # shorter would leave a renewal too little time on a loaded machine
        rep.add("spec.certificateLifetimeSeconds", "must be at least 30 (or unset)")
    if spec.certificate_lifetime_hours > 24 * 3000:
        rep.add("spec.certificateLifetimeHours", "must be shorter than the CA's 10 years")
    try:
        if quantity.parse_memory(spec.container_log_max_size) < 4096:
            rep.add("spec.containerLogMaxSize", "must be at least 4Ki")
    except ValueError as e:
        rep.add("spec.containerLogMaxSize", str(e))
    tick, loss = spec.agent_tick_seconds, spec.node_loss_timeout_seconds
    if tick >= 1 and loss >= 1 and loss <= tick:
        rep.add(
            "spec.nodeLossTimeoutSeconds",
            f"{loss} must be greater than agentTickSeconds ({tick})",
        )


def _cidr(text: str, path: str, rep: Reporter) -> ipaddress.IPv4Network | None:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        rep.add(path, f'invalid CIDR "{text}": {e}')
        return None
    if not isinstance(net, ipaddress.IPv4Network):
        rep.add(path, f'"{text}" must be an IPv4 CIDR')
        return None
    if "/" not in text:
        rep.add(path, f'"{text}" needs a prefix length, e.g. {text}/16')
        return None
    return net
