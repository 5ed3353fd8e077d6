# ruff: noqa: E501 - expected messages read best on one line
"""cluster.kat: defaults and validation (SPEC 2.6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kat_docs import CLUSTER, DELETE, dump, edit

from internal.manifests import resources
from internal.manifests.resources import ValidationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def problems(edits: dict[str, Any]) -> list[str]:
    try:
        resources.load_cluster_config(dump(edit(CLUSTER, edits)))
    except ValidationError as e:
        return [str(p) for p in e.problems]
    return []


def test_defaults_are_filled_in() -> None:
    cfg = resources.load_cluster_config(dump(CLUSTER))
    assert resources.to_dict(cfg)["spec"] == {
        "clusterCIDR": "10.100.0.0/16",
        "serviceCIDR": "10.200.0.0/16",
        "nodeSubnetBits": 7,
        "clusterDomain": "kat.cluster.local",
        "agentPort": 9116,
        "apiPort": 9115,
        "etcdPeerPort": 2380,
        "etcdClientPort": 2379,
        "volumeBasePath": "/var/lib/kat/volumes",
        "backupPath": "/var/lib/kat/backups",
        "backupIntervalMinutes": 30,
        "agentTickSeconds": 15,
        "nodeLossTimeoutSeconds": 60,
        "backupRetention": 5,
        "wireguardPort": 51820,
        "joinPort": 9117,
        "ingressHTTPPort": 80,
        "ingressHTTPSPort": 443,
        "metricsPort": 9119,
        "auditRetentionDays": 90,
        "containerLogMaxSize": "10Mi",
        "certificateLifetimeHours": 8760,
    }


def test_no_spec_at_all_gets_defaults_too() -> None:
    cfg = resources.load_cluster_config(dump(edit(CLUSTER, {"spec": DELETE})), "c.kat")
    assert cfg.spec.api_port == 9115 and cfg.spec.node_subnet_bits == 7


def test_example_and_overrides() -> None:
    cfg = resources.load_cluster_config(EXAMPLES / "cluster.kat")
    assert cfg.metadata.name == "home-lab"
    assert resources.describe(cfg) == (
        "ClusterConfiguration home-lab (clusterCIDR 10.100.0.0/16, node subnets /23, serviceCIDR 10.200.0.0/16)"
    )
    custom = resources.load_cluster_config(
        dump(
            edit(
                CLUSTER,
                {
                    "spec.clusterCIDR": "172.16.0.0/12",
                    "spec.nodeSubnetBits": 12,
                    "spec.apiPort": 19115,
                },
            )
        )
    )
    assert (custom.spec.cluster_cidr, custom.spec.node_subnet_bits, custom.spec.api_port) == (
        "172.16.0.0/12",
        12,
        19115,
    )
    assert custom.spec.agent_port == 9116


def test_file_name_in_problems(tmp_path: Path) -> None:
    f = tmp_path / "my-cluster.kat"
    f.write_bytes(dump(edit(CLUSTER, {"spec.apiPort": 0})))
    with pytest.raises(ValidationError) as err:
        resources.load_cluster_config(f)
    assert str(err.value) == f"{f}: spec.apiPort: 0 is not a valid port (1-65535)"
    with pytest.raises(ValidationError) as err:
        resources.load_cluster_config(dump(edit(CLUSTER, {"spec.apiPort": 0})))
    assert str(err.value) == "cluster.kat: spec.apiPort: 0 is not a valid port (1-65535)"


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (
            {"spec.clusterCIDR": "10.100.0.1/16"},
            'cluster.kat: spec.clusterCIDR: invalid CIDR "10.100.0.1/16": 10.100.0.1/16 has host bits set',
        ),
        (
            {"spec.clusterCIDR": "10.300.0.0/16"},
            'cluster.kat: spec.clusterCIDR: invalid CIDR "10.300.0.0/16"',
        ),
        (
            {"spec.clusterCIDR": "10.100.0.0"},
            'cluster.kat: spec.clusterCIDR: "10.100.0.0" needs a prefix length',
        ),
        (
            {"spec.serviceCIDR": "fd00::/64"},
            'cluster.kat: spec.serviceCIDR: "fd00::/64" must be an IPv4 CIDR',
        ),
        (
            {"spec.serviceCIDR": "10.100.128.0/20"},
            "cluster.kat: spec.serviceCIDR: 10.100.128.0/20 overlaps clusterCIDR 10.100.0.0/16",
        ),
        (
            {"spec.serviceCIDR": "10.0.0.0/8"},
            "cluster.kat: spec.serviceCIDR: 10.0.0.0/8 overlaps clusterCIDR 10.100.0.0/16",
        ),
        ({"spec.clusterCIDR": 10}, "cluster.kat: spec.clusterCIDR: expected a string, got integer"),
        (
            {"spec.nodeSubnetBits": 15},
            "cluster.kat: spec.nodeSubnetBits: 15 bits on 10.100.0.0/16 gives /31 node subnets; at most /30",
        ),
        ({"spec.nodeSubnetBits": 0}, "cluster.kat: spec.nodeSubnetBits: must be >= 1, got 0"),
        ({"spec.nodeSubnetBits": -2}, "cluster.kat: spec.nodeSubnetBits: must be >= 1, got -2"),
        (
            {"spec.clusterDomain": "Kat..Local"},
            'cluster.kat: spec.clusterDomain: "Kat..Local" is not a valid lower-case DNS name',
        ),
        ({"spec.apiPort": 70000}, "cluster.kat: spec.apiPort: 70000 is not a valid port (1-65535)"),
        ({"spec.agentPort": 0}, "cluster.kat: spec.agentPort: 0 is not a valid port (1-65535)"),
        ({"spec.etcdClientPort": -1}, "cluster.kat: spec.etcdClientPort: -1 is not a valid port"),
        ({"spec.agentPort": 9115}, "cluster.kat: spec.agentPort: 9115 is also used by apiPort"),
        (
            {"spec.wireguardPort": 2379},
            "cluster.kat: spec.wireguardPort: 2379 is also used by etcdClientPort",
        ),
        ({"spec.joinPort": 9116}, "cluster.kat: spec.agentPort: 9116 is also used by joinPort"),
        (
            {"spec.etcdPeerPort": True},
            "cluster.kat: spec.etcdPeerPort: expected an integer, got boolean",
        ),
        (
            {"spec.volumeBasePath": "var/lib/kat"},
            'cluster.kat: spec.volumeBasePath: "var/lib/kat" must be an absolute path',
        ),
        (
            {"spec.backupPath": "/var/../etc"},
            'cluster.kat: spec.backupPath: "/var/../etc" must not contain ".."',
        ),
        (
            {"spec.backupIntervalMinutes": 0},
            "cluster.kat: spec.backupIntervalMinutes: must be >= 1, got 0",
        ),
        ({"spec.backupRetention": -1}, "cluster.kat: spec.backupRetention: must be >= 1, got -1"),
        ({"spec.agentTickSeconds": -5}, "cluster.kat: spec.agentTickSeconds: must be >= 1, got -5"),
        (
            {"spec.nodeLossTimeoutSeconds": 0},
            "cluster.kat: spec.nodeLossTimeoutSeconds: must be >= 1, got 0",
        ),
        (
            {"spec.nodeLossTimeoutSeconds": 15},
            "cluster.kat: spec.nodeLossTimeoutSeconds: 15 must be greater than agentTickSeconds (15)",
        ),
        (
            {"spec.agentTickSeconds": 90},
            "cluster.kat: spec.nodeLossTimeoutSeconds: 60 must be greater than agentTickSeconds (90)",
        ),
        (
            {"spec.clusterCidr": "10.0.0.0/8"},
            'cluster.kat: spec.clusterCidr: unknown field (did you mean "clusterCIDR"?)',
        ),
        (
            {"spec.cluster_cidr": "10.0.0.0/8"},
            'cluster.kat: spec.cluster_cidr: unknown field (did you mean "clusterCIDR"?)',
        ),
        (
            {"metadata.namespace": "default"},
            "cluster.kat: metadata.namespace: not used by ClusterConfiguration (cluster-scoped)",
        ),
        ({"metadata.name": DELETE}, "cluster.kat: metadata.name: required"),
        (
            {"kind": "Workload"},
            'cluster.kat: kind: must be ClusterConfiguration in cluster.kat, got "Workload"',
        ),
    ],
)
def test_rule(edits: dict[str, Any], expected: str) -> None:
    found = problems(edits)
    assert any(p.startswith(expected) for p in found), found


def test_all_problems_together() -> None:
    found = problems(
        {
            "spec.apiPort": 0,
            "spec.serviceCIDR": "10.100.0.0/24",
            "spec.agentTickSeconds": 100,
            "spec.backupPath": "rel",
        }
    )
    assert found == [
        "cluster.kat: spec.serviceCIDR: 10.100.0.0/24 overlaps clusterCIDR 10.100.0.0/16",
        "cluster.kat: spec.apiPort: 0 is not a valid port (1-65535)",
        'cluster.kat: spec.backupPath: "rel" must be an absolute path',
        "cluster.kat: spec.nodeLossTimeoutSeconds: 60 must be greater than agentTickSeconds (100)",
    ]


def test_apply_cluster_defaults_keeps_set_values() -> None:
    cfg = resources.load_cluster_config(dump(edit(CLUSTER, {"spec.apiPort": 1234})))
    again = resources.apply_cluster_defaults(cfg)
    assert again.spec.api_port == 1234
