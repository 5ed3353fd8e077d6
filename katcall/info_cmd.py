"""`katcall version` and `katcall cluster-info`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from api.v1alpha1 import kat_pb2
from internal.security.clientconfig import ConfigError
from internal.version import VERSION
from katcall import output
from katcall.client import CallError
from katcall.session import connect


def versions(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The client's version and, when the cluster answers, the leader's and every node's;
    the second value says why the server part is missing ("" when it is there)."""
    doc: dict[str, Any] = {"clientVersion": VERSION}
    if getattr(args, "client", False):
        return doc, ""
    try:
        with connect(args) as client:
            info = client.get_cluster_info(kat_pb2.ClusterInfoRequest())
            nodes = client.list_nodes(kat_pb2.ListRequest()).items
    except (CallError, ConfigError) as exc:
        return doc, str(exc)
    doc["serverVersion"] = {"leader": info.leader_node, "version": info.version or "unknown"}
    doc["nodes"] = [
        {"name": n.metadata.name, "version": n.status.agent_version or "unknown"} for n in nodes
    ]
    return doc, ""


def cmd_version(args: argparse.Namespace) -> int:
    fmt = output.check_format(args.output or "", ("json", "yaml"))
    doc, why = versions(args)
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    elif fmt == "yaml":
        print(yaml.safe_dump(doc, sort_keys=False).rstrip())
    else:
        print(f"Client Version: {doc['clientVersion']}")
        if "serverVersion" in doc:
            srv = doc["serverVersion"]
            print(f"Server Version: {srv['version']} (leader {srv['leader']})")
            for n in doc["nodes"]:
                print(f"  node {n['name']}: {n['version']}")
    if why:
        print(f"error: server version unknown: {why}", file=sys.stderr)
        return 1
    return 0


def cmd_cluster_info(args: argparse.Namespace) -> int:
    fmt = output.check_format(args.output or "", ("json", "yaml"))
    with connect(args) as client:
        info = client.get_cluster_info(kat_pb2.ClusterInfoRequest())
    if fmt:
        print(output.render([info], fmt, single=True))
        return 0
    spec = info.configuration.spec
    rows = [
        ("Cluster UID", info.cluster_uid),
        ("Leader", f"{info.leader_node} at {info.leader_api_address}"),
        ("API endpoints", ", ".join(info.api_endpoints) or "-"),
        ("etcd members", ", ".join(info.etcd_members) or "-"),
        ("Cluster CIDR", spec.cluster_cidr),
        ("Service CIDR", spec.service_cidr),
        ("Cluster domain", spec.cluster_domain),
        ("Version", info.version or "unknown"),
    ]
    for label, value in rows:
        print(f"{label + ':':<16}{value}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    v = sub.add_parser("version", help="print the client's and the cluster's versions")
    v.add_argument("--client", action="store_true", help="the client's version only")
    v.set_defaults(func=cmd_version)
    ci = sub.add_parser("cluster-info", help="show the cluster: leader, endpoints, networks")
    ci.set_defaults(func=cmd_cluster_info)
