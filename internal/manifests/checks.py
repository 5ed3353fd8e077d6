"""The small checks every resource validator uses: names (DNS labels, label keys and
values), images, paths, numbers, ports, and the envelope (apiVersion, kind, metadata)
every file has. They report through a `Reporter`."""

from __future__ import annotations

import re

from google.protobuf.message import Message

from api.v1alpha1 import kat_pb2
from internal.manifests import defaults
from internal.manifests.problems import Reporter, key_path

MAX_NAME = 63
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

# Image references, after github.com/distribution/reference.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_REPOSITORY = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE_RE = re.compile(rf"^{_REPOSITORY}(?::{_TAG})?(?:@{_DIGEST})?$")
_REPOSITORY_RE = re.compile(rf"^{_REPOSITORY}$")


# ------------------------------------------------------------------ small checks


def attr_name(msg: Message, json_name: str) -> str:
    """The Python attribute name of a field given by its JSON name."""
    for field in msg.DESCRIPTOR.fields:
        if field.json_name == json_name:
            return field.name
    raise KeyError(json_name)


def check_dns_label(value: str, path: str, rep: Reporter, *, required: bool = True) -> None:
    if not value:
        if required:
            rep.add(path, "required")
        return
    if len(value) > MAX_NAME:
        rep.add(path, f'"{value}" is longer than {MAX_NAME} characters')
    elif not _DNS_LABEL.match(value):
        rep.add(
            path,
            f'"{value}" is not a valid name: use lower-case letters, digits and "-", '
            "starting and ending with a letter or digit",
        )


def is_dns_subdomain(value: str) -> bool:
    if not value or len(value) > 253:
        return False
    return all(len(p) <= MAX_NAME and _DNS_LABEL.match(p) for p in value.split("."))


def check_label_key(key: str, path: str, rep: Reporter) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns_subdomain(prefix):
        rep.add(path, f'invalid key "{key}": prefix "{prefix}" must be a DNS subdomain')
    elif not name or len(name) > MAX_NAME or not _LABEL_NAME.match(name):
        rep.add(
            path,
            f'invalid key "{key}": at most 63 letters, digits, "-", "_" or ".", '
            "starting and ending with a letter or digit, optionally after a DNS prefix and /",
        )


def check_label_value(value: str, path: str, rep: Reporter) -> None:
    if value and (len(value) > MAX_NAME or not _LABEL_NAME.match(value)):
        rep.add(
            path,
            f'invalid value "{value}": at most 63 letters, digits, "-", "_" or ".", '
            "starting and ending with a letter or digit",
        )


def check_labels(labels: dict[str, str], path: str, rep: Reporter, *, values: bool = True) -> None:
    for key in sorted(labels):
        item = key_path(path, key)
        check_label_key(key, item, rep)
        if values:
            check_label_value(labels[key], item, rep)


def check_image(value: str, path: str, rep: Reporter, *, tag_allowed: bool = True) -> None:
    pattern = _IMAGE_RE if tag_allowed else _REPOSITORY_RE
    if len(value) > 255 or not pattern.match(value):
        what = "image reference" if tag_allowed else "repository (without tag or digest)"
        example = "registry.example:5000/team/app:1.2" if tag_allowed else "registry:5000/team/app"
        rep.add(path, f'"{value}" is not a valid {what}, e.g. {example}')


def check_abs_path(value: str, path: str, rep: Reporter, *, root_ok: bool = False) -> None:
    if not value:
        rep.add(path, "required")
    elif not value.startswith("/"):
        rep.add(path, f'"{value}" must be an absolute path')
    elif ".." in value.split("/") or "\0" in value:
        rep.add(path, f'"{value}" must not contain ".."')
    elif value.rstrip("/") == "" and not root_ok:
        rep.add(path, "must not be /")


def check_rel_path(value: str, path: str, rep: Reporter) -> None:
    if value.startswith("/"):
        rep.add(path, f'"{value}" must be a relative path')
    elif ".." in value.split("/") or "\0" in value:
        rep.add(path, f'"{value}" must not contain ".."')


def check_min(value: int, low: int, path: str, rep: Reporter, *, written: bool = True) -> None:
    """Report value < low; a zero that the file did not write counts as unset."""
    if value < low and (value != 0 or written):
        rep.add(path, f"must be >= {low}, got {value}")


def check_port(value: int, path: str, rep: Reporter, *, required: bool = True) -> None:
    if value == 0 and not rep.written(path):
        if required:
            rep.add(path, "required")
        return
    if not 1 <= value <= 65535:
        rep.add(path, f"{value} is not a valid port (1-65535)")


# ------------------------------------------------------------------ envelope


def check_envelope(
    msg: kat_pb2.Workload
    | kat_pb2.VirtualLoadBalancer
    | kat_pb2.JobDefinition
    | kat_pb2.BuildDefinition
    | kat_pb2.Namespace
    | kat_pb2.ClusterConfiguration,
    rep: Reporter,
    *,
    namespaced: bool,
) -> None:
    if not msg.api_version:
        rep.add("apiVersion", f'required: "{defaults.API_VERSION}"')
    elif msg.api_version != defaults.API_VERSION:
        rep.add("apiVersion", f'must be "{defaults.API_VERSION}", got "{msg.api_version}"')
    if not msg.HasField("metadata"):
        rep.add("metadata", "required (with at least a name)")
        return
    meta = msg.metadata
    check_dns_label(meta.name, "metadata.name", rep)
    if namespaced:
        check_dns_label(meta.namespace, "metadata.namespace", rep, required=False)
    elif meta.namespace:
        rep.add("metadata.namespace", f"not used by {msg.kind or 'this kind'} (cluster-scoped)")
    check_labels(dict(meta.labels), "metadata.labels", rep)
    check_labels(dict(meta.annotations), "metadata.annotations", rep, values=False)
