"""Server-independent defaults, written into the stored protos.

Loading keeps resources as written; `apply_defaults` (bundles) and `apply_cluster_defaults`
fill in what was left out. Both are idempotent. A zero in a plain proto3 field means "unset";
for cluster configuration the loader passes the paths the file actually wrote, so that a
written `agentPort: 0` stays 0 and is reported as invalid instead of being replaced.
"""

from __future__ import annotations

from datetime import datetime

from api.v1alpha1 import kat_pb2

API_VERSION = "kat.dws.rip/v1alpha1"
DEFAULT_NAMESPACE = "default"


def object_ref(namespace: str, name: str) -> str:
    """namespace/name for messages, with "" as the default namespace."""
    return f"{namespace or DEFAULT_NAMESPACE}/{name}"


def new_namespace(name: str, now: datetime) -> kat_pb2.Namespace:
    """The record of a namespace created on first use (or `katcall create namespace`)."""
    ns = kat_pb2.Namespace(api_version=API_VERSION, kind="Namespace")
    ns.metadata.name = name
    ns.metadata.creation_timestamp.FromDatetime(now)
    return ns


REPLICAS = 1
MAX_SURGE = "1"
HEALTH_PERIOD_SECONDS = 10
HEALTH_TIMEOUT_SECONDS = 1
HEALTH_SUCCESS_THRESHOLD = 1
HEALTH_FAILURE_THRESHOLD = 3
INGRESS_PATH = "/"
JOB_COMPLETIONS = 1
JOB_PARALLELISM = 1
JOB_BACKOFF_LIMIT = 6
BUILD_CONTEXT = "."
DOCKERFILE_PATH = "Dockerfile"

CLUSTER_DEFAULTS: dict[str, str | int] = {
    "cluster_cidr": "10.100.0.0/16",
    "service_cidr": "10.200.0.0/16",
    "node_subnet_bits": 7,
    "cluster_domain": "kat.cluster.local",
    "agent_port": 9116,
    "api_port": 9115,
    "etcd_peer_port": 2380,
    "etcd_client_port": 2379,
    "volume_base_path": "/var/lib/kat/volumes",
    "backup_path": "/var/lib/kat/backups",
    "backup_interval_minutes": 30,
    "agent_tick_seconds": 15,
    "node_loss_timeout_seconds": 60,
    "backup_retention": 5,
    "wireguard_port": 51820,
    # Not in the spec: TLS without client certificates for Join (next to api and agent).
    "join_port": 9117,
    "ingress_http_port": 80,
    "ingress_https_port": 443,
    "metrics_port": 9119,
    "audit_retention_days": 90,
    "container_log_max_size": "10Mi",
    "certificate_lifetime_hours": 8760,
}

_Spec = kat_pb2.WorkloadSpec
_Restart = kat_pb2.RestartPolicy
_Update = kat_pb2.UpdateStrategy


def apply_defaults(bundle: kat_pb2.Bundle) -> kat_pb2.Bundle:
    """Fill in defaults in place (and return the bundle, for chaining)."""
    w = bundle.workload
    _meta_defaults(w.metadata)
    spec = w.spec
    kind = spec.type
    if kind == _Spec.SERVICE and not spec.HasField("replicas"):
        spec.replicas = REPLICAS
    if kind in (_Spec.SERVICE, _Spec.DAEMON_SERVICE):
        us = spec.update_strategy
        if us.type == _Update.TYPE_UNSPECIFIED:
            us.type = _Update.ROLLING
        if us.type == _Update.ROLLING and not us.max_surge:
            us.max_surge = MAX_SURGE
    rp = spec.restart_policy
    if rp.condition == _Restart.CONDITION_UNSPECIFIED:
        # Jobs retry by starting new instances (backoffLimit), so they do not restart in place.
        rp.condition = _Restart.NEVER if kind == _Spec.JOB else _Restart.ALWAYS
    if spec.HasField("container") and not spec.container.name:
        spec.container.name = w.metadata.name
    for tol in spec.tolerations:
        if tol.operator == kat_pb2.Toleration.OPERATOR_UNSPECIFIED:
            tol.operator = kat_pb2.Toleration.EQUAL
    res = spec.container.resources
    if res.HasField("gpu") and res.gpu.driver == kat_pb2.GPURequest.DRIVER_UNSPECIFIED:
        res.gpu.driver = kat_pb2.GPURequest.ANY
    for vol in spec.volumes:
        if vol.HasField("host_mount") and not vol.host_mount.ensure_type:
            vol.host_mount.ensure_type = kat_pb2.HostMount.DIRECTORY_OR_CREATE

    if bundle.HasField("virtual_load_balancer"):
        _vlb_defaults(bundle.virtual_load_balancer)

    if kind == _Spec.JOB:
        job = bundle.job_definition
        _companion(job, "JobDefinition", w.metadata)
        js = job.spec
        if not js.HasField("completions"):
            js.completions = JOB_COMPLETIONS
        if not js.HasField("parallelism"):
            js.parallelism = JOB_PARALLELISM
        if not js.HasField("backoff_limit"):
            js.backoff_limit = JOB_BACKOFF_LIMIT

    if spec.source.HasField("git"):
        build = bundle.build_definition
        _companion(build, "BuildDefinition", w.metadata)
        if not build.spec.build_context:
            build.spec.build_context = BUILD_CONTEXT
        if not build.spec.dockerfile_path:
            build.spec.dockerfile_path = DOCKERFILE_PATH
    return bundle


def _meta_defaults(meta: kat_pb2.ObjectMeta) -> None:
    if not meta.namespace:
        meta.namespace = DEFAULT_NAMESPACE


def _companion(
    msg: kat_pb2.JobDefinition | kat_pb2.BuildDefinition, kind: str, meta: kat_pb2.ObjectMeta
) -> None:
    """Create the implied companion resource of a bundle, or complete an existing one."""
    if not msg.api_version:
        msg.api_version = API_VERSION
    if not msg.kind:
        msg.kind = kind
    if not msg.metadata.name:
        msg.metadata.name = meta.name
    if not msg.metadata.namespace:
        msg.metadata.namespace = meta.namespace or DEFAULT_NAMESPACE
    msg.spec.SetInParent()


def _vlb_defaults(vlb: kat_pb2.VirtualLoadBalancer) -> None:
    _meta_defaults(vlb.metadata)
    for port in vlb.spec.ports:
        if port.protocol == kat_pb2.ServicePort.PROTOCOL_UNSPECIFIED:
            port.protocol = kat_pb2.ServicePort.TCP
    if vlb.spec.HasField("health_check"):
        hc = vlb.spec.health_check
        hc.period_seconds = hc.period_seconds or HEALTH_PERIOD_SECONDS
        hc.timeout_seconds = hc.timeout_seconds or HEALTH_TIMEOUT_SECONDS
        hc.success_threshold = hc.success_threshold or HEALTH_SUCCESS_THRESHOLD
        hc.failure_threshold = hc.failure_threshold or HEALTH_FAILURE_THRESHOLD
    ports = vlb.spec.ports
    for rule in vlb.spec.ingress:
        if not rule.path:
            rule.path = INGRESS_PATH
        if not rule.service_port_name and not rule.service_port and len(ports) == 1:
            rule.service_port = ports[0].container_port


def apply_cluster_defaults(
    config: kat_pb2.ClusterConfiguration, written: frozenset[str] = frozenset()
) -> kat_pb2.ClusterConfiguration:
    """Fill unset fields of the spec; paths in `written` ("spec.agentPort") are kept as is."""
    spec = config.spec
    for field in spec.DESCRIPTOR.fields:
        if f"spec.{field.json_name}" in written or field.name not in CLUSTER_DEFAULTS:
            continue
        if not getattr(spec, field.name):
            setattr(spec, field.name, CLUSTER_DEFAULTS[field.name])
    return config
