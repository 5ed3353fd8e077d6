"""What runs: a container as Podman's inspect document describes it, in KAT's terms
(`ObservedContainer`: instance, generation, state, exit, times, address)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kat_agent.node.podman.spec import (
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_NAMESPACE,
    LABEL_WORKLOAD,
)

_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _parse_time(text: str | None) -> datetime | None:
    """Podman's RFC 3339 times (nanoseconds; year 1 for "never") -> aware datetime."""
    if not text:
        return None
    m = _TIME.match(text)
    if not m:
        return None
    base, frac, zone = m.groups()
    value = datetime.fromisoformat(
        f"{base}.{(frac or '0')[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}"
    )
    return None if value.year <= 1 else value.astimezone(UTC)


_STATES = {"stopped": "exited", "configured": "created", "initialized": "created"}


@dataclass(frozen=True)
class ObservedContainer:
    """A container as Podman reports it. `state` is running, exited, created, paused
    (or Podman's word for anything else); `exit_code` is None unless it exited. The
    times are Podman's: for a very short run FinishedAt can precede StartedAt."""

    container_id: str
    name: str
    namespace: str
    workload: str
    instance_id: str
    generation: int
    state: str
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None
    restart_count: int
    image: str
    oom_killed: bool
    labels: Mapping[str, str]
    # The container's address as Podman assigned it ("" without a network of its own,
    # e.g. rootless slirp4netns); with several networks, the one named in PREFERRED_NETWORK
    # if present, else the first in name order.
    ip: str = ""
    pid: int = 0  # of the container's init process while it runs (its namespaces)
    monitor_pid: int = 0  # its conmon's, while Podman has not seen it exit
    # Podman shows a passing state (stopping, ...) but that conmon no longer runs: the
    # record outlived the processes and Podman will not move it on (orphans.monitor_gone)
    monitor_gone: bool = False

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> ObservedContainer:
        config = data.get("Config") or {}
        labels = dict(config.get("Labels") or {})
        st = data.get("State") or {}
        status = str(st.get("Status") or "unknown")
        state = _STATES.get(status, status)
        try:
            generation = int(labels.get(LABEL_GENERATION) or 0)
        except ValueError:
            generation = 0
        return cls(
            container_id=str(data["Id"]),
            name=str(data.get("Name") or "").lstrip("/"),
            namespace=labels.get(LABEL_NAMESPACE, ""),
            workload=labels.get(LABEL_WORKLOAD, ""),
            instance_id=labels.get(LABEL_INSTANCE, ""),
            generation=generation,
            state=state,
            exit_code=int(st.get("ExitCode") or 0) if state == "exited" else None,
            started_at=_parse_time(st.get("StartedAt")),
            finished_at=_parse_time(st.get("FinishedAt")) if state == "exited" else None,
            restart_count=int(data.get("RestartCount") or 0),
            image=str(data.get("ImageName") or config.get("Image") or ""),
            oom_killed=bool(st.get("OOMKilled")),
            labels=labels,
            ip=_address(data.get("NetworkSettings") or {}),
            pid=int(st.get("Pid") or 0) if state == "running" else 0,
            monitor_pid=int(st.get("ConmonPid") or 0) if state != "exited" else 0,
        )


PREFERRED_NETWORK = "kat"


def _address(settings: Mapping[str, Any]) -> str:
    networks = settings.get("Networks") or {}
    names = sorted(networks, key=lambda n: (n != PREFERRED_NETWORK, n))
    for name in names:
        ip = (networks.get(name) or {}).get("IPAddress")
        if ip:
            return str(ip)
    return str(settings.get("IPAddress") or "")
