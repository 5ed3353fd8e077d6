"""Instance placement: filter the nodes, score the survivors, place one instance at a time.

Pure logic: no I/O and no clock. The leader builds a `Cluster` from the stored nodes and the
instances already placed (once per reconcile), then asks it to place the new instances of each
workload; every placement updates the in-memory accounting, so later placements (of the same
or another workload) see it.

Filters (`RULES`, one `Rule` each, used both to place and to explain why an instance stays
PENDING), in this order; a node is counted under the first one that rejects it, so the counts
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

Performance: nodes become small mutable `NodeState` records once. The static rules (1-5) run
once per node and distinct `WorkloadProfile.static_key` for the life of a `Cluster` (a memo:
placements do not change what they read); per placement call the statically feasible nodes go
into a heap keyed by score and only the resource rules that apply to the workload run. Only the
chosen node's score changes after a placement, and free resources only shrink during a call,
so a node that does not fit any more can be dropped for good: placing R instances on N nodes
costs O(N + R log N).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from api.v1alpha1 import kat_pb2
from internal.manifests import quantity

_Instance = kat_pb2.Instance
_Taint = kat_pb2.Taint
_GPU = kat_pb2.GPURequest

TERMINAL_PHASES = frozenset({_Instance.SUCCEEDED, _Instance.FAILED})

# Rejection reasons; `RULES` below decides with them, in this order.
NOT_READY = "not ready"
CORDONED = "cordoned"
SELECTOR_MISMATCH = "node selector mismatch"
UNTOLERATED_TAINT = "untolerated taint"
NO_GPU = "no matching GPU"
INSUFFICIENT_CPU = "insufficient cpu"
INSUFFICIENT_MEMORY = "insufficient memory"
INSUFFICIENT_GPU_MEMORY = "insufficient GPU memory"
PORT_IN_USE = "host port in use"


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

    @property
    def static_key(self) -> tuple[object, ...]:
        """What the static rules read from the workload: profiles with the same key are
        feasible on the same nodes (see `Rule`)."""
        req = self.requests
        return (self.node_selector, self.tolerations, req.gpu_driver, req.gpu_min_vram_mb)

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
    ports_used: dict[int, int] = field(default_factory=dict)  # port -> instances using it
    copies: dict[str, int] = field(default_factory=dict)
    # Interned id of the PREFER_NO_SCHEDULE taints, so each distinct set is scored once.
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

    def gpu_device(self, driver: int, vram: int, *, free: bool) -> int:
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
        """The first static rule that rejects the node (None: it passes them all)."""
        return first_reason(STATIC_RULES, self, profile)

    def fit_reason(self, profile: WorkloadProfile) -> str | None:
        """The first resource rule that rejects the node (None: the requests fit now)."""
        return first_reason(FIT_RULES, self, profile)

    def reserve(self, key: str, req: Requests) -> int:
        """Account one instance (no checks: already-placed instances may overcommit).
        Returns the GPU device charged (-1: none), for `release`."""
        self.cpu_used += req.cpu_millis
        self.memory_used += req.memory_bytes
        i = -1
        if req.wants_gpu:
            i = self.gpu_device(req.gpu_driver, req.gpu_min_vram_mb, free=True)
            if i < 0:  # overcommitted already: charge the matching device with most left
                i = self.gpu_device(req.gpu_driver, 0, free=True)
            if i >= 0:
                self.gpu_vram_used[i] += req.gpu_min_vram_mb
        for port in req.host_ports:
            self.ports_used[port] = self.ports_used.get(port, 0) + 1
        self.copies[key] = self.copies.get(key, 0) + 1
        return i

    def release(self, key: str, req: Requests, gpu: int | None = None) -> None:
        """Undo `reserve` (the instance stopped or moved). `gpu`: the device `reserve`
        charged; None when unknown (the device charged with the most of this driver's
        VRAM gives it back: the totals stay right, a rebuild restores the exact split)."""
        self.cpu_used -= req.cpu_millis
        self.memory_used -= req.memory_bytes
        if req.wants_gpu:
            if gpu is None:
                used = [
                    (self.gpu_vram_used[j], j)
                    for j, (d, _) in enumerate(self.gpus)
                    if req.gpu_driver == _GPU.ANY or d == req.gpu_driver
                ]
                gpu = max(used)[1] if used else -1
            if gpu >= 0:
                self.gpu_vram_used[gpu] = max(0, self.gpu_vram_used[gpu] - req.gpu_min_vram_mb)
        for port in req.host_ports:
            left = self.ports_used.get(port, 0) - 1
            if left > 0:
                self.ports_used[port] = left
            else:
                self.ports_used.pop(port, None)
        left = self.copies.get(key, 0) - 1
        if left > 0:
            self.copies[key] = left
        else:
            self.copies.pop(key, None)

    def fresh(self) -> NodeState:
        """The same node with nothing placed on it."""
        return NodeState(
            name=self.name,
            ready=self.ready,
            unschedulable=self.unschedulable,
            labels=self.labels,
            no_schedule=self.no_schedule,
            prefer_no_schedule=self.prefer_no_schedule,
            cpu_millis=self.cpu_millis,
            memory_bytes=self.memory_bytes,
            gpus=self.gpus,
        )


# ------------------------------------------------------------------ the rules


@dataclass(frozen=True, slots=True)
class Rule:
    """One filter (a feasibility checker in Nomad's words, a Filter plugin in Kubernetes').

    `passes` decides and `reason` is what a rejected node counts under in the
    "unschedulable" explanation, so placing and explaining cannot drift apart. `applies`
    says whether the rule can reject anything for a workload at all (a workload without a
    node selector passes the selector rule everywhere); placement skips rules that do not
    apply, which only saves time: `passes` is right on its own.

    A static rule reads only node facts that placements do not change and only the
    workload's `WorkloadProfile.static_key`, so its outcome per node is computed once per
    cluster and static key; the others read the accounting and are checked per placement.
    """

    reason: str
    static: bool
    passes: Callable[[NodeState, WorkloadProfile], bool]
    applies: Callable[[WorkloadProfile], bool] = lambda profile: True

    def check(self, node: NodeState, profile: WorkloadProfile) -> str | None:
        """None when the node passes, else the reason it is rejected."""
        return None if self.passes(node, profile) else self.reason


def _selector_matches(n: NodeState, p: WorkloadProfile) -> bool:
    labels = n.labels
    return all(labels.get(key) == value for key, value in p.node_selector)


def _has_gpu(n: NodeState, p: WorkloadProfile) -> bool:
    req = p.requests
    return not req.wants_gpu or n.gpu_device(req.gpu_driver, req.gpu_min_vram_mb, free=False) >= 0


def _cpu_fits(n: NodeState, p: WorkloadProfile) -> bool:
    cpu = p.requests.cpu_millis
    return not cpu or n.cpu_used + cpu <= n.cpu_millis


def _memory_fits(n: NodeState, p: WorkloadProfile) -> bool:
    memory = p.requests.memory_bytes
    return not memory or n.memory_used + memory <= n.memory_bytes


def _gpu_memory_fits(n: NodeState, p: WorkloadProfile) -> bool:
    req = p.requests
    return not req.wants_gpu or n.gpu_device(req.gpu_driver, req.gpu_min_vram_mb, free=True) >= 0


def _ports_free(n: NodeState, p: WorkloadProfile) -> bool:
    ports = p.requests.host_ports
    used = n.ports_used
    return not ports or not any(port in used for port in ports)


# In filter order: a node counts under the first rule that rejects it.
RULES = (
    Rule(NOT_READY, True, lambda n, p: n.ready),
    Rule(CORDONED, True, lambda n, p: not n.unschedulable),
    Rule(SELECTOR_MISMATCH, True, _selector_matches, lambda p: bool(p.node_selector)),
    Rule(UNTOLERATED_TAINT, True, lambda n, p: not n.no_schedule or p.tolerates_all(n.no_schedule)),
    Rule(NO_GPU, True, _has_gpu, lambda p: p.requests.wants_gpu),
    Rule(INSUFFICIENT_CPU, False, _cpu_fits, lambda p: p.requests.cpu_millis > 0),
    Rule(INSUFFICIENT_MEMORY, False, _memory_fits, lambda p: p.requests.memory_bytes > 0),
    Rule(INSUFFICIENT_GPU_MEMORY, False, _gpu_memory_fits, lambda p: p.requests.wants_gpu),
    Rule(PORT_IN_USE, False, _ports_free, lambda p: bool(p.requests.host_ports)),
)
STATIC_RULES = tuple(r for r in RULES if r.static)
FIT_RULES = tuple(r for r in RULES if not r.static)
REASONS = tuple(r.reason for r in RULES)
SELECTOR_RULE = RULES[2]


def first_reason(rules: Iterable[Rule], node: NodeState, profile: WorkloadProfile) -> str | None:
    """The reason of the first rule that rejects the node, None when all pass."""
    for rule in rules:
        if not rule.passes(node, profile):
            return rule.reason
    return None


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
            n._prefer_id = intern.setdefault(n.prefer_no_schedule, len(intern))
        # Static feasibility memo: static key -> (node, PREFER_NO_SCHEDULE penalty) for
        # every node that passes the static rules. Placements never change what they read.
        self._feasible: dict[tuple[object, ...], list[tuple[NodeState, int]]] = {}

    def _statically_feasible(self, profile: WorkloadProfile) -> list[tuple[NodeState, int]]:
        key = profile.static_key
        found = self._feasible.get(key)
        if found is None:
            rules = [r for r in STATIC_RULES if r.applies(profile)]
            penalty: dict[int, int] = {0: 0}
            found = []
            for n in self._nodes:
                if first_reason(rules, n, profile) is None:
                    pen = penalty.get(n._prefer_id)
                    if pen is None:
                        pen = penalty[n._prefer_id] = profile.untolerated(n.prefer_no_schedule)
                    found.append((n, pen))
            self._feasible[key] = found
        return found

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
        heap = [
            (n.copies.get(key, 0), pen, -n.free_fraction(cpu, mem), n.name, n)
            for n, pen in self._statically_feasible(profile)
        ]
        heapq.heapify(heap)
        fit = [r.passes for r in FIT_RULES if r.applies(profile)]

        placed: list[str] = []
        while heap and len(placed) < count:
            copies, pen, _, name, n = heap[0]
            fits = True
            for passes in fit:  # the resource rules, as in `first_reason`, without its call
                if not passes(n, profile):
                    fits = False
                    break
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
            why = first_reason(RULES, n, profile)
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
        why = first_reason(RULES, n, profile)
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
            if SELECTOR_RULE.check(n, profile) is not None:
                continue
            keep.add(n.name)
            if n.static_reason(profile) is None:
                eligible.add(n.name)
        return DaemonNodes(frozenset(eligible), frozenset(keep))
