"""What to run: an assigned instance and its workload's spec (protos) translated into one
container (`InstanceSpec`), and that into the body of Podman's container-create call.

Choices:
- every container KAT starts is named `kat_<namespace>_<workload>_<instance-id>` and
  labelled (LABEL_*), so that the agent finds it again after a restart and adopts it;
- command/args follow Kubernetes: `command` replaces the image's ENTRYPOINT (and then its
  CMD is not used), `args` replaces its CMD;
- limits.cpu becomes a CFS quota over a 100 ms period (at least 1 ms); limits.memory the
  memory limit, with swap capped to the same value (no extra swap). Requests are for the
  scheduler only;
- the restart policy is "no": restarts are the agent's (SPEC section 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.v1alpha1 import kat_pb2
from internal.core.node_plan import (
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_WORKLOAD,
)
from internal.manifests.quantity import parse_cpu, parse_memory
from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind
from kat_agent.node.podman.mounts import (
    ClusterStorageVolume,
    HostPathVolume,
    MountSpec,
    VolumeSource,
)

CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
LOG_DRIVER = "k8s-file"


@dataclass(frozen=True)
class InstanceSpec:
    """One container to run: an instance of a workload at a generation."""

    namespace: str
    workload: str
    instance_id: str
    generation: int
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    volumes: Mapping[str, VolumeSource] = field(default_factory=dict)
    mounts: tuple[MountSpec, ...] = ()
    # For the networking issue: a named Podman network and an address in it.
    network: str | None = None
    static_ip: str | None = None
    # The container's /etc/resolv.conf: nameservers and search domains (empty: Podman's).
    dns_servers: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def container_name(self) -> str:
        return f"kat_{self.namespace}_{self.workload}_{self.instance_id}"

    def labels(self) -> dict[str, str]:
        return {
            **self.extra_labels,
            LABEL_WORKLOAD: self.workload,
            LABEL_NAMESPACE: self.namespace,
            LABEL_INSTANCE: self.instance_id,
            LABEL_GENERATION: str(self.generation),
            LABEL_MANAGED: "true",
        }

    @classmethod
    def from_proto(
        cls,
        instance: kat_pb2.Instance,
        spec: kat_pb2.WorkloadSpec,
        *,
        image: str | None = None,
        network: str | None = None,
        static_ip: str | None = None,
    ) -> InstanceSpec:
        """From an assigned instance and its workload's spec. `image` overrides
        spec.source.image (an image built from spec.source.git)."""
        where = f"workload {instance.namespace}/{instance.workload}"
        ref = image or spec.source.image
        if not ref:
            raise ContainerRuntimeError(ErrorKind.INVALID, f"{where}: no image to run")
        container = spec.container
        limits = container.resources.limits
        try:
            cpu = parse_cpu(limits.cpu) if limits.cpu else None
            memory = parse_memory(limits.memory) if limits.memory else None
        except ValueError as exc:
            raise ContainerRuntimeError(ErrorKind.INVALID, f"{where}: {exc}") from exc
        volumes: dict[str, VolumeSource] = {}
        for v in spec.volumes:
            kind = v.WhichOneof("source")
            if kind == "host_mount":
                ensure = kat_pb2.HostMount.EnsureType.Name(v.host_mount.ensure_type)
                volumes[v.name] = HostPathVolume(
                    Path(v.host_mount.host_path),
                    "" if ensure == "ENSURE_TYPE_UNSPECIFIED" else ensure,
                )
            elif kind == "simple_cluster_storage":
                volumes[v.name] = ClusterStorageVolume()
            else:
                raise ContainerRuntimeError(
                    ErrorKind.INVALID, f"{where}: volume {v.name!r} has no source"
                )
        return cls(
            namespace=instance.namespace,
            workload=instance.workload,
            instance_id=instance.id,
            generation=instance.generation,
            image=ref,
            command=tuple(container.command),
            args=tuple(container.args),
            env=tuple((e.name, e.value) for e in container.env),
            cpu_millis=cpu,
            memory_bytes=memory,
            volumes=volumes,
            mounts=tuple(
                MountSpec(m.name, m.mount_path, m.sub_path, m.read_only)
                for m in container.volume_mounts
            ),
            network=network,
            static_ip=static_ip,
        )


def create_body(
    spec: InstanceSpec, mounts: list[dict[str, Any]], log_max_bytes: int = 0
) -> dict[str, Any]:
    """The body of Podman's containers/create for `spec`, with its prepared bind mounts."""
    body: dict[str, Any] = {
        "name": spec.container_name,
        "image": spec.image,
        "labels": spec.labels(),
        "env": dict(spec.env),
        "mounts": mounts,
        "log_configuration": {
            "driver": LOG_DRIVER,
            **({"size": log_max_bytes} if log_max_bytes > 0 else {}),
        },
        "restart_policy": "no",
    }
    if spec.command:
        body["entrypoint"] = list(spec.command)
    if spec.args:
        body["command"] = list(spec.args)
    limits: dict[str, Any] = {}
    if spec.memory_bytes:
        limits["memory"] = {"limit": spec.memory_bytes, "swap": spec.memory_bytes}
    if spec.cpu_millis:
        quota = max(MIN_CPU_QUOTA_US, spec.cpu_millis * CPU_PERIOD_US // 1000)
        limits["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
    if limits:
        body["resource_limits"] = limits
    if spec.network:
        body["netns"] = {"nsmode": "bridge"}
        body["networks"] = {
            spec.network: {"static_ips": [spec.static_ip]} if spec.static_ip else {}
        }
    if spec.dns_servers:
        body["dns_server"] = list(spec.dns_servers)
    if spec.dns_search:
        body["dns_search"] = list(spec.dns_search)
    return body
