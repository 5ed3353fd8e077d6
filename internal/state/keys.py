"""The layout of KAT's state in etcd: the one module that knows every key under /kat/.

Key layout (values are serialized protobuf unless noted):

    /kat/config/cluster                         ClusterConfiguration
    /kat/config/cluster-uid                     cluster UID, UTF-8 text, written once
    /kat/pki/ca                                 CAMaterial: the cluster and etcd CAs, their
                                                keys sealed with the cluster secret
    /kat/pki/admins/<name>                      AdminRecord: one person's admin certificates
    /kat/pki/revoked/<sha256 of cert DER, hex>  CertificateRevocation: refused on every call
    /kat/pki/issued/<serial, hex>               IssuedCertificate: the inventory of leaf
                                                certificates the cluster CA issued (until
                                                they expire)
    /kat/leader                                 ClusterInfo (leader_node, leader_api_address)
                                                on the leader's lease (internal/state/election.py)
    /kat/nodes/<name>                           Node
    /kat/ipam/subnets/<cidr, "/" as "_">        owning node name, UTF-8 text; created only
                                                if absent, so a subnet is never handed out twice
    /kat/namespaces/<name>                      Namespace
    /kat/workloads/<ns>/<name>                  Workload
    /kat/revisions/<ns>/<name>/<rev, 10 digits> WorkloadRevision
    /kat/instances/<ns>/<workload>/<id>         Instance
    /kat/tokens/<id>                            JoinToken
    /kat/ingress/certs/<host>                   IngressKeyPair (certificate and key): served
                                                only to ingress nodes, never listed with it
    /kat/events/<ns or "_">/<unix ns, 20 digits>-<id>
                                                Event, on a shared lease so it expires;
                                                "_" holds events of cluster-scoped objects

Every read and write goes through `internal.state.store.Store`, which builds keys
only with the functions here.
"""

from __future__ import annotations

ROOT = "/kat/"
CLUSTER_CONFIG_KEY = "/kat/config/cluster"
CLUSTER_UID_KEY = "/kat/config/cluster-uid"
CA_MATERIAL_KEY = "/kat/pki/ca"
ISSUED_CERTIFICATES = "/kat/pki/issued/"
ADMINS = "/kat/pki/admins/"
REVOKED = "/kat/pki/revoked/"
LEADER_KEY = "/kat/leader"
NODES = "/kat/nodes/"
SUBNETS = "/kat/ipam/subnets/"
NAMESPACES = "/kat/namespaces/"
WORKLOADS = "/kat/workloads/"
REVISIONS = "/kat/revisions/"
INSTANCES = "/kat/instances/"
TOKENS = "/kat/tokens/"
INGRESS_CERTS = "/kat/ingress/certs/"
EVENTS = "/kat/events/"
AUDIT = "/kat/audit/"  # /kat/audit/<unix ns, 20 digits>-<id>: sorted by time, no lease
CLUSTER_SCOPE = "_"  # the events "namespace" of cluster-scoped objects


def segment(value: str, what: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"{what} {value!r} cannot be part of a key")
    return value


def node_key(name: str) -> str:
    return NODES + segment(name, "node name")


def namespace_key(name: str) -> str:
    return NAMESPACES + segment(name, "namespace")


def workloads_prefix(namespace: str | None = None) -> str:
    return WORKLOADS if namespace is None else f"{WORKLOADS}{segment(namespace, 'namespace')}/"


def workload_key(namespace: str, name: str) -> str:
    return workloads_prefix(namespace) + segment(name, "workload name")


def revisions_prefix(namespace: str, name: str) -> str:
    return f"{REVISIONS}{segment(namespace, 'namespace')}/{segment(name, 'workload name')}/"


def revision_key(namespace: str, name: str, revision: int) -> str:
    if revision < 0:
        raise ValueError(f"workload revision {revision} is negative")
    return f"{revisions_prefix(namespace, name)}{revision:010d}"


def instances_prefix(namespace: str | None = None, workload: str | None = None) -> str:
    if namespace is None:
        if workload is not None:
            raise ValueError("listing instances of a workload needs its namespace")
        return INSTANCES
    prefix = f"{INSTANCES}{segment(namespace, 'namespace')}/"
    return prefix if workload is None else f"{prefix}{segment(workload, 'workload name')}/"


def instance_key(namespace: str, workload: str, instance_id: str) -> str:
    return instances_prefix(namespace, workload) + segment(instance_id, "instance id")


def instance_from_key(key: str) -> tuple[str, str, str]:
    """(namespace, workload, instance id) of an instance key."""
    namespace, workload, instance_id = key.removeprefix(INSTANCES).split("/", 2)
    return namespace, workload, instance_id


def workload_from_key(key: str) -> tuple[str, str]:
    """(namespace, name) of a workload key."""
    namespace, name = key.removeprefix(WORKLOADS).split("/", 1)
    return namespace, name


def issued_certificate_key(serial: str) -> str:
    return ISSUED_CERTIFICATES + segment(serial, "certificate serial")


def admin_key(name: str) -> str:
    return ADMINS + segment(name, "admin name")


def revoked_key(certificate_sha256: str) -> str:
    return REVOKED + segment(certificate_sha256, "certificate hash")


def token_key(token_id: str) -> str:
    return TOKENS + segment(token_id, "token id")


def ingress_cert_key(host: str) -> str:
    return INGRESS_CERTS + segment(host, "ingress host")


def subnet_key(cidr: str) -> str:
    return SUBNETS + segment(cidr.replace("/", "_"), "subnet")


def subnet_from_key(key: str) -> str:
    return key.removeprefix(SUBNETS).replace("_", "/")


def events_prefix(namespace: str | None = None) -> str:
    if namespace is None:
        return EVENTS
    return f"{EVENTS}{segment(namespace, 'namespace') if namespace else CLUSTER_SCOPE}/"


def event_key(namespace: str, timestamp_ns: int, event_id: str) -> str:
    return f"{events_prefix(namespace)}{timestamp_ns:020d}-{segment(event_id, 'event id')}"


def audit_key(timestamp_ns: int, record_id: str) -> str:
    return f"{AUDIT}{timestamp_ns:020d}-{segment(record_id, 'audit id')}"


def check_key(key: str) -> str:
    if not key.startswith(ROOT):
        raise ValueError(f"key {key!r} is outside {ROOT}")
    return key
