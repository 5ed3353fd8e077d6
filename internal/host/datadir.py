"""Layout of a node's data directory and the node identity kept in it.

<data-dir>/
  pki/ca.crt               cluster CA certificate (every node)
  pki/ca.key               cluster CA key (etcd members that may lead)
  pki/cluster-secret       seals the CA keys stored in etcd (etcd members, 0600)
  pki/node.crt, node.key   this node's identity (role kat:node)
  pki/api.crt, api.key     the API server certificate of an etcd member (role kat:api)
  pki/etcd/...             etcd's own CA, server and client certificates
  pki/wireguard.key        this node's WireGuard private key (0600, never sent)
  etcd/                    etcd data
  agent/node.json          node name, uid, cluster uid, API endpoints
  agent/left-cluster       written when this node is removed: network parts stay away
  agent/ingress/           HAProxy's configuration on an ingress node (0700)
  agent/ingress/certs/     one PEM (chain + key, 0600) per tls host HAProxy serves
  admin.katconfig          katcall config written by `init` (0600)
  join-command             the join command `init` made, with its token (0600)
  backups/, volumes/
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from internal.host.files import write_atomic


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def cluster_secret(self) -> Path:
        # Seals the CA keys in etcd (internal/security/sealing.py); etcd members only.
        return self.pki / "cluster-secret"

    @property
    def node_cert(self) -> Path:
        return self.pki / "node.crt"

    @property
    def node_key(self) -> Path:
        return self.pki / "node.key"

    @property
    def api_cert(self) -> Path:
        return self.pki / "api.crt"

    @property
    def api_key(self) -> Path:
        return self.pki / "api.key"

    @property
    def wireguard_key(self) -> Path:
        return self.pki / "wireguard.key"

    @property
    def audit_log(self) -> Path:
        """JSON lines of every mutating API call this node answered as leader (0600)."""
        return self.root / "audit.log"

    @property
    def etcd_pki(self) -> Path:
        return self.pki / "etcd"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def identity_file(self) -> Path:
        return self.root / "agent" / "node.json"

    @property
    def ingress_dir(self) -> Path:
        """HAProxy's files on an ingress node; its certs/ holds the HTTPS keys."""
        return self.root / "agent" / "ingress"

    @property
    def left_marker(self) -> Path:
        """Present once the node was removed from its cluster (network parts removed)."""
        return self.root / "agent" / "left-cluster"

    @property
    def admin_config(self) -> Path:
        return self.root / "admin.katconfig"

    @property
    def join_command(self) -> Path:
        return self.root / "join-command"

    def create(self) -> None:
        for d in (self.root, self.pki, self.root / "agent"):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)


@dataclass
class NodeIdentity:
    """Who this node is in its cluster; survives restarts."""

    name: str
    uid: str
    cluster_uid: str
    advertise_address: str
    api_endpoints: list[str] = field(default_factory=list)
    subnet: str = ""
    etcd_member: bool = False

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=2).encode(), 0o600)

    @classmethod
    def load(cls, path: Path) -> NodeIdentity | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))
