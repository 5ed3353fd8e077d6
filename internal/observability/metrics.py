"""Every Prometheus metric KAT exports, in one registry.

Other modules record with one line (`metrics.HEARTBEATS.inc()`, `with
metrics.timed(metrics.PODMAN_SECONDS, operation="create"):`); the HTTPS endpoint
(metrics_http.py) serves `REGISTRY`. Conventions: `kat_` prefix, base units
(seconds, bytes), counters end in `_total`, label values come from small fixed
sets (never ids or names of workloads, which would grow without bound).

Several agents in one process (tests, benchmarks) share the registry; a real
node runs one agent per process, so its figures are that node's.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Counter_
from collections.abc import Iterable, Iterator, Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from api.v1alpha1 import kat_pb2

# `_created` series double the output for no use in dashboards.
prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
prometheus_client.ProcessCollector(registry=REGISTRY)
prometheus_client.PlatformCollector(registry=REGISTRY)

# Latency buckets: API calls and etcd requests are milliseconds; container and
# image work is seconds to minutes.
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

BUILD_INFO = Gauge(
    "kat_build_info",
    "Always 1; the labels name the running kat-agent.",
    ["version"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------- leader (and API servers)

API_REQUESTS = Counter(
    "kat_api_requests_total",
    "gRPC calls served, by service, method and status code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
API_SECONDS = Histogram(
    "kat_api_request_duration_seconds",
    "Time to answer a gRPC call with a single response (streams are not timed).",
    ["service", "method"],
    buckets=_FAST,
    registry=REGISTRY,
)
SCHEDULING_SECONDS = Histogram(
    "kat_scheduling_duration_seconds",
    "Time the leader took to plan one workload in a pass that placed instances.",
    buckets=_FAST,
    registry=REGISTRY,
)
APPLY_TO_SCHEDULED_SECONDS = Histogram(
    "kat_apply_to_scheduled_seconds",
    "From an apply storing a new template to its first instance placed on a node.",
    buckets=_FAST + (30.0, 60.0, 300.0),
    registry=REGISTRY,
)
HEARTBEATS = Counter(
    "kat_heartbeats_received_total",
    "Heartbeats the leader received from agents.",
    registry=REGISTRY,
)
NODES = Gauge(
    "kat_nodes",
    "Nodes known to the leader, by condition (only on the leader).",
    ["condition"],
    registry=REGISTRY,
)
CLUSTER_INSTANCES = Gauge(
    "kat_cluster_instances",
    "Instances of all workloads as the leader records them, by phase (only on the leader).",
    ["phase"],
    registry=REGISTRY,
)
LEADER = Gauge("kat_leader", "1 while this node is the leader, else 0.", registry=REGISTRY)
ELECTIONS_WON = Counter(
    "kat_leader_elections_won_total", "Times this node became the leader.", registry=REGISTRY
)
ETCD_SECONDS = Histogram(
    "kat_etcd_request_duration_seconds",
    "Time of one etcd request (retries on other members included), by operation.",
    ["operation"],
    buckets=_FAST,
    registry=REGISTRY,
)
ETCD_ERRORS = Counter(
    "kat_etcd_request_errors_total",
    "etcd requests that failed, by operation.",
    ["operation"],
    registry=REGISTRY,
)
BACKUP_LAST_SUCCESS = Gauge(
    "kat_backup_last_success_timestamp_seconds",
    "Unix time of the newest etcd snapshot this leader took (0: none yet).",
    registry=REGISTRY,
)
BACKUP_AGE = Gauge(
    "kat_backup_age_seconds",
    "Seconds since the newest etcd snapshot this leader took (NaN before the first).",
    registry=REGISTRY,
)
BACKUP_AGE.set(float("nan"))
AUDIT_RECORDS = Counter(
    "kat_audit_records_total",
    "Mutating calls recorded in the audit trail, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------- every agent

NODE_INSTANCES = Gauge(
    "kat_node_instances", "Instances this agent runs, by phase.", ["phase"], registry=REGISTRY
)
CONTAINER_STARTS = Counter(
    "kat_container_starts_total", "Containers this agent started.", registry=REGISTRY
)
CONTAINER_RESTARTS = Counter(
    "kat_container_restarts_total",
    "Containers this agent started again for an instance that had run before.",
    registry=REGISTRY,
)
CONTAINER_FAILURES = Counter(
    "kat_container_failures_total",
    "Containers that exited with an error, failed their health check or failed to start.",
    registry=REGISTRY,
)
PODMAN_SECONDS = Histogram(
    "kat_podman_request_duration_seconds",
    "Time of one Podman API call, by operation.",
    ["operation"],
    buckets=_FAST + (30.0, 60.0),
    registry=REGISTRY,
)
IMAGE_PULLS = Counter(
    "kat_image_pulls_total",
    "Image pulls, by result (success, failure).",
    ["result"],
    registry=REGISTRY,
)
BUILD_SECONDS = Histogram(
    "kat_build_duration_seconds",
    "Time of one image build from git, by result (success, failure).",
    ["result"],
    buckets=_SLOW,
    registry=REGISTRY,
)
STREAM_RECONNECTS = Counter(
    "kat_assignments_stream_reconnects_total",
    "Times the agent opened its assignments stream to the leader again after losing it.",
    registry=REGISTRY,
)
INGRESS_RELOAD_FAILURES = Counter(
    "kat_ingress_reload_failures_total",
    "Reloads of this node's ingress HAProxy that it did not act on (asked for again).",
    registry=REGISTRY,
)
DNS_QUERIES = Counter(
    "kat_dns_queries_total",
    "Queries the node's DNS server answered, by answer: zone (a name of the cluster), "
    "nxdomain (in the zone, no such name), forwarded (answered by an upstream), refused "
    "(no upstream, or too many forwards at once), servfail (no upstream answered), "
    "dropped (not a readable query).",
    ["answer"],
    registry=REGISTRY,
)
DNS_ANSWERS = ("zone", "nxdomain", "forwarded", "refused", "servfail", "dropped")
for _a in DNS_ANSWERS:
    DNS_QUERIES.labels(_a)


class OverlayPeers(Collector):
    """Per overlay peer (label `peer`: the node's name, a small set): seconds since the
    latest WireGuard handshake, computed at scrape time (NaN before the first), and the
    bytes received and sent. Fed by the overlay's reconcile pass (`set`)."""

    def __init__(self) -> None:
        # interface -> peer -> (latest handshake unix time or 0, rx bytes, tx bytes)
        self._peers: dict[str, dict[str, tuple[float, int, int]]] = {}
        self.clock = time.time

    def set(self, interface: str, peers: Mapping[str, tuple[float, int, int]]) -> None:
        self._peers[interface] = dict(peers)

    def forget(self, interface: str) -> None:
        self._peers.pop(interface, None)

    def collect(self) -> Iterable[Metric]:
        age = GaugeMetricFamily(
            "kat_overlay_peer_handshake_age_seconds",
            "Seconds since the latest WireGuard handshake with a peer (NaN: none yet).",
            labels=["peer"],
        )
        rx = CounterMetricFamily(
            "kat_overlay_peer_received_bytes",
            "Bytes received from a peer over the overlay (since its link was made).",
            labels=["peer"],
        )
        tx = CounterMetricFamily(
            "kat_overlay_peer_sent_bytes",
            "Bytes sent to a peer over the overlay (since its link was made).",
            labels=["peer"],
        )
        now = self.clock()
        merged: dict[str, tuple[float, int, int]] = {}
        for peers in self._peers.values():
            merged.update(peers)
        for peer, (handshake, rx_bytes, tx_bytes) in sorted(merged.items()):
            age.add_metric([peer], max(0.0, now - handshake) if handshake else float("nan"))
            rx.add_metric([peer], rx_bytes)
            tx.add_metric([peer], tx_bytes)
        return [age, rx, tx]


OVERLAY_PEERS = OverlayPeers()
REGISTRY.register(OVERLAY_PEERS)


_CONDITIONS = ("READY", "NOT_READY", "UNKNOWN")
_PHASES = tuple(
    n
    for n in kat_pb2.Instance.Phase.keys()
    if n != "PHASE_UNSPECIFIED"  # noqa: SIM118
)


@contextlib.contextmanager
def timed(hist: Histogram, **labels: str) -> Iterator[None]:
    """Observe the duration of the block (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        (hist.labels(**labels) if labels else hist).observe(time.perf_counter() - start)


def count_nodes(conditions: Iterable[int]) -> None:
    """kat_nodes{condition} from the leader's node records' conditions."""
    counts = Counter_(kat_pb2.NodeStatus.Condition.Name(c) for c in conditions)
    set_by_label(NODES, counts, _CONDITIONS)


def count_instances(gauge: Gauge, phases: Iterable[int]) -> None:
    """kat_cluster_instances / kat_node_instances {phase} from instance phases."""
    name = kat_pb2.Instance.Phase.Name
    counts = {name(p): n for p, n in Counter_(phases).items()}
    set_by_label(gauge, counts, _PHASES)


def container_started(restart_count: int) -> None:
    CONTAINER_STARTS.inc()
    if restart_count:
        CONTAINER_RESTARTS.inc()


def set_by_label(gauge: Gauge, counts: Mapping[str, int], known: tuple[str, ...]) -> None:
    """Set a gauge with one label to `counts`; every value in `known` is exported
    (0 when absent), so a phase that empties drops to 0 instead of vanishing."""
    for value in (*known, *(k for k in counts if k not in known)):
        gauge.labels(value).set(counts.get(value, 0))


_ETCD_OPS = {
    "read": "revision",
    "transaction": "txn",
    "list": "range",
    "keep": "lease_keepalive",
    "grant": "lease_grant",
    "revoke": "lease_revoke",
    "lease": "lease_ttl",
    "health": "health",
}


def etcd_operation(what: str) -> str:
    """The bounded operation name of an etcd client description ("get /kat/x" -> get)."""
    first = what.split(" ", 1)[0]
    return _ETCD_OPS.get(first, first)


def backup_taken(unix_time: float) -> None:
    BACKUP_LAST_SUCCESS.set(unix_time)
    BACKUP_AGE.set_function(lambda: time.time() - unix_time)


def set_version(version: str) -> None:
    BUILD_INFO.clear()
    BUILD_INFO.labels(version).set(1)


def exposition() -> bytes:
    """The text format of every metric (what GET /metrics answers)."""
    return generate_latest(REGISTRY)
