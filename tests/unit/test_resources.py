# ruff: noqa: E501 - expected messages read best on one line
"""Loading, cross-file bundle rules, reporting all problems together, defaults, round trips."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kat_docs import (
    BUILD,
    DELETE,
    GIT_WORKLOAD_EDITS,
    JOB,
    NAMESPACE,
    VLB,
    WORKLOAD,
    dump,
    edit,
    problems_of,
)

from api.v1alpha1 import kat_pb2
from internal.manifests import resources, yamlsafe
from internal.manifests.bundle import pack_dir, unpack
from internal.manifests.resources import Problem, ValidationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BUNDLE_EXAMPLES = ["web", "cron-job", "daemon", "git-build"]


def only_workload(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return problems_of({"workload.kat": data})


# ------------------------------------------------------------------ problems and errors


def test_problem_format() -> None:
    err = ValidationError([Problem("a.kat", "spec.x", "bad"), Problem("b.kat", "", "empty")])
    assert str(err) == "a.kat: spec.x: bad\nb.kat: empty"
    assert len(err.problems) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "workload.kat: file is empty"),
        ("   \n# only a comment\n", "workload.kat: file is empty"),
        (
            "- a\n- b\n",
            "workload.kat: expected a mapping (apiVersion, kind, metadata, spec), got list",
        ),
        ("just text", "workload.kat: expected a mapping"),
        ("a: [1, 2\n", "workload.kat: invalid YAML at line 2, column 1:"),
        (
            "a: b\n  c: d\n",
            "workload.kat: invalid YAML at line 2, column 4: mapping values are not allowed",
        ),
        (
            "kind: Workload\n---\nkind: Workload\n",
            "workload.kat: invalid YAML at line 2, column 1: expected a single document",
        ),
        (
            "a: !!python/object:os.system x\n",
            "workload.kat: invalid YAML at line 1, column 4: unsupported tag tag:yaml.org,2002:python/object:os.system",
        ),
        (
            "a: !!set {x}\n",
            "workload.kat: invalid YAML at line 1, column 4: unsupported tag tag:yaml.org,2002:set",
        ),
        ("a: *nope\n", "workload.kat: invalid YAML at line 1, column 4: unknown alias *nope"),
        (
            "? [a]\n: b\n",
            "workload.kat: invalid YAML at line 1, column 3: a mapping key must be a plain value",
        ),
        (
            "a: !!int x\n",
            'workload.kat: invalid YAML at line 1, column 4: "x" is not a valid tag:yaml.org,2002:int',
        ),
        (
            "a:\n  <<: 5\n",
            "workload.kat: invalid YAML at line 2, column 7: a merge key (<<) needs a mapping",
        ),
        (
            "kind: Workload\nkind: Workload\nmetadata: {name: x}\n",
            "workload.kat: kind: duplicate key",
        ),
    ],
)
def test_file_level_problems(text: str, expected: str) -> None:
    problems = only_workload(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_duplicate_keys_are_reported_with_path() -> None:
    text = dump(WORKLOAD).decode() + "  replicas: 2\n  replicas: 3\n"
    assert only_workload(text) == ["workload.kat: spec.replicas: duplicate key"]


def test_invalid_utf8() -> None:
    assert only_workload(b"kind: \xff\xfe\n") == ["workload.kat: not valid UTF-8 (byte 6)"]


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = """
apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata: {name: web}
spec:
  type: SERVICE
  source: {image: "busybox"}
  container:
    env:
      - &base {name: A, value: "1"}
      - <<: *base
        name: B
"""
    assert only_workload(text) == []


def test_all_problems_of_a_bundle_are_reported_together() -> None:
    files = {
        "workload.kat": dump(
            edit(
                WORKLOAD,
                {"spec.replicas": -1, "spec.container.imagee": "x", "metadata.name": "Web"},
            )
        ),
        "VirtualLoadBalancer.kat": dump(
            edit(VLB, {"spec.ports[0].containerPort": 0, "metadata.name": "other"})
        ),
        "JobDefinition.kat": dump(edit(JOB, {"spec.schedule": "bad"})),
        "BuildDefinition.kat": dump(BUILD),
    }
    with pytest.raises(ValidationError) as err:
        resources.load_bundle_files(files)
    lines = str(err.value).splitlines()
    assert lines == [str(p) for p in err.value.problems]
    expected = [
        "workload.kat: spec.container.imagee: unknown field",
        'workload.kat: metadata.name: "Web" is not a valid name',
        "workload.kat: spec.replicas: must be >= 0, got -1",
        "VirtualLoadBalancer.kat: spec.ports[0].containerPort: 0 is not a valid port (1-65535)",
        'JobDefinition.kat: spec.schedule: invalid schedule "bad"',
        'VirtualLoadBalancer.kat: metadata.name: "other" does not match workload.kat ("Web")',
        'JobDefinition.kat: metadata.name: "web" does not match workload.kat ("Web")',
        'BuildDefinition.kat: metadata.name: "web" does not match workload.kat ("Web")',
        "JobDefinition.kat: only allowed with spec.type JOB in workload.kat (it is SERVICE)",
        "BuildDefinition.kat: only allowed with spec.source.git in workload.kat (it uses an image)",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)
    assert len(lines) == len(expected)


def test_problem_lines_are_printable_and_bounded() -> None:
    doc = edit(WORKLOAD, {"spec.source.image": "evil\n\x1b[2Jimage", "metadata.name": "x" * 5000})
    with pytest.raises(ValidationError) as err:
        resources.load_bundle_files({"workload.kat": dump(doc)})
    lines = str(err.value).splitlines()
    assert len(lines) == len(err.value.problems) == 2
    assert all(len(line) <= 1000 for line in lines)
    assert '"evil\\x0a\\x1b[2Jimage" is not a valid image reference' in lines[1]


def test_vlb_needs_spec() -> None:
    problems = problems_of(
        {
            "workload.kat": dump(WORKLOAD),
            "VirtualLoadBalancer.kat": dump(edit(VLB, {"spec": DELETE})),
        }
    )
    assert problems == ["VirtualLoadBalancer.kat: spec: required (ports, healthCheck, ingress)"]


def test_structural_problem_suppresses_follow_up() -> None:
    # The misspelt image must not also produce "spec.source: required".
    problems = only_workload(dump(edit(WORKLOAD, {"spec.source": {"imagee": "busybox"}})))
    assert problems == ['workload.kat: spec.source.imagee: unknown field (did you mean "image"?)']


def test_problem_count_is_capped_per_file() -> None:
    env = [{"name": f"1BAD{i}"} for i in range(300)]
    problems = only_workload(dump(edit(WORKLOAD, {"spec.container.env": env})))
    assert len(problems) == 101
    assert problems[-1] == "workload.kat: ... and 200 more problems"


# ------------------------------------------------------------------ hostile YAML


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # would crash libyaml's composer
        "a:\n" + "- " * 200_000 + "x",
        "a: " + "{b: " * 50_000 + "c" + "}" * 50_000,
        "[" * 1_000_000,
    ],
    ids=["flow-lists", "block-lists", "flow-maps", "unclosed-1MiB"],
)
def test_deep_nesting_is_a_problem_not_a_crash(text: str) -> None:
    start = time.process_time()
    problems = only_workload(text)
    assert len(problems) == 1 and "nesting deeper than 64 levels" in problems[0]
    assert time.process_time() - start < 0.5


def test_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [{name: X, value: x, junk: 1}]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    text = "\n".join(lines) + "\nspec:\n  container:\n    env: [" + ", ".join(["*a9"] * 10) + "]\n"
    start = time.process_time()
    problems = only_workload(text)
    assert time.process_time() - start < 5
    assert len(problems) <= 101


def test_many_values_hit_the_event_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Bounded work, counted rather than timed: the parser is not asked for one event past
    # the limit (a full parse of this file is 150,000 events, about 6 s of CPU here).
    pulled = 0
    parse = yaml.parse

    def counting_parse(*args: object, **kwargs: object) -> Iterator[yaml.Event]:
        nonlocal pulled
        for event in parse(*args, **kwargs):  # type: ignore[arg-type]
            pulled += 1
            yield event

    monkeypatch.setattr(yamlsafe.yaml, "parse", counting_parse)
    text = "a: [" + ",".join(["1"] * 150_000) + "]\n"
    problems = only_workload(text)
    assert len(problems) == 1
    assert "document too large (more than 100000 YAML events)" in problems[0]
    assert pulled == yamlsafe.MAX_EVENTS + 1


def test_aliases_hit_the_node_budget() -> None:
    refs = ", ".join(["*e"] * 40_000)
    text = "x:\n  - &e {name: A, value: v}\n" + dump(WORKLOAD).decode()
    text = text.replace("  container:\n", f"  container:\n    env: [{refs}]\n", 1)
    start = time.process_time()
    problems = only_workload(text)
    assert time.process_time() - start < 2
    # whichever budget is hit first: expanded bytes (yamlsafe) or values (walker)
    assert len(problems) == 1 and "document too large" in problems[0]


# ------------------------------------------------------------------ bundle rules


def test_bundle_needs_workload() -> None:
    assert problems_of({"VirtualLoadBalancer.kat": dump(VLB)}) == [
        "workload.kat: missing: every bundle needs a workload.kat"
    ]


def test_bundle_wrong_kind_for_file_name() -> None:
    problems = problems_of({"workload.kat": dump(WORKLOAD), "VirtualLoadBalancer.kat": dump(JOB)})
    assert problems == [
        'VirtualLoadBalancer.kat: kind: must be VirtualLoadBalancer in VirtualLoadBalancer.kat, got "JobDefinition"'
    ]


def test_bundle_unknown_and_namespace_files() -> None:
    problems = problems_of(
        {"workload.kat": dump(WORKLOAD), "namespace.kat": dump(NAMESPACE), "extra.kat": b"x: 1"}
    )
    assert problems == [
        "extra.kat: unknown bundle file (expected workload.kat, VirtualLoadBalancer.kat, JobDefinition.kat, BuildDefinition.kat)",
        "namespace.kat: a namespace.kat is applied on its own, not in a bundle",
    ]


def test_bundle_namespace_must_match() -> None:
    wl = edit(WORKLOAD, {"metadata.namespace": "team-a"})
    problems = problems_of({"workload.kat": dump(wl), "VirtualLoadBalancer.kat": dump(VLB)})
    assert problems == [
        'VirtualLoadBalancer.kat: metadata.namespace: "default" does not match workload.kat ("team-a")'
    ]
    explicit = edit(VLB, {"metadata.namespace": "default"})
    assert (
        problems_of({"workload.kat": dump(WORKLOAD), "VirtualLoadBalancer.kat": dump(explicit)})
        == []
    )


def test_job_definition_only_with_job() -> None:
    problems = problems_of(
        {
            "workload.kat": dump(edit(WORKLOAD, {"spec.type": "DAEMON_SERVICE"})),
            "JobDefinition.kat": dump(JOB),
        }
    )
    assert problems == [
        "JobDefinition.kat: only allowed with spec.type JOB in workload.kat (it is DAEMON_SERVICE)"
    ]


def test_build_definition_only_with_git() -> None:
    problems = problems_of({"workload.kat": dump(WORKLOAD), "BuildDefinition.kat": dump(BUILD)})
    assert problems == [
        "BuildDefinition.kat: only allowed with spec.source.git in workload.kat (it uses an image)"
    ]


def test_load_bundle_dir_ignores_other_files(tmp_path: Path) -> None:
    (tmp_path / "workload.kat").write_bytes(dump(WORKLOAD))
    (tmp_path / "README.md").write_text("# hi")
    (tmp_path / "notes.yaml").write_text("junk: [")
    bundle = resources.load_bundle_dir(tmp_path)
    assert bundle.workload.metadata.name == "web"
    assert not bundle.HasField("virtual_load_balancer")


def test_load_bundle_dir_reports_unknown_kat_files(tmp_path: Path) -> None:
    (tmp_path / "workload.kat").write_bytes(dump(WORKLOAD))
    (tmp_path / "Job.kat").write_bytes(dump(JOB))
    with pytest.raises(ValidationError, match=r"^Job\.kat: unknown bundle file"):
        resources.load_bundle_dir(tmp_path)


def test_load_apply_payload() -> None:
    ns = resources.load_apply_payload({"namespace.kat": dump(NAMESPACE)})
    assert isinstance(ns, kat_pb2.Namespace) and ns.metadata.name == "team-a"
    b = resources.load_apply_payload({"workload.kat": dump(WORKLOAD)})
    assert isinstance(b, kat_pb2.Bundle)


# ------------------------------------------------------------------ single files and kinds


def test_load_file_dispatches_on_kind(tmp_path: Path) -> None:
    for doc, cls in [
        (WORKLOAD, kat_pb2.Workload),
        (VLB, kat_pb2.VirtualLoadBalancer),
        (NAMESPACE, kat_pb2.Namespace),
    ]:
        f = tmp_path / "x.kat"
        f.write_bytes(dump(doc))
        assert isinstance(resources.load_file(f), cls)
    cluster = resources.load_file(EXAMPLES / "cluster.kat")
    assert isinstance(cluster, kat_pb2.ClusterConfiguration) and cluster.spec.api_port == 9115


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            None,
            "x.kat: kind: required: one of Workload, VirtualLoadBalancer, JobDefinition, BuildDefinition, Namespace, ClusterConfiguration",
        ),
        ("workload", 'x.kat: kind: unknown kind "workload" (did you mean Workload?)'),
        ("Pod", 'x.kat: kind: unknown kind "Pod": must be one of Workload,'),
        (["Workload"], "x.kat: kind: unknown kind \"['Workload']\""),
    ],
)
def test_load_file_bad_kind(tmp_path: Path, kind: object, expected: str) -> None:
    f = tmp_path / "x.kat"
    f.write_bytes(dump(edit(WORKLOAD, {"kind": kind})))
    with pytest.raises(ValidationError) as err:
        resources.load_file(f)
    label = str(f)
    assert str(err.value).replace(label, "x.kat").startswith(expected)


def test_namespace_rules() -> None:
    assert resources.load_namespace(dump(NAMESPACE)).metadata.name == "team-a"
    with pytest.raises(ValidationError) as err:
        resources.load_namespace(
            dump(edit(NAMESPACE, {"metadata.namespace": "x", "metadata.name": "Team", "spec": {}}))
        )
    assert [str(p) for p in err.value.problems] == [
        "namespace.kat: spec: unknown field",
        'namespace.kat: metadata.name: "Team" is not a valid name: use lower-case letters, digits and "-", starting and ending with a letter or digit',
        "namespace.kat: metadata.namespace: not used by Namespace (cluster-scoped)",
    ]


def test_namespace_defaults_to_default() -> None:
    b = resources.load_bundle_files(
        {"workload.kat": dump(WORKLOAD), "VirtualLoadBalancer.kat": dump(VLB)}
    )
    assert b.workload.metadata.namespace == "default"
    assert b.virtual_load_balancer.metadata.namespace == "default"


def test_server_fields_are_parsed_and_can_be_cleared() -> None:
    doc = edit(
        WORKLOAD,
        {
            "metadata.uid": "abc",
            "metadata.generation": 4,
            "metadata.resourceVersion": 99,
            "metadata.creationTimestamp": "2024-01-02T03:04:05Z",
            "status": {"readyInstances": 2},
        },
    )
    b = resources.load_bundle_files({"workload.kat": dump(doc)})
    w = b.workload
    assert (w.metadata.uid, w.metadata.generation, w.metadata.resource_version) == ("abc", 4, 99)
    assert w.metadata.creation_timestamp.seconds == 1704164645
    resources.clear_server_fields(b)
    assert (
        not w.HasField("status")
        and not w.metadata.uid
        and not w.metadata.HasField("creation_timestamp")
    )
    assert w.metadata.name == "web"


def test_timestamp_problem() -> None:
    problems = only_workload(dump(edit(WORKLOAD, {"metadata.creationTimestamp": "yesterday"})))
    assert problems == [
        "workload.kat: metadata.creationTimestamp: expected an RFC 3339 timestamp (2024-01-02T03:04:05Z)"
    ]


# ------------------------------------------------------------------ output


def test_to_dict_uses_json_names_enum_names_and_omits_defaults() -> None:
    w = kat_pb2.Workload(api_version="kat.dws.rip/v1alpha1", kind="Workload")
    w.metadata.name = "web"
    w.spec.type = kat_pb2.WorkloadSpec.SERVICE
    w.spec.replicas = 0  # optional: an explicit zero is kept
    w.spec.container.resources.gpu.min_vram_mb = 1024
    w.spec.volumes.add(name="d").simple_cluster_storage.SetInParent()
    w.spec.node_selector["b"] = "2"
    w.spec.node_selector["a"] = "1"
    assert resources.to_dict(w) == {
        "apiVersion": "kat.dws.rip/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": "web"},
        "spec": {
            "type": "SERVICE",
            "replicas": 0,
            "nodeSelector": {"a": "1", "b": "2"},
            "container": {"resources": {"gpu": {"minVRAM_MB": 1024}}},
            "volumes": [{"name": "d", "simpleClusterStorage": {}}],
        },
    }
    c = kat_pb2.ClusterConfiguration()
    c.spec.cluster_cidr = "10.0.0.0/8"
    assert resources.to_dict(c) == {"spec": {"clusterCIDR": "10.0.0.0/8"}}


@pytest.mark.parametrize("name", BUNDLE_EXAMPLES)
def test_examples_round_trip(name: str) -> None:
    bundle = resources.load_bundle_dir(EXAMPLES / name)
    files = {n: text.encode() for n, text in resources.bundle_to_files(bundle).items()}
    again = resources.load_bundle_files(files)
    assert again == bundle
    assert resources.to_dict(again) == resources.to_dict(bundle)
    # Through the archive path too, and with defaults written in.
    assert resources.load_bundle_files(unpack(pack_dir(EXAMPLES / name))) == bundle
    defaulted = resources.apply_defaults(resources.load_bundle_files(files))
    files2 = {n: text.encode() for n, text in resources.bundle_to_files(defaulted).items()}
    assert resources.load_bundle_files(files2) == defaulted
    assert resources.validate_bundle(defaulted) == []


def test_example_yaml_is_preserved(tmp_path: Path) -> None:
    original = yaml.safe_load((EXAMPLES / "web" / "workload.kat").read_text())
    bundle = resources.load_bundle_dir(EXAMPLES / "web")
    dumped = yaml.safe_load(resources.to_yaml(bundle.workload))
    original["spec"]["updateStrategy"]["maxSurge"] = "1"  # a string field; YAML wrote a number
    assert dumped == original


def test_cluster_example_round_trip() -> None:
    cfg = resources.load_cluster_config(EXAMPLES / "cluster.kat")
    assert resources.load_cluster_config(resources.to_yaml(cfg).encode()) == cfg


# ------------------------------------------------------------------ defaults


def test_service_defaults() -> None:
    b = resources.load_bundle_files(
        {
            "workload.kat": dump(WORKLOAD),
            "VirtualLoadBalancer.kat": dump(
                edit(
                    VLB,
                    {
                        "spec.healthCheck": {"exec": {"command": ["true"]}},
                        "spec.ingress": [{"host": "w.example"}],
                    },
                )
            ),
        }
    )
    assert not b.workload.spec.HasField("replicas")  # loading keeps what was written
    resources.apply_defaults(b)
    spec = b.workload.spec
    assert spec.replicas == 1
    assert spec.update_strategy.type == kat_pb2.UpdateStrategy.ROLLING
    assert spec.update_strategy.max_surge == "1"
    assert spec.restart_policy.condition == kat_pb2.RestartPolicy.ALWAYS
    assert spec.container.name == "web"
    vlb = b.virtual_load_balancer.spec
    assert vlb.ports[0].protocol == kat_pb2.ServicePort.TCP
    hc = vlb.health_check
    assert (hc.period_seconds, hc.timeout_seconds, hc.success_threshold, hc.failure_threshold) == (
        10,
        1,
        1,
        3,
    )
    assert (vlb.ingress[0].path, vlb.ingress[0].service_port) == ("/", 8080)
    assert not b.HasField("job_definition") and not b.HasField("build_definition")
    before = b.SerializeToString(deterministic=True)
    resources.apply_defaults(b)
    assert b.SerializeToString(deterministic=True) == before  # idempotent


def test_job_defaults_and_implied_job_definition() -> None:
    b = resources.load_bundle_files(
        {"workload.kat": dump(edit(WORKLOAD, {"spec.type": "JOB", "metadata.namespace": "ops"}))}
    )
    resources.apply_defaults(b)
    assert not b.workload.spec.HasField("replicas")
    assert not b.workload.spec.HasField("update_strategy")
    assert b.workload.spec.restart_policy.condition == kat_pb2.RestartPolicy.NEVER
    job = b.job_definition
    assert (job.kind, job.metadata.name, job.metadata.namespace) == ("JobDefinition", "web", "ops")
    assert (
        job.spec.schedule,
        job.spec.completions,
        job.spec.parallelism,
        job.spec.backoff_limit,
    ) == ("", 1, 1, 6)
    assert not job.spec.HasField("active_deadline_seconds")
    assert resources.validate_bundle(b) == []


def test_git_defaults_and_implied_build_definition() -> None:
    b = resources.load_bundle_files({"workload.kat": dump(edit(WORKLOAD, GIT_WORKLOAD_EDITS))})
    resources.apply_defaults(b)
    build = b.build_definition
    assert (build.kind, build.metadata.name) == ("BuildDefinition", "web")
    assert (build.spec.build_context, build.spec.dockerfile_path) == (".", "Dockerfile")
    assert resources.validate_bundle(b) == []


def test_daemon_and_misc_defaults() -> None:
    doc = edit(
        WORKLOAD,
        {
            "spec.type": "DAEMON_SERVICE",
            "spec.tolerations": [{"key": "k", "value": "v"}],
            "spec.volumes": [{"name": "h", "hostMount": {"hostPath": "/srv"}}],
            "spec.container.resources": {"gpu": {}},
        },
    )
    b = resources.apply_defaults(resources.load_bundle_files({"workload.kat": dump(doc)}))
    spec = b.workload.spec
    assert not spec.HasField("replicas")
    assert spec.update_strategy.max_surge == "1"
    assert spec.tolerations[0].operator == kat_pb2.Toleration.EQUAL
    assert spec.volumes[0].host_mount.ensure_type == kat_pb2.HostMount.DIRECTORY_OR_CREATE
    assert spec.container.resources.gpu.driver == kat_pb2.GPURequest.ANY


def test_simultaneous_gets_no_max_surge() -> None:
    doc = edit(WORKLOAD, {"spec.updateStrategy": {"type": "SIMULTANEOUS"}})
    b = resources.apply_defaults(resources.load_bundle_files({"workload.kat": dump(doc)}))
    assert b.workload.spec.update_strategy.max_surge == ""


def test_validate_bundle_on_protos() -> None:
    b = resources.load_bundle_files({"workload.kat": dump(WORKLOAD)})
    assert resources.validate_bundle(b) == []
    b.workload.spec.type = kat_pb2.WorkloadSpec.DAEMON_SERVICE
    b.workload.spec.replicas = 3
    b.job_definition.kind = "JobDefinition"
    problems = [str(p) for p in resources.validate_bundle(b)]
    assert (
        "workload.kat: spec.replicas: not allowed with DAEMON_SERVICE (one copy per eligible node)"
        in problems
    )
    assert (
        "JobDefinition.kat: only allowed with spec.type JOB in workload.kat (it is DAEMON_SERVICE)"
        in problems
    )
    assert resources.validate_bundle(kat_pb2.Bundle()) == [
        Problem("workload.kat", "", "missing: every bundle needs a workload.kat")
    ]


def test_describe() -> None:
    web = resources.load_bundle_dir(EXAMPLES / "web")
    assert (
        resources.describe(web)
        == "Workload default/web (SERVICE, 3 replicas) + VirtualLoadBalancer"
    )
    one = resources.load_bundle_files({"workload.kat": dump(WORKLOAD)})
    assert resources.describe(one) == "Workload default/web (SERVICE, 1 replica)"
    assert resources.describe(resources.load_namespace(dump(NAMESPACE))) == "Namespace team-a"


def test_a_scalar_referenced_a_thousand_times_counts_as_expanded() -> None:
    # 100 KB once, then 1,000 references: a small file that expands to 100 MB
    text = (
        "x: &big "
        + "a" * 100_000
        + "\nspec:\n  container:\n    args: ["
        + ", ".join(["*big"] * 1000)
        + "]\n"
    )
    start = time.process_time()
    problems = only_workload(text)
    assert time.process_time() - start < 2
    assert len(problems) == 1
    assert problems[0].startswith("workload.kat: invalid YAML at line 4")
    assert "too large with its aliases expanded (more than 1024 KiB)" in problems[0]
