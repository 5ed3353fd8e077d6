"""What `katcall top` shows of this node: each instance's cpu and memory use, from its
Podman service's container stats. Two samples SAMPLE_SECONDS apart give the cpu use over
that interval (Podman's own one-shot "CPU" is the average since the container started)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from api.v1alpha1 import kat_pb2
from kat_agent.node.instance_state import InstanceState
from kat_agent.node.podman.errors import ContainerRuntimeError
from kat_agent.node.podman.runtime import ContainerStats, RuntimeBackend

SAMPLE_SECONDS = 1.0


def cpu_cores(first: ContainerStats, second: ContainerStats) -> float:
    wall = second.system_nanos - first.system_nanos
    used = second.cpu_nanos - first.cpu_nanos
    return max(0.0, used / wall) if wall > 0 else 0.0


async def _sample(backend: RuntimeBackend, cids: list[str]) -> dict[str, ContainerStats]:
    """One sample of each container. Podman fails the whole call when one of them is gone
    (removed meanwhile): then each is asked alone. Podman down: no numbers, no failure."""
    try:
        return await backend.runtime.stats(cids)
    except ContainerRuntimeError:
        if len(cids) == 1:
            return {}
    out: dict[str, ContainerStats] = {}
    for cid in cids:
        with contextlib.suppress(ContainerRuntimeError):
            out.update(await backend.runtime.stats([cid]))
    return out


async def instance_stats(
    states: Iterable[InstanceState], namespace: str, interval: float = SAMPLE_SECONDS
) -> list[kat_pb2.InstanceStats]:
    """Every running instance of `namespace` ("" or "*": all) on this node."""
    by_backend: dict[str, tuple[RuntimeBackend, dict[str, InstanceState]]] = {}
    for st in states:
        obs, backend = st.observed, st.backend
        if obs is None or backend is None or not obs.running:
            continue
        if namespace not in ("", "*") and st.namespace != namespace:
            continue
        by_backend.setdefault(backend.key, (backend, {}))[1][obs.container_id] = st
    if not by_backend:
        return []
    groups = list(by_backend.values())
    first = await asyncio.gather(*(_sample(b, list(c)) for b, c in groups))
    await asyncio.sleep(interval)
    second = await asyncio.gather(*(_sample(b, list(c)) for b, c in groups))
    out = []
    for (_, containers), before, after in zip(groups, first, second, strict=True):
        for cid, st in containers.items():
            a, b = before.get(cid), after.get(cid)
            if b is None:
                continue  # stopped meanwhile
            out.append(
                kat_pb2.InstanceStats(
                    instance_id=st.id,
                    namespace=st.namespace,
                    workload=st.workload,
                    cpu_cores=cpu_cores(a, b) if a is not None else 0.0,
                    memory_bytes=b.memory_bytes,
                    memory_limit_bytes=b.memory_limit_bytes,
                )
            )
    return sorted(out, key=lambda s: s.instance_id)
