import random
from collections.abc import Sequence

import pytest

from api.v1alpha1 import kat_pb2
from internal.core.scheduler import (
    RULES,
    Cluster,
    DaemonNodes,
    NodeState,
    Requests,
    ScheduleResult,
    Toleration,
    WorkloadProfile,
    first_reason,
)

GI = 2**30
MI = 2**20
NS = kat_pb2.Taint.NO_SCHEDULE
PNS = kat_pb2.Taint.PREFER_NO_SCHEDULE
NVIDIA = kat_pb2.GPURequest.NVIDIA
AMD = kat_pb2.GPURequest.AMD
ANY = kat_pb2.GPURequest.ANY


def node(
    name: str,
    *,
    cpu: int = 4000,
    memory: int = 8 * GI,
    ready: bool = True,
    cordoned: bool = False,
    labels: dict[str, str] | None = None,
    taints: Sequence[tuple[str, str, int]] = (),
    gpus: Sequence[tuple[int, int]] = (),
) -> kat_pb2.Node:
    n = kat_pb2.Node()
    n.metadata.name = name
    n.metadata.labels.update(labels or {})
    n.status.condition = kat_pb2.NodeStatus.READY if ready else kat_pb2.NodeStatus.NOT_READY
    n.spec.unschedulable = cordoned
    for key, value, effect in taints:
        n.spec.taints.add(key=key, value=value, effect=effect)
    n.status.allocatable.cpu_millis = cpu
    n.status.allocatable.memory_bytes = memory
    for driver, vram in gpus:
        n.status.allocatable.gpus.add(driver=driver, vram_mb=vram)
    return n


def profile(
    key: str = "default/web",
    *,
    cpu: int = 0,
    memory: int = 0,
    selector: dict[str, str] | None = None,
    tolerations: tuple[Toleration, ...] = (),
    gpu: tuple[int, int] | None = None,
    ports: frozenset[int] = frozenset(),
) -> WorkloadProfile:
    driver, vram = gpu or (kat_pb2.GPURequest.DRIVER_UNSPECIFIED, 0)
    return WorkloadProfile(
        key=key,
        requests=Requests(cpu, memory, driver, vram, ports),
        node_selector=tuple(sorted((selector or {}).items())),
        tolerations=tolerations,
    )


def placed(
    inst_node: str,
    workload: str = "other",
    phase: kat_pb2.Instance.Phase = kat_pb2.Instance.RUNNING,
    cpu_millis: int = 0,
    memory_bytes: int = 0,
) -> tuple[kat_pb2.Instance, Requests]:
    inst = kat_pb2.Instance(id=f"{workload}-x", workload=workload, namespace="default")
    inst.node = inst_node
    inst.phase = phase
    return inst, Requests(cpu_millis, memory_bytes)


def schedule_one(nodes: list[kat_pb2.Node], p: WorkloadProfile, count: int = 1) -> ScheduleResult:
    return Cluster.from_protos(nodes).schedule(p, count)


# ------------------------------------------------------------------ inputs


def test_requests_from_spec_parses_and_falls_back_to_limits() -> None:
    spec = kat_pb2.WorkloadSpec()
    spec.container.resources.requests.cpu = "500m"
    spec.container.resources.limits.cpu = "2"
    spec.container.resources.limits.memory = "64Mi"
    spec.container.resources.gpu.min_vram_mb = 8000
    req = Requests.from_spec(spec, host_ports=[8080])
    assert req == Requests(500, 64 * MI, ANY, 8000, frozenset({8080}))
    assert Requests.from_spec(kat_pb2.WorkloadSpec()) == Requests()
    assert not Requests().wants_gpu


def test_profile_from_workload() -> None:
    w = kat_pb2.Workload()
    w.metadata.name, w.metadata.namespace = "web", "prod"
    w.spec.node_selector.update({"zone": "a", "disk": "ssd"})
    w.spec.tolerations.add(key="k", operator=kat_pb2.Toleration.EXISTS, effect=NS)
    p = WorkloadProfile.from_workload(w)
    assert p.key == "prod/web"
    assert p.node_selector == (("disk", "ssd"), ("zone", "a"))
    assert p.tolerations == (Toleration("k", True, "", NS),)


# ------------------------------------------------------------------ filters


@pytest.mark.parametrize(
    ("bad", "good", "reason"),
    [
        (node("n", ready=False), node("n"), "not ready"),
        (node("n", cordoned=True), node("n"), "cordoned"),
        (node("n", memory=GI), node("n", memory=2 * GI), "insufficient memory"),
        (node("n", cpu=999), node("n", cpu=1000), "insufficient cpu"),
    ],
)
def test_basic_filters(bad: kat_pb2.Node, good: kat_pb2.Node, reason: str) -> None:
    p = profile(cpu=1000, memory=2 * GI)
    r = schedule_one([bad], p)
    assert r.nodes == () and r.unplaced == 1
    assert r.reason == f"0/1 nodes available: 1 {reason}"
    assert schedule_one([good], p).nodes == ("n",)


@pytest.mark.parametrize(
    ("labels", "ok"),
    [
        ({"zone": "a", "disk": "ssd", "extra": "x"}, True),
        ({"zone": "a"}, False),  # missing label
        ({"zone": "b", "disk": "ssd"}, False),  # wrong value
    ],
)
def test_node_selector_all_must_match(labels: dict[str, str], ok: bool) -> None:
    r = schedule_one([node("n", labels=labels)], profile(selector={"zone": "a", "disk": "ssd"}))
    if ok:
        assert r.nodes == ("n",)
    else:
        assert r.reason == "0/1 nodes available: 1 node selector mismatch"


@pytest.mark.parametrize(
    ("tolerations", "ok"),
    [
        ((), False),
        ((Toleration("dedicated", False, "db", NS),), True),  # EQUAL key + value
        ((Toleration("dedicated", False, "web", NS),), False),  # EQUAL, other value
        ((Toleration("other", False, "db", NS),), False),  # EQUAL, other key
        ((Toleration("dedicated", True),), True),  # EXISTS key, any effect
        ((Toleration("", True),), True),  # empty key with EXISTS tolerates everything
        ((Toleration("dedicated", True, "", PNS),), False),  # wrong effect
        ((Toleration("dedicated", True, "", NS),), True),
    ],
)
def test_no_schedule_taint_must_be_tolerated(tolerations: tuple[Toleration, ...], ok: bool) -> None:
    n = node("n", taints=[("dedicated", "db", NS)])
    r = schedule_one([n], profile(tolerations=tolerations))
    if ok:
        assert r.nodes == ("n",)
    else:
        assert r.reason == "0/1 nodes available: 1 untolerated taint"


def test_every_no_schedule_taint_needs_a_toleration() -> None:
    n = node("n", taints=[("a", "1", NS), ("b", "2", NS)])
    assert schedule_one([n], profile(tolerations=(Toleration("a", True),))).unplaced == 1
    both = (Toleration("a", True), Toleration("b", False, "2"))
    assert schedule_one([n], profile(tolerations=both)).nodes == ("n",)


def test_prefer_no_schedule_taint_does_not_filter() -> None:
    assert schedule_one([node("n", taints=[("spot", "", PNS)])], profile()).nodes == ("n",)


def test_resources_count_only_non_terminal_instances() -> None:
    nodes = [node("n", cpu=2000, memory=4 * GI)]
    p = profile(cpu=1000, memory=GI)
    busy = [placed("n", cpu_millis=1500, memory_bytes=GI)]
    assert Cluster.from_protos(nodes, busy).schedule(p, 1).reason == (
        "0/1 nodes available: 1 insufficient cpu"
    )
    done = [
        placed("n", phase=kat_pb2.Instance.SUCCEEDED, cpu_millis=1500),
        placed("n", phase=kat_pb2.Instance.FAILED, cpu_millis=1500),
        placed("", phase=kat_pb2.Instance.PENDING, cpu_millis=1500),  # not placed
        placed("gone", cpu_millis=1500),  # unknown node
    ]
    assert Cluster.from_protos(nodes, done).schedule(p, 2).nodes == ("n", "n")
    # TERMINATING still holds its resources until it is gone.
    leaving = [placed("n", phase=kat_pb2.Instance.TERMINATING, cpu_millis=1500)]
    assert Cluster.from_protos(nodes, leaving).schedule(p, 1).unplaced == 1


def test_zero_requests_fit_anywhere() -> None:
    assert schedule_one([node("n", cpu=0, memory=0)], profile(), 3).nodes == ("n",) * 3


@pytest.mark.parametrize(
    ("gpus", "want", "reason"),
    [
        ([], (ANY, 0), "no matching GPU"),
        ([(NVIDIA, 24000)], (AMD, 0), "no matching GPU"),
        ([(NVIDIA, 8000)], (NVIDIA, 16000), "no matching GPU"),  # device too small
        ([(NVIDIA, 24000)], (ANY, 16000), None),
        ([(AMD, 16000)], (AMD, 16000), None),
        ([(AMD, 4000), (NVIDIA, 16000)], (NVIDIA, 8000), None),
    ],
)
def test_gpu_driver_and_vram(
    gpus: list[tuple[int, int]], want: tuple[int, int], reason: str | None
) -> None:
    r = schedule_one([node("n", gpus=gpus)], profile(gpu=want))
    if reason is None:
        assert r.nodes == ("n",)
    else:
        assert r.reason == f"0/1 nodes available: 1 {reason}"


def test_gpu_vram_is_accounted_per_device() -> None:
    p = profile(gpu=(NVIDIA, 16000))
    one = Cluster.from_protos([node("n", gpus=[(NVIDIA, 24000)])])
    r = one.schedule(p, 2)
    assert r.nodes == ("n",) and r.reason == "0/1 nodes available: 1 insufficient GPU memory"
    two = Cluster.from_protos([node("n", gpus=[(NVIDIA, 24000), (NVIDIA, 24000)])])
    assert two.schedule(p, 3).nodes == ("n", "n")
    # Small users share a device; best fit keeps the big free device for a big user.
    c = Cluster.from_protos([node("n", gpus=[(NVIDIA, 24000), (NVIDIA, 8000)])])
    assert c.schedule(profile("default/small", gpu=(NVIDIA, 4000)), 2).nodes == ("n", "n")
    assert c.schedule(profile("default/big", gpu=(NVIDIA, 24000)), 1).nodes == ("n",)


def test_host_ports() -> None:
    c = Cluster.from_protos([node("a"), node("b")])
    p = profile(ports=frozenset({8080}))
    assert c.schedule(p, 2).nodes == ("a", "b")
    r = c.schedule(profile("default/other", ports=frozenset({8080, 9090})), 1)
    assert r.reason == "0/2 nodes available: 2 host port in use"
    assert c.schedule(profile("default/third", ports=frozenset({9090})), 1).nodes == ("a",)


# ------------------------------------------------------------------ the reason text


def test_unschedulable_reason_counts_each_node_once_in_filter_order() -> None:
    nodes = [
        node("n1", ready=False),
        node("n2", ready=False, cordoned=True),  # counted as not ready (first filter)
        node("n3", cordoned=True),
        node("n4", memory=GI),
        node("n5", memory=GI // 2),
    ]
    r = schedule_one(nodes, profile(memory=2 * GI))
    assert r.reason == "0/5 nodes available: 2 not ready, 1 cordoned, 2 insufficient memory"


def test_partial_placement_reports_the_rest() -> None:
    r = schedule_one([node("a", cpu=1000), node("b", cpu=1000)], profile(cpu=1000), 3)
    assert r.nodes == ("a", "b") and r.unplaced == 1
    assert r.reason == "0/2 nodes available: 2 insufficient cpu"


def test_no_nodes() -> None:
    r = schedule_one([], profile(), 2)
    assert (r.nodes, r.unplaced, r.reason) == ((), 2, "0/0 nodes available: no nodes registered")


def test_count_zero() -> None:
    r = schedule_one([node("a")], profile(), 0)
    assert (r.nodes, r.unplaced, r.reason) == ((), 0, "")


# ------------------------------------------------------------------ scoring


def test_spread_over_equal_nodes() -> None:
    nodes = [node("c"), node("a"), node("b")]
    assert sorted(schedule_one(nodes, profile(cpu=100), 3).nodes) == ["a", "b", "c"]
    r = schedule_one(nodes, profile(cpu=100), 7)
    assert sorted(r.nodes) == ["a", "a", "a", "b", "b", "c", "c"]


def test_spread_dominates_least_allocated() -> None:
    nodes = [node("big", cpu=64000, memory=256 * GI), node("small", cpu=2000, memory=2 * GI)]
    assert sorted(schedule_one(nodes, profile(cpu=100, memory=MI), 2).nodes) == ["big", "small"]


def test_spread_counts_existing_copies() -> None:
    existing = [placed("a", workload="web"), placed("a", workload="web")]
    c = Cluster.from_protos([node("a"), node("b")], existing)
    assert c.schedule(profile("default/web"), 2).nodes == ("b", "b")


def test_least_allocated_preferred() -> None:
    existing = [placed("a", cpu_millis=3000, memory_bytes=6 * GI)]
    c = Cluster.from_protos([node("a"), node("b")], existing)
    assert c.schedule(profile(cpu=100), 1).nodes == ("b",)
    # Fractions, not absolute amounts: half of a big node is freer than 10% used of a small one.
    c = Cluster.from_protos(
        [node("big", cpu=16000, memory=32 * GI), node("tiny", cpu=1000, memory=GI)],
        [placed("big", cpu_millis=8000, memory_bytes=16 * GI)],
    )
    assert c.schedule(profile(cpu=100, memory=100 * MI), 1).nodes == ("tiny",)


def test_untolerated_prefer_no_schedule_lowers_the_score() -> None:
    nodes = [node("a", taints=[("spot", "", PNS)]), node("b")]
    # "a" wins the name tie-break, but its taint makes "b" better.
    assert schedule_one(nodes, profile()).nodes == ("b",)
    tolerant = profile(tolerations=(Toleration("spot", True),))
    assert schedule_one(nodes, tolerant).nodes == ("a",)
    # Spread stays dominant: the second copy goes to the tainted node.
    assert sorted(schedule_one(nodes, profile(), 2).nodes) == ["a", "b"]


def test_deterministic_regardless_of_input_order() -> None:
    nodes = [node(f"n{i:02d}", cpu=4000 + 1000 * (i % 3)) for i in range(20)]
    p = profile(cpu=500)
    expected = schedule_one(nodes, p, 30).nodes
    rng = random.Random(7)
    for _ in range(5):
        shuffled = nodes[:]
        rng.shuffle(shuffled)
        assert schedule_one(shuffled, p, 30).nodes == expected
    # Equal nodes: ties go by name.
    assert schedule_one([node("b"), node("a")], profile()).nodes == ("a",)


def test_placements_update_accounting_across_workloads() -> None:
    c = Cluster.from_protos([node("a", cpu=2000), node("b", cpu=2000)])
    assert sorted(c.schedule(profile("default/x", cpu=1000), 4).nodes) == ["a", "a", "b", "b"]
    r = c.schedule(profile("default/y", cpu=1), 1)
    assert r.reason == "0/2 nodes available: 2 insufficient cpu"
    assert c.node("a").cpu_used == 2000  # type: ignore[union-attr]


def test_duplicate_node_names_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Cluster([NodeState("a"), NodeState("a")])


# ------------------------------------------------------------------ DAEMON_SERVICE


def test_daemon_nodes() -> None:
    nodes = [
        node("edge1", labels={"role": "edge"}),
        node("edge2", labels={"role": "edge"}, ready=False),
        node("edge3", labels={"role": "edge"}, cordoned=True),
        node("edge4", labels={"role": "edge"}, taints=[("dedicated", "x", NS)]),
        node("core", labels={"role": "core"}),
    ]
    p = profile(selector={"role": "edge"})
    d = Cluster.from_protos(nodes).daemon_nodes(p)
    assert d == DaemonNodes(
        eligible=frozenset({"edge1"}), keep=frozenset({"edge1", "edge2", "edge3", "edge4"})
    )
    tolerant = profile(selector={"role": "edge"}, tolerations=(Toleration("dedicated", True),))
    assert Cluster.from_protos(nodes).daemon_nodes(tolerant).eligible == {"edge1", "edge4"}
    # A node that joins later is eligible on the next reconcile.
    joined = [*nodes, node("edge5", labels={"role": "edge"})]
    assert Cluster.from_protos(joined).daemon_nodes(p).eligible == {"edge1", "edge5"}


def test_daemon_place_on() -> None:
    c = Cluster.from_protos([node("a", memory=GI), node("b", ready=False)])
    p = profile("default/agent", memory=GI // 2)
    assert c.place_on(p, "a") is None
    assert c.place_on(p, "a") is None
    assert c.place_on(p, "a") == "node a: insufficient memory"
    assert c.place_on(p, "b") == "node b: not ready"
    assert c.place_on(p, "zz") == "node zz: not found"


# ------------------------------------------------------------------ one rule, two uses


def _mixed_cluster(rng: random.Random) -> tuple[list[kat_pb2.Node], list[WorkloadProfile]]:
    nodes = [
        node(
            f"n{i:02d}",
            cpu=rng.choice([500, 1000, 2000]),
            memory=rng.choice([1, 2]) * GI,
            ready=rng.random() > 0.1,
            cordoned=rng.random() < 0.1,
            labels={"zone": rng.choice(["a", "b"])},
            taints=[("dedicated", "db", NS)] if rng.random() < 0.2 else [],
            gpus=[(NVIDIA, 8000)] if rng.random() < 0.2 else [],
        )
        for i in range(40)
    ]
    db = (Toleration(key="dedicated", exists=True, effect=NS),)
    profiles = [
        profile(
            f"default/w{w}",
            cpu=rng.choice([0, 250, 600]),
            memory=rng.choice([0, 256 * MI, GI]),
            selector=rng.choice([None, {"zone": "a"}]),
            tolerations=rng.choice([(), db]),
            gpu=rng.choice([None, None, (NVIDIA, 3000)]),
            ports=rng.choice([frozenset(), frozenset({8080})]),
        )
        for w in range(12)
    ]
    return nodes, profiles


def test_placement_and_explanation_use_the_same_rules() -> None:
    """Every placement lands on a node all rules accept at that moment, and an instance
    left PENDING is explained by the rules rejecting every node."""
    rng = random.Random(3)
    for _ in range(20):
        nodes, profiles = _mixed_cluster(rng)
        cluster = Cluster.from_protos(nodes)
        for p in profiles:
            before = {
                n.name: first_reason(RULES, n, p) for n in cluster.nodes
            }  # the verdicts before this workload's placements
            result = cluster.schedule(p, rng.randint(1, 30))
            for name in set(result.nodes):
                assert before[name] is None
            if result.unplaced:
                assert all(first_reason(RULES, n, p) is not None for n in cluster.nodes)
                assert result.reason.startswith(f"0/{len(nodes)} nodes available")
                assert result.reason == cluster.explain(p)


def test_a_rule_that_does_not_apply_rejects_nothing() -> None:
    """Placement skips rules whose `applies` is false; that must not change a verdict."""
    rng = random.Random(5)
    nodes, profiles = _mixed_cluster(rng)
    cluster = Cluster.from_protos(nodes)
    for p in profiles:
        cluster.schedule(p, 10)  # some accounting, so the resource rules have something
        for rule in RULES:
            if not rule.applies(p):
                assert all(rule.check(n, p) is None for n in cluster.nodes), rule.reason
