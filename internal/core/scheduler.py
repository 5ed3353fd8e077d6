"""Instance placement: filter the nodes, score the survivors, place one instance at a time.

Pure logic: no I/O and no clock. The leader builds a `Cluster` from the stored nodes and the
instances already placed (once per reconcile), then asks it to place the new instances of each
workload; every placement updates the in-memory accounting, so later placements (of the same
or another workload) see it.

Filters, in this order; a node is counted under the first one that rejects it, so the counts
in the "unschedulable" reason add up to the number of nodes:

1. `not ready`: `status.condition` is not READY.
2. `cordoned`: `spec.unschedulable`.
3. `node selector mismatch`: a `spec.nodeSelector` label is missing or differs.
4. `untolerated taint`: a NO_SCHEDULE taint that no toleration matches.
5. `no matching GPU`: a GPU is requested and no device of that driver (ANY: any driver) has
   at least `minVRAM_MB` of VRAM in total.
6. `insufficient cpu` / `insufficient memory`: the requests do not fit into allocatable minus
   the requests of the non-terminal instances (not SUCCEEDED/FAILED) already on the node.
7. `insufficient GPU memory`: no device of that driver has `minVRAM_MB` of VRAM left. VRAM is
   accounted per device: an instance reserves `minVRAM_MB` on one device (best fit: the one
   with the least VRAM left that still fits), so several small users can share a GPU.
8. `host port in use`: one of the requested host ports is already taken on the node.

Score (lexicographic, lower is better): copies of the same workload already on the node
(spread, dominant), then the number of PREFER_NO_SCHEDULE taints not tolerated, then least
allocated (the sum of the free cpu and memory fractions after placing, higher is better),
then the node name, so that placement is deterministic.

Requests fall back to limits when only limits are written (as in Kubernetes): an instance
limited to 64Mi is placed as if it requested 64Mi.

Performance: nodes become small mutable `NodeState` records once; per placement call the
static filters run once per node and the candidates go into a heap keyed by score. Only the
chosen node's score changes after a placement, and free resources only shrink during a call,
so a node that does not fit any more can be dropped for good: placing R instances on N nodes
costs O(N + R log N).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from api.v1alpha1 import kat_pb2
from internal.manifests import quantity

_Instance = kat_pb2.Instance
_Taint = kat_pb2.Taint
_GPU = kat_pb2.GPURequest

TERMINAL_PHASES = frozenset({_Instance.SUCCEEDED, _Instance.FAILED})

# Rejection reasons, in filter order (also the order they are listed in).
NOT_READY = "not ready"
CORDONED = "cordoned"
SELECTOR_MISMATCH = "node selector mismatch"
UNTOLERATED_TAINT = "untolerated taint"
NO_GPU = "no matching GPU"
INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_MEMORY = "insufficient memory"
INSUFFICIENT_GPU_MEMORY = "insufficient GPU memory"
PORT_IN_USE = "host port in use"
REASONS = (
    NOT_READY,
    CORDONED,
    SELECTOR_MISMATCH,
    UNTOLERATED_TAINT,
    NO_GPU,
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
    INSUFFICIENT_GPU_MEMORY,
    PORT_IN_USE,
)


def workload_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True, slots=True)
class Requests:
    """What one instance of a workload reserves on its node. Build once per workload."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu_driver: int = _GPU.DRIVER_UNSPECIFIED  # DRIVER_UNSPECIFIED: no GPU wanted
    gpu_min_vram_mb: int = 0
    host_ports: frozenset[int] = frozenset()

    @property
    def wants_gpu(self) -> bool:
        return self.gpu_driver != _GPU.DRIVER_UNSPECIFIED

    @classmethod
    def from_spec(cls, spec: kat_pb2.WorkloadSpec, host_ports: Iterable[int] = ()) -> Requests:
        """Parse the container's requests (limits where a request is not written).

        The schema has no host-port field: instances get their own overlay address, so by
        default nothing is bound on the host. A caller that does publish ports passes them.
        Raises ValueError on an unparsable quantity (validation refuses those earlier).
        """
        res = spec.container.resources
        cpu = res.requests.cpu or res.limits.cpu
        memory = res.requests.memory or res.limits.memory
        driver, vram = _GPU.DRIVER_UNSPECIFIED, 0
        if res.HasField("gpu"):
            driver = res.gpu.driver or _GPU.ANY
            vram = max(0, res.gpu.min_vram_mb)
        return cls(
            cpu_millis=quantity.parse_cpu(cpu) if cpu else 0,
            memory_bytes=quantity.parse_memory(memory) if memory else 0,
            gpu_driver=driver,
            gpu_min_vram_mb=vram,
            host_ports=frozenset(host_ports),
        )


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: int  # kat_pb2.Taint.Effect


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    exists: bool = False  # operator EXISTS (else EQUAL)
    value: str = ""
    effect: int = _Taint.EFFECT_UNSPECIFIED  # unspecified: tolerates every effect

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.exists:
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value

    @classmethod
    def from_proto(cls, tol: kat_pb2.Toleration) -> Toleration:
        return cls(
            key=tol.key,
            exists=tol.operator == kat_pb2.Toleration.EXISTS,
            value=tol.value,
            effect=tol.effect,
        )


@dataclass(frozen=True, slots=True)
class WorkloadProfile:
    """Everything placement needs from a workload, parsed once."""

    key: str  # namespace/name, see workload_key()
    requests: Requests = Requests()
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()

    @classmethod
    def from_workload(
        cls, workload: kat_pb2.Workload, host_ports: Iterable[int] = ()
    ) -> WorkloadProfile:
        spec = workload.spec
        return cls(
            key=workload_key(workload.metadata.namespace, workload.metadata.name),
            requests=Requests.from_spec(spec, host_ports),
            node_selector=tuple(sorted(spec.node_selector.items())),
            tolerations=tuple(Toleration.from_proto(t) for t in spec.tolerations),
        )

    def tolerates_all(self, taints: Iterable[Taint]) -> bool:
        return all(any(t.tolerates(taint) for t in self.tolerations) for taint in taints)

    def untolerated(self, taints: Iterable[Taint]) -> int:
        return sum(1 for taint in taints if not any(t.tolerates(taint) for t in self.tolerations))


# ------------------------------------------------------------------ node accounting


@dataclass(slots=True, eq=False)
class NodeState:
    """A node reduced to what placement reads, plus its running accounting."""

    name: str
    ready: bool = True
    unschedulable: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    no_schedule: tuple[Taint, ...] = ()
    prefer_no_schedule: tuple[Taint, ...] = ()
    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: tuple[tuple[int, int], ...] = ()  # (driver, vram_mb) per device
    # Accounting, updated by Cluster.add() and by placements.
    cpu_used: int = 0
    memory_used: int = 0
    gpu_vram_used: list[int] = field(default_factory=list)
    ports_used: set[int] = field(default_factory=set)
    copies: dict[str, int] = field(default_factory=dict)
    # Interned ids of the taint tuples, so a placement call checks each distinct set once.
    _no_schedule_id: int = field(default=0, init=False, repr=False)
    _prefer_id: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.gpu_vram_used) < len(self.gpus):
            self.gpu_vram_used.extend([0] * (len(self.gpus) - len(self.gpu_vram_used)))

    @classmethod
    def from_proto(cls, node: kat_pb2.Node) -> NodeState:
        alloc = node.status.allocatable
        taints = [Taint(t.key, t.value, t.effect) for t in node.spec.taints]
        return cls(
            name=node.metadata.name,
            ready=node.status.condition == kat_pb2.NodeStatus.READY,
            unschedulable=node.spec.unschedulable,
            labels=dict(node.metadata.labels),
            no_schedule=tuple(t for t in taints if t.effect == _Taint.NO_SCHEDULE),
            prefer_no_schedule=tuple(t for t in taints if t.effect == _Taint.PREFER_NO_SCHEDULE),
            cpu_millis=alloc.cpu_millis,
            memory_bytes=alloc.memory_bytes,
            gpus=tuple((g.driver, g.vram_mb) for g in alloc.gpus),
        )

    def free_fraction(self, cpu: int = 0, memory: int = 0) -> float:
        """Free cpu fraction + free memory fraction after reserving cpu/memory more."""
        total = 0.0
        if self.cpu_millis > 0:
            total += (self.cpu_millis - self.cpu_used - cpu) / self.cpu_millis
        if self.memory_bytes > 0:
            total += (self.memory_bytes - self.memory_used - memory) / self.memory_bytes
        return total

    def _gpu_device(self, driver: int, vram: int, *, free: bool) -> int:
        """Best-fit device index for a GPU request, or -1."""
        best, best_left = -1, 0
        for i, (d, total) in enumerate(self.gpus):
            if driver != _GPU.ANY and d != driver:
                continue
            left = total - self.gpu_vram_used[i] if free else total
            if left >= vram and (best < 0 or left < best_left):
                best, best_left = i, left
        return best

    def static_reason(self, profile: WorkloadProfile) -> str | None:
        """The first static filter that rejects the node (None: it passes them all)."""
        if not self.ready:
            return NOT_READY
        if self.unschedulable:
            return CORDONED
        return self._match_reason(profile)

    def _match_reason(self, profile: WorkloadProfile) -> str | None:
        labels = self.labels
        for key, value in profile.node_selector:
            if labels.get(key) != value:
                return SELECTOR_MISMATCH
        if self.no_schedule and not profile.tolerates_all(self.no_schedule):
            return UNTOLERATED_TAINT
        req = profile.requests
        if req.wants_gpu and self._gpu_device(req.gpu_driver, req.gpu_min_vram_mb, free=False) < 0:
            return NO_GPU
        return None

    def fit_reason(self, req: Requests) -> str | None:
        """The first resource filter that rejects the node (None: the requests fit now)."""
        if req.cpu_millis and self.cpu_used + req.cpu_millis > self.cpu_millis:
            return INSUFFICIENT_CPU
        if req.memory_bytes and self.memory_used + req.memory_bytes > self.memory_bytes:
            return INSUFFICIENT_MEMORY
        if req.wants_gpu and self._gpu_device(req.gpu_driver, req.gpu_min_vram_mb, free=True) < 0:
            return INSUFFICIENT_GPU_MEMORY
        if req.host_ports and not self.ports_used.isdisjoint(req.host_ports):
            return PORT_IN_USE
        return None

    def reserve(self, key: str, req: Requests) -> None:
        """Account one instance (no checks: already-placed instances may overcommit)."""
        self.cpu_used += req.cpu_millis
        self.memory_used += req.memory_bytes
        if req.wants_gpu:
            i = self._gpu_device(req.gpu_driver, req.gpu_min_vram_mb, free=True)
            if i < 0:  # overcommitted already: charge the matching device with most left
                i = self._gpu_device(req.gpu_driver, 0, free=True)
            if i >= 0:
                self.gpu_vram_used[i] += req.gpu_min_vram_mb
        if req.host_ports:
            self.ports_used |= req.host_ports
        self.copies[key] = self.copies.get(key, 0) + 1


# ------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    nodes: tuple[str, ...]  # one node name per placed instance, in placement order
    unplaced: int = 0
    reason: str = ""  # why the unplaced ones fit nowhere, "" when all were placed


@dataclass(frozen=True, slots=True)
class DaemonNodes:
    """Where a DAEMON_SERVICE runs.

    `eligible`: nodes that should run a copy and may get a new one now (ready, not cordoned,
    selector matches, NO_SCHEDULE taints tolerated, GPU present when requested).
    `keep`: nodes where an existing copy stays: the selector still matches. A node that is
    not ready or cordoned, or got a new NO_SCHEDULE taint, keeps its copy (cordon and taints
    stop new placements, they do not evict; drain does that). Copies on other nodes stop.
    """

    eligible: frozenset[str]
    keep: frozenset[str]


# ------------------------------------------------------------------ the cluster


class Cluster:
    """Nodes plus what is placed on them. Deterministic; mutated only by placements."""

    def __init__(self, nodes: Iterable[NodeState]) -> None:
        self._nodes = sorted(nodes, key=lambda n: n.name)
        self._by_name = {n.name: n for n in self._nodes}
        if len(self._by_name) != len(self._nodes):
            raise ValueError("duplicate node names")
        intern: dict[tuple[Taint, ...], int] = {(): 0}
        for n in self._nodes:
            n._no_schedule_id = intern.setdefault(n.no_schedule, len(intern))
            n._prefer_id = intern.setdefault(n.prefer_no_schedule, len(intern))
        self._open = [n for n in self._nodes if n.ready and not n.unschedulable]

    @classmethod
    def from_protos(
        cls,
        nodes: Iterable[kat_pb2.Node],
        placed: Iterable[tuple[kat_pb2.Instance, Requests]] = (),
    ) -> Cluster:
        """Build from stored nodes and the placed instances with their workload's requests.

        Instances without a node, in a terminal phase, or on an unknown node are ignored.
        """
        cluster = cls(NodeState.from_proto(n) for n in nodes)
        for inst, req in placed:
            if inst.node and inst.phase not in TERMINAL_PHASES:
                cluster.add(inst.node, workload_key(inst.namespace, inst.workload), req)
        return cluster

    @property
    def nodes(self) -> list[NodeState]:
        return list(self._nodes)

    def node(self, name: str) -> NodeState | None:
        return self._by_name.get(name)

    def add(self, node: str, key: str, req: Requests) -> bool:
        """Account an instance that already runs on `node`; False when the node is unknown."""
        state = self._by_name.get(node)
        if state is None:
            return False
        state.reserve(key, req)
        return True

    def schedule(self, profile: WorkloadProfile, count: int) -> ScheduleResult:
        """Place `count` new instances of one workload, best node first, one at a time."""
        if count <= 0:
            return ScheduleResult(())
        key, req = profile.key, profile.requests
        cpu, mem = req.cpu_millis, req.memory_bytes
        selector = profile.node_selector
        check_gpu = req.wants_gpu
        taint_ok: dict[int, bool] = {0: True}
        penalty: dict[int, int] = {0: 0}
        heap: list[tuple[int, int, float, str, NodeState]] = []
        for n in self._open:
            if selector:
                labels = n.labels
                if any(labels.get(k) != v for k, v in selector):
                    continue
            ok = taint_ok.get(n._no_schedule_id)
            if ok is None:
                ok = taint_ok[n._no_schedule_id] = profile.tolerates_all(n.no_schedule)
            if not ok:
                continue
            if check_gpu and n._gpu_device(req.gpu_driver, req.gpu_min_vram_mb, free=False) < 0:
                continue
            pen = penalty.get(n._prefer_id)
            if pen is None:
                pen = penalty[n._prefer_id] = profile.untolerated(n.prefer_no_schedule)
            heap.append((n.copies.get(key, 0), pen, -n.free_fraction(cpu, mem), n.name, n))
        heapq.heapify(heap)

        placed: list[str] = []
        simple = not check_gpu and not req.host_ports
        while heap and len(placed) < count:
            copies, pen, _, name, n = heap[0]
            if simple:
                fits = (not cpu or n.cpu_used + cpu <= n.cpu_millis) and (
                    not mem or n.memory_used + mem <= n.memory_bytes
                )
            else:
                fits = n.fit_reason(req) is None
            if not fits:
                heapq.heappop(heap)  # resources only shrink during this call
                continue
            n.reserve(key, req)
            placed.append(name)
            heapq.heapreplace(heap, (copies + 1, pen, -n.free_fraction(cpu, mem), name, n))

        missing = count - len(placed)
        if not missing:
            return ScheduleResult(tuple(placed))
        return ScheduleResult(tuple(placed), missing, self.explain(profile))

    def explain(self, profile: WorkloadProfile) -> str:
        """Why an instance of the workload fits nowhere right now, Kubernetes style:
        `0/5 nodes available: 2 not ready, 1 cordoned, 2 insufficient memory`."""
        counts = dict.fromkeys(REASONS, 0)
        available = 0
        for n in self._nodes:
            why = n.static_reason(profile) or n.fit_reason(profile.requests)
            if why is None:
                available += 1
            else:
                counts[why] += 1
        total = len(self._nodes)
        if total == 0:
            return "0/0 nodes available: no nodes registered"
        parts = [f"{c} {why}" for why, c in counts.items() if c]
        text = f"{available}/{total} nodes available"
        return f"{text}: {', '.join(parts)}" if parts else text

    def place_on(self, profile: WorkloadProfile, node: str) -> str | None:
        """Place one instance on a given node (DAEMON_SERVICE). None when placed, else the
        reason, e.g. `node n1: insufficient memory`."""
        n = self._by_name.get(node)
        if n is None:
            return f"node {node}: not found"
        why = n.static_reason(profile) or n.fit_reason(profile.requests)
        if why is not None:
            return f"node {node}: {why}"
        n.reserve(profile.key, profile.requests)
        return None

    def daemon_nodes(self, profile: WorkloadProfile) -> DaemonNodes:
        """The nodes a DAEMON_SERVICE should run on; call on every reconcile so that nodes
        that join (or become ready, or get uncordoned) later get their copy."""
        keep: set[str] = set()
        eligible: set[str] = set()
        for n in self._nodes:
            if any(n.labels.get(k) != v for k, v in profile.node_selector):
                continue
            keep.add(n.name)
            if n.static_reason(profile) is None:
                eligible.add(n.name)
        return DaemonNodes(frozenset(eligible), frozenset(keep))
