"""The create body as `podman run -d` arguments (kat_agent/node/podman/spec.py run_args):
a new workload user's first container is started through the command line
(PodmanPool.start_first), and it must be the container the API would make; anything the
command line cannot say the same way gives None (the API is used then)."""

from __future__ import annotations

import json
from typing import Any

from kat_agent.node.podman.first_run import cli_warnings
from kat_agent.node.podman.spec import InstanceSpec, create_body, run_args


def spec(**kw: Any) -> InstanceSpec:
    base: dict[str, Any] = dict(
        namespace="ns",
        workload="web",
        instance_id="web-1",
        generation=2,
        image="registry.kat.local/busybox:latest",
        command=("sh", "-c"),
        args=("echo $A; sleep 3600", "--not-a-flag"),
        env=(("A", "x=y, z"), ("EMPTY", "")),
        cpu_millis=250,
        memory_bytes=48 << 20,
        dns_servers=("10.100.0.1",),
        dns_search=("ns.svc.kat.cluster.local",),
    )
    base.update(kw)
    return InstanceSpec(**base)


MOUNT = {"type": "bind", "source": "/v/ns/web/data", "destination": "/data"}


def test_every_field_of_a_full_body_becomes_a_flag() -> None:
    mounts = [
        {**MOUNT, "options": ["rbind", "ro"]},
        {**MOUNT, "destination": "/w", "options": ["rbind", "rw"]},
    ]
    body = create_body(spec(), mounts, log_max_bytes=1 << 20)
    args = run_args(body)
    assert args is not None
    flags, rest = args[: args.index("--")], args[args.index("--") + 1 :]
    assert rest == ["registry.kat.local/busybox:latest", "echo $A; sleep 3600", "--not-a-flag"]

    def values(flag: str) -> list[str]:
        return [flags[i + 1] for i, f in enumerate(flags) if f == flag]

    assert values("--name") == ["kat_ns_web_web-1"]
    assert values("--restart") == ["no"]
    assert sorted(values("--label")) == sorted(f"{k}={v}" for k, v in body["labels"].items())
    assert values("--env") == ["A=x=y, z", "EMPTY="]
    assert values("--mount") == [
        "type=bind,source=/v/ns/web/data,destination=/data,ro=true",
        "type=bind,source=/v/ns/web/data,destination=/w,ro=false",
    ]
    assert values("--log-driver") == ["k8s-file"] and values("--log-opt") == [f"max-size={1 << 20}"]
    assert values("--memory") == values("--memory-swap") == [str(48 << 20)]
    assert values("--cpu-quota") == ["25000"] and values("--cpu-period") == ["100000"]
    assert values("--dns") == ["10.100.0.1"] and values("--dns-search") == [
        "ns.svc.kat.cluster.local"
    ]
    assert json.loads(values("--entrypoint")[0]) == ["sh", "-c"]


def test_a_minimal_body_has_no_empty_flags() -> None:
    args = run_args(
        create_body(
            spec(
                command=(),
                args=(),
                env=(),
                cpu_millis=None,
                memory_bytes=None,
                dns_servers=(),
                dns_search=(),
            ),
            [],
        )
    )
    assert args is not None
    assert not {"--entrypoint", "--env", "--mount", "--memory", "--cpu-quota", "--dns"} & set(args)
    assert args[-2:] == ["--", "registry.kat.local/busybox:latest"]


def test_what_the_command_line_cannot_say_the_same_way_goes_through_the_api() -> None:
    plain = create_body(spec(), [{**MOUNT, "options": ["rbind", "rw"]}])
    assert run_args(plain) is not None
    # A Podman network (root mode), or any field run_args does not know yet.
    assert run_args(create_body(spec(network="kat", static_ip="10.0.0.5"), [])) is None
    assert run_args({**plain, "healthconfig": {"Test": ["true"]}}) is None
    # Paths --mount would split, mount options it would not keep.
    for bad in ({"source": "/v/a,b"}, {"destination": "/d=x"}, {"options": ["rbind", "rw", "z"]}):
        assert run_args({**plain, "mounts": [{**MOUNT, "options": ["rbind"], **bad}]}) is None
    assert run_args({**plain, "log_configuration": {"driver": "k8s-file", "tag": "x"}}) is None
    assert run_args({**plain, "resource_limits": {"pids": {"limit": 5}}}) is None


def test_the_command_lines_warnings_are_found_and_host_noise_left_out() -> None:
    err = (
        'time="2026-12-02T06:13:32Z" level=warning msg="\\"/\\" is not a shared mount, this '
        'could cause issues or missing mounts with rootless containers"\n'
        'time="2026-12-02T06:13:32Z" level=warning msg="Resource limits are not supported '
        'and ignored on cgroups V1 rootless systems"\n'
        'time="2026-12-02T06:13:32Z" level=info msg="not a warning"\n'
        "plain text\n"
    )
    assert cli_warnings(err) == [
        "Resource limits are not supported and ignored on cgroups V1 rootless systems"
    ]
