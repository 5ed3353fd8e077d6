"""Loading `.kat` resources from YAML into the proto messages, and dumping them back.

Every problem names the file and the field path, and all problems of a file and of a bundle
are reported together in one ValidationError. Loaded resources are kept as written (plus
`metadata.namespace: default`); `apply_defaults` fills in the rest before storing. Server-set
fields (uid, generation, resourceVersion, creationTimestamp, status) are parsed when present,
so `get -o yaml` output can be applied again; `clear_server_fields` drops them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from api.v1alpha1 import kat_pb2
from internal.manifests import validation
from internal.manifests.defaults import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    apply_cluster_defaults,
    apply_defaults,
)
from internal.manifests.problems import Problem, Reporter, ValidationError
from internal.manifests.protoyaml import Walker, dump_yaml, parse_yaml, to_plain, type_name

__all__ = [
    "API_VERSION",
    "BUNDLE_FILES",
    "MAX_FILE_BYTES",
    "NAMESPACE_FILE",
    "Problem",
    "ValidationError",
    "apply_cluster_defaults",
    "apply_defaults",
    "bundle_to_files",
    "clear_server_fields",
    "describe",
    "load_apply_payload",
    "load_bundle_dir",
    "load_bundle_files",
    "load_cluster_config",
    "load_file",
    "load_namespace",
    "parse_file",
    "to_dict",
    "to_yaml",
    "validate_bundle",
]

WORKLOAD_FILE = "workload.kat"
NAMESPACE_FILE = "namespace.kat"
# Bundle file name -> kind, in the order files are reported.
BUNDLE_FILES: dict[str, str] = {
    WORKLOAD_FILE: "Workload",
    "VirtualLoadBalancer.kat": "VirtualLoadBalancer",
    "JobDefinition.kat": "JobDefinition",
    "BuildDefinition.kat": "BuildDefinition",
}
_BUNDLE_FIELDS = {
    WORKLOAD_FILE: "workload",
    "VirtualLoadBalancer.kat": "virtual_load_balancer",
    "JobDefinition.kat": "job_definition",
    "BuildDefinition.kat": "build_definition",
}
MAX_FILE_BYTES = 1024 * 1024
MAX_PROBLEMS_PER_FILE = 100

Resource = (
    kat_pb2.Workload
    | kat_pb2.VirtualLoadBalancer
    | kat_pb2.JobDefinition
    | kat_pb2.BuildDefinition
    | kat_pb2.Namespace
    | kat_pb2.ClusterConfiguration
)
_M = TypeVar("_M", bound=Message)

KINDS: dict[str, type[Resource]] = {
    "Workload": kat_pb2.Workload,
    "VirtualLoadBalancer": kat_pb2.VirtualLoadBalancer,
    "JobDefinition": kat_pb2.JobDefinition,
    "BuildDefinition": kat_pb2.BuildDefinition,
    "Namespace": kat_pb2.Namespace,
    "ClusterConfiguration": kat_pb2.ClusterConfiguration,
}
_CLUSTER_SCOPED = {"Namespace", "ClusterConfiguration"}
_VALIDATORS: dict[str, Callable[[Any, Reporter], None]] = {
    "Workload": validation.validate_workload,
    "VirtualLoadBalancer": validation.validate_virtual_load_balancer,
    "JobDefinition": validation.validate_job_definition,
    "BuildDefinition": validation.validate_build_definition,
    "Namespace": validation.validate_namespace,
    "ClusterConfiguration": validation.validate_cluster_config,
}
# String fields that also accept a bare YAML number (`cpu: 2`, `maxSurge: 1`).
_NUMERIC_STRINGS = frozenset(
    {
        "kat.v1alpha1.ResourceList.cpu",
        "kat.v1alpha1.ResourceList.memory",
        "kat.v1alpha1.UpdateStrategy.max_surge",
    }
)


# ------------------------------------------------------------------ single files


def parse_file(
    data: bytes | str, file: str, kind: str | None = None
) -> tuple[Resource | None, list[Problem]]:
    """Parse and validate one file; returns the message (None if unusable) and its problems.

    `kind` is the kind the file must have (bundle files); without it the file's own `kind`
    decides. ClusterConfiguration gets its defaults before validation, other kinds do not.
    """
    rep = Reporter(file)
    doc = parse_yaml(data, rep)
    if doc is None:
        return None, rep.problems
    if not isinstance(doc, dict):
        rep.add("", f"expected a mapping (apiVersion, kind, metadata, spec), got {type_name(doc)}")
        return None, rep.problems
    kind = _check_kind(doc.get("kind"), kind, rep)
    if kind is None:
        return None, rep.problems
    msg = KINDS[kind]()
    walker = Walker(rep, _NUMERIC_STRINGS)
    walker.fill(doc, msg)
    if walker.exhausted:
        return None, _capped(rep.problems, file)
    structural = list(rep.problems)
    rep.present = frozenset(walker.present)
    rep.problems = []
    if isinstance(msg, kat_pb2.ClusterConfiguration):
        apply_cluster_defaults(msg, rep.present)
    _VALIDATORS[kind](msg, rep)
    problems = structural + _without_follow_ups(rep.problems, structural)
    if kind not in _CLUSTER_SCOPED and msg.HasField("metadata") and not msg.metadata.namespace:
        msg.metadata.namespace = DEFAULT_NAMESPACE
    return msg, _capped(problems, file)


def _check_kind(value: Any, expected: str | None, rep: Reporter) -> str | None:
    if expected is not None:
        if value is None:
            rep.add("kind", f"required: {expected}")
            return None
        if value != expected:
            rep.add("kind", f'must be {expected} in {rep.file}, got "{value}"')
            return None
        return expected
    if isinstance(value, str) and value in KINDS:
        return value
    choices = ", ".join(KINDS)
    if value is None:
        rep.add("kind", f"required: one of {choices}")
        return None
    for known in KINDS:
        if isinstance(value, str) and value.lower() == known.lower():
            rep.add("kind", f'unknown kind "{value}" (did you mean {known}?)')
            return None
    rep.add("kind", f'unknown kind "{value}": must be one of {choices}')
    return None


def _without_follow_ups(semantic: list[Problem], structural: list[Problem]) -> list[Problem]:
    """Drop semantic problems that a structural one already explains (same path, or one
    inside the other), e.g. "spec.source: required" after "spec.source.imagee: unknown"."""
    exact = {p.path for p in structural}
    inner = {a for p in structural for a in _ancestors(p.path)}
    return [
        p
        for p in semantic
        if p.path not in exact
        and p.path not in inner
        and not any(a in exact for a in _ancestors(p.path))
    ]


def _ancestors(path: str) -> list[str]:
    return [path[:i] for i, c in enumerate(path) if c in ".[" and i > 0]


def _capped(problems: list[Problem], file: str) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS_PER_FILE:
        return problems
    rest = len(problems) - MAX_PROBLEMS_PER_FILE
    return problems[:MAX_PROBLEMS_PER_FILE] + [Problem(file, "", f"... and {rest} more problems")]


def _read(
    source: str | os.PathLike[str] | bytes, file_name: str | None, default: str
) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, file_name or default
    path = Path(source)
    label = file_name or os.fspath(source)
    return _read_capped(path, label), label


def _read_capped(path: Path, label: str) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValidationError([Problem(label, "", f"larger than {MAX_FILE_BYTES // 1024} KiB")])
    return data


def _load_one(data: bytes, file: str, kind: str | None) -> Resource:
    msg, problems = parse_file(data, file, kind)
    if problems or msg is None:
        raise ValidationError(problems)
    return msg


def load_file(path: str | os.PathLike[str]) -> Resource:
    """Load any kind of `.kat` file, dispatching on its `kind`."""
    data, label = _read(path, None, "")
    return _load_one(data, label, None)


def load_cluster_config(
    source: str | os.PathLike[str] | bytes, file_name: str | None = None
) -> kat_pb2.ClusterConfiguration:
    """Load cluster.kat (a path or its bytes), defaults applied, validated."""
    data, label = _read(source, file_name, "cluster.kat")
    msg = _load_one(data, label, "ClusterConfiguration")
    assert isinstance(msg, kat_pb2.ClusterConfiguration)
    return msg


def load_namespace(
    source: str | os.PathLike[str] | bytes, file_name: str | None = None
) -> kat_pb2.Namespace:
    data, label = _read(source, file_name, NAMESPACE_FILE)
    msg = _load_one(data, label, "Namespace")
    assert isinstance(msg, kat_pb2.Namespace)
    return msg


# ------------------------------------------------------------------ bundles


def load_bundle_dir(path: str | os.PathLike[str]) -> kat_pb2.Bundle:
    """Load a bundle directory: its `.kat` files (other files, e.g. README.md, are ignored)."""
    files: dict[str, bytes] = {}
    too_big: list[Problem] = []
    for entry in sorted(Path(path).iterdir()):
        if entry.suffix != ".kat" or not entry.is_file():
            continue
        try:
            files[entry.name] = _read_capped(entry, entry.name)
        except ValidationError as e:
            too_big.extend(e.problems)
    if too_big:
        raise ValidationError(too_big)
    return load_bundle_files(files)


def load_bundle_files(files: Mapping[str, bytes]) -> kat_pb2.Bundle:
    """Load a bundle from file name -> content (e.g. an unpacked tar), as written.

    Raises ValidationError with every problem of every file and of the cross-file rules.
    """
    problems: list[Problem] = []
    for name in sorted(files):
        if name == NAMESPACE_FILE:
            problems.append(
                Problem(name, "", "a namespace.kat is applied on its own, not in a bundle")
            )
        elif name not in BUNDLE_FILES:
            expected = ", ".join(BUNDLE_FILES)
            problems.append(Problem(name, "", f"unknown bundle file (expected {expected})"))
    if WORKLOAD_FILE not in files:
        problems.append(Problem(WORKLOAD_FILE, "", "missing: every bundle needs a workload.kat"))
    parsed: dict[str, Resource | None] = {}
    for name, kind in BUNDLE_FILES.items():
        if name in files:
            msg, file_problems = parse_file(files[name], name, kind)
            parsed[name] = msg
            problems.extend(file_problems)
    bundle = _assemble(parsed)
    problems.extend(_cross_file(bundle, present=set(parsed)))
    if problems:
        raise ValidationError(problems)
    return bundle


def load_apply_payload(files: Mapping[str, bytes]) -> kat_pb2.Bundle | kat_pb2.Namespace:
    """What `katcall apply` sends: a lone namespace.kat, or a bundle."""
    if set(files) == {NAMESPACE_FILE}:
        return load_namespace(files[NAMESPACE_FILE], NAMESPACE_FILE)
    return load_bundle_files(files)


def _assemble(parsed: Mapping[str, Resource | None]) -> kat_pb2.Bundle:
    bundle = kat_pb2.Bundle()
    for name, msg in parsed.items():
        if msg is not None:
            getattr(bundle, _BUNDLE_FIELDS[name]).CopyFrom(msg)
    return bundle


def validate_bundle(bundle: kat_pb2.Bundle) -> list[Problem]:
    """Re-validate a bundle held as protos (e.g. a stored revision); [] when valid."""
    problems: list[Problem] = []
    present = set()
    for file, kind in BUNDLE_FILES.items():
        field = _BUNDLE_FIELDS[file]
        if not bundle.HasField(field):
            continue
        present.add(file)
        msg = getattr(bundle, field)
        rep = Reporter(file)
        if msg.kind != kind:
            rep.add("kind", f"must be {kind}")
        _VALIDATORS[kind](msg, rep)
        problems.extend(rep.problems)
    if WORKLOAD_FILE not in present:
        problems.append(Problem(WORKLOAD_FILE, "", "missing: every bundle needs a workload.kat"))
    problems.extend(_cross_file(bundle, present))
    return problems


def _cross_file(bundle: kat_pb2.Bundle, present: set[str]) -> list[Problem]:
    if not bundle.HasField("workload"):
        return []
    w = bundle.workload
    problems: list[Problem] = []
    companions: list[
        tuple[str, kat_pb2.VirtualLoadBalancer | kat_pb2.JobDefinition | kat_pb2.BuildDefinition]
    ] = [
        ("VirtualLoadBalancer.kat", bundle.virtual_load_balancer),
        ("JobDefinition.kat", bundle.job_definition),
        ("BuildDefinition.kat", bundle.build_definition),
    ]
    name, namespace = w.metadata.name, w.metadata.namespace or DEFAULT_NAMESPACE
    for file, msg in companions:
        if file not in present or not msg.HasField("metadata"):
            continue
        if name and msg.metadata.name and msg.metadata.name != name:
            problems.append(
                Problem(
                    file,
                    "metadata.name",
                    f'"{msg.metadata.name}" does not match workload.kat ("{name}")',
                )
            )
        other_ns = msg.metadata.namespace or DEFAULT_NAMESPACE
        if other_ns != namespace:
            problems.append(
                Problem(
                    file,
                    "metadata.namespace",
                    f'"{other_ns}" does not match workload.kat ("{namespace}")',
                )
            )
    wtype = w.spec.type
    if "JobDefinition.kat" in present and wtype not in (
        kat_pb2.WorkloadSpec.JOB,
        kat_pb2.WorkloadSpec.TYPE_UNSPECIFIED,
    ):
        shown = kat_pb2.WorkloadSpec.Type.Name(wtype)
        problems.append(
            Problem(
                "JobDefinition.kat",
                "",
                f"only allowed with spec.type JOB in workload.kat (it is {shown})",
            )
        )
    source = w.spec.source.WhichOneof("source")
    if "BuildDefinition.kat" in present and source == "image":
        problems.append(
            Problem(
                "BuildDefinition.kat",
                "",
                "only allowed with spec.source.git in workload.kat (it uses an image)",
            )
        )
    return problems


# ------------------------------------------------------------------ output


def to_dict(message: Message) -> dict[str, Any]:
    """A message as plain data: camelCase names, enum names, defaults omitted."""
    return to_plain(message)


def to_yaml(message: Message) -> str:
    return dump_yaml(to_dict(message))


def bundle_to_files(bundle: kat_pb2.Bundle) -> dict[str, str]:
    """The bundle as file name -> YAML, for the parts that are set."""
    return {
        file: to_yaml(getattr(bundle, field))
        for file, field in _BUNDLE_FIELDS.items()
        if bundle.HasField(field)
    }


def clear_server_fields(message: _M) -> _M:
    """Drop what only the server sets (uid, generation, ...), in place; returns the message."""
    for field, value in message.ListFields():
        if field.name == "status":
            message.ClearField("status")
        elif field.name == "metadata":
            for server_field in ("uid", "generation", "resource_version", "creation_timestamp"):
                value.ClearField(server_field)
        elif field.message_type is not None and field.message_type.full_name in (
            "kat.v1alpha1.Workload",
            "kat.v1alpha1.VirtualLoadBalancer",
            "kat.v1alpha1.JobDefinition",
            "kat.v1alpha1.BuildDefinition",
        ):
            clear_server_fields(value)
    return message


def describe(message: Message) -> str:
    """One line, e.g. `Workload default/web (SERVICE, 3 replicas) + VirtualLoadBalancer`."""
    if isinstance(message, kat_pb2.Bundle):
        return _describe_bundle(message)
    if isinstance(message, kat_pb2.Workload):
        return _describe_workload(message)
    if isinstance(message, kat_pb2.ClusterConfiguration):
        spec = message.spec
        prefix = spec.cluster_cidr.partition("/")[2]
        node_prefix = int(prefix) + spec.node_subnet_bits if prefix.isdigit() else "?"
        return (
            f"ClusterConfiguration {message.metadata.name} "
            f"(clusterCIDR {spec.cluster_cidr}, node subnets /{node_prefix}, "
            f"serviceCIDR {spec.service_cidr})"
        )
    kind = getattr(message, "kind", type(message).__name__)
    meta = getattr(message, "metadata", None)
    if meta is None:
        return kind
    if isinstance(message, kat_pb2.Namespace):
        return f"{kind} {meta.name}"
    return f"{kind} {meta.namespace or DEFAULT_NAMESPACE}/{meta.name}"


def _describe_workload(w: kat_pb2.Workload) -> str:
    spec = w.spec
    kind = kat_pb2.WorkloadSpec.Type.Name(spec.type)
    details = [kind]
    if spec.type == kat_pb2.WorkloadSpec.SERVICE:
        replicas = spec.replicas if spec.HasField("replicas") else 1
        details.append(f"{replicas} replica" + ("" if replicas == 1 else "s"))
    meta = w.metadata
    return f"Workload {meta.namespace or DEFAULT_NAMESPACE}/{meta.name} ({', '.join(details)})"


def _describe_bundle(bundle: kat_pb2.Bundle) -> str:
    parts = [_describe_workload(bundle.workload)]
    if bundle.HasField("virtual_load_balancer"):
        parts.append("VirtualLoadBalancer")
    if bundle.HasField("job_definition"):
        schedule = bundle.job_definition.spec.schedule
        parts.append(f'JobDefinition (schedule "{schedule}")' if schedule else "JobDefinition")
    if bundle.HasField("build_definition"):
        parts.append("BuildDefinition")
    return " + ".join(parts)
