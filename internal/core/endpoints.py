"""The cluster's service-discovery view, decided from the leader's instance records.

An instance is an endpoint of its workload when the leader's record says it is ready
(reported RUNNING and passing its health checks, see `reconcile`), it is not being stopped
(TERMINATING) or finished, it is placed on a node and it has an address. Everything that
answers names or proxies traffic (DNS on every node, HAProxy on ingress nodes) follows this
one rule, so that no part ever routes to an instance the others consider gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from api.v1alpha1 import kat_pb2

_Inst = kat_pb2.Instance
_NOT_SERVING = (_Inst.TERMINATING, _Inst.SUCCEEDED, _Inst.FAILED, _Inst.PENDING)


def is_endpoint(record: kat_pb2.Instance) -> bool:
    return bool(record.ready and record.ip and record.node) and record.phase not in _NOT_SERVING


def build_endpoint_set(
    records: Iterable[kat_pb2.Instance],
    bundles: Mapping[tuple[str, str], kat_pb2.Bundle],
) -> list[kat_pb2.ServiceEndpoints]:
    """One entry per workload in `bundles` ((namespace, name) -> its current bundle), with
    its ready instances (sorted by id), its VirtualLoadBalancer ports and ingress rules.
    Records of workloads not in `bundles` (deleted) are ignored."""
    ready: dict[tuple[str, str], list[kat_pb2.Instance]] = {}
    for r in records:
        if is_endpoint(r):
            ready.setdefault((r.namespace, r.workload), []).append(r)
    out: list[kat_pb2.ServiceEndpoints] = []
    for key in sorted(bundles):
        bundle = bundles[key]
        w = bundle.workload
        vlb = bundle.virtual_load_balancer.spec
        svc = kat_pb2.ServiceEndpoints(
            namespace=key[0],
            workload=key[1],
            endpoints=[
                kat_pb2.Endpoint(instance_id=r.id, ip=r.ip, node=r.node)
                for r in sorted(ready.get(key, []), key=lambda r: r.id)
            ],
            ports=vlb.ports,
            ingress=vlb.ingress,
            desired=w.spec.replicas if w.spec.type == kat_pb2.WorkloadSpec.SERVICE else 0,
        )
        out.append(svc)
    return out


INGRESS_LABEL = "kat.dws.rip/ingress"


def ingress_nodes(nodes: Iterable[kat_pb2.Node]) -> list[str]:
    """The nodes labelled `kat.dws.rip/ingress=true`, sorted."""
    return sorted(
        n.metadata.name for n in nodes if n.metadata.labels.get(INGRESS_LABEL, "") == "true"
    )


def nodes_to_hear(nodes: Iterable[kat_pb2.Node], heard: Iterable[str]) -> list[str]:
    """Nodes a new leader should hear from before it trusts its own endpoint view: every
    node not already known to be lost (NOT_READY), minus those heard from."""
    seen = set(heard)
    return sorted(
        n.metadata.name
        for n in nodes
        if n.status.condition != kat_pb2.NodeStatus.NOT_READY and n.metadata.name not in seen
    )
