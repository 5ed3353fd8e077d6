"""Starting the observability parts of a node: the /metrics endpoint."""

from __future__ import annotations

from api.v1alpha1 import kat_pb2
from internal.host.datadir import DataDir, NodeIdentity
from internal.manifests import defaults
from internal.observability import metrics
from internal.observability.metrics_http import serve_metrics
from internal.security.certfiles import KeyPairFile
from internal.version import VERSION


async def serve_node_metrics(
    dd: DataDir, identity: NodeIdentity, spec: kat_pb2.ClusterConfigurationSpec
) -> None:
    metrics.set_version(VERSION)
    # A configuration stored before metricsPort existed holds 0: use the default.
    port = spec.metrics_port or int(defaults.CLUSTER_DEFAULTS["metrics_port"])
    await serve_metrics(
        identity.advertise_address,
        port,
        dd.node_cert.read_bytes(),
        dd.node_key.read_bytes(),
        dd.ca_cert.read_bytes(),
        pair=KeyPairFile(dd.node_cert, dd.node_key),  # follows renewals
    )
