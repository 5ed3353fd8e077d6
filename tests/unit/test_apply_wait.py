"""`apply --wait` succeeds only when every desired instance of the current generation is
ready, whatever a condition says."""

from __future__ import annotations

from api.v1alpha1 import kat_pb2
from katcall.apply_cmd import rollout_outcome

P = kat_pb2.Instance


def workload(replicas: int, ready: int, running: int, reason: str) -> kat_pb2.Workload:
    w = kat_pb2.Workload()
    w.metadata.name = "web"
    w.metadata.generation = 2
    w.spec.type = kat_pb2.WorkloadSpec.SERVICE
    w.spec.replicas = replicas
    st = w.status
    st.observed_generation = 2
    st.template_generation = 1
    st.desired_instances = replicas
    st.ready_instances = ready
    for n in range(running):
        st.instances.add(id=f"i{n}", generation=1, phase=P.RUNNING, ready=n < ready)
    st.conditions.add(type="Progressing", status="False", reason=reason, message="m")
    return w


def test_scale_up_is_not_success_until_all_ready() -> None:
    assert rollout_outcome(workload(6, 3, 3, "RolloutComplete"), 2) is None
    assert rollout_outcome(workload(6, 5, 6, "RolloutComplete"), 2) is None
    assert rollout_outcome(workload(6, 6, 6, "RolloutComplete"), 2) == (True, "m")


def test_progressing_is_not_success() -> None:
    assert rollout_outcome(workload(3, 3, 3, "RollingOut"), 2) is None
