"""katcall's connection to the cluster: mTLS with the admin certificate from
the chosen context, trying each API endpoint and following a non-leader's
pointer to the leader; unary calls ride through a failover (katcall/failover.py).

Every ClusterAPI RPC has a typed method here (`client.list_nodes(req)` returns a
`NodeList`), so commands never name RPCs by string and a typo or a wrong request type
is caught by the type checker, not at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import grpc

from api.v1alpha1 import kat_pb2 as pb
from api.v1alpha1 import kat_pb2_grpc
from internal.security import clientconfig, rpc
from katcall import diagnose, failover

T = TypeVar("T")
R = TypeVar("R", covariant=True)
Stub = kat_pb2_grpc.ClusterAPIStub

DEFAULT_TIMEOUT = 15.0
# How long a new connection may take before the endpoint counts as unreachable: a
# partitioned node drops packets, and would otherwise hold the call until its deadline.
CONNECT_TIMEOUT = 3.0


class CallError(Exception):
    """A failed call, worded for a person."""

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, *, executed_maybe: bool = True
    ) -> None:
        super().__init__(message)
        self.code = code
        # False when no server can have executed the request (none reached, or all refused).
        self.executed_maybe = executed_maybe


class Stream(Protocol[R]):
    """A server stream as grpc returns it: iterate for messages, cancel() to stop."""

    def __iter__(self) -> Iterator[R]: ...

    def __next__(self) -> R: ...

    def cancel(self) -> bool: ...


class Client:
    def __init__(
        self,
        ctx: clientconfig.Context,
        on_endpoints: Callable[[list[str]], None] | None = None,
        request_timeout: float = failover.DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.ctx = ctx
        self.request_timeout = request_timeout
        self._retry_told = False
        # Told when the cluster names API endpoints the context does not list
        # (a member joined or left), so the saved config follows failovers.
        self._on_endpoints = on_endpoints
        self._creds = rpc.client_credentials(ctx.ca, ctx.cert, ctx.key)
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, endpoint: str) -> grpc.Channel:
        if endpoint not in self._channels:
            self._channels[endpoint] = grpc.secure_channel(
                endpoint, self._creds, options=rpc.KEEPALIVE_OPTIONS
            )
        return self._channels[endpoint]

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ one method per RPC

    def apply(
        self, request: pb.ApplyRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.ApplyResponse:
        return self._unary("Apply", request, timeout)

    def get_workload(
        self, request: pb.ObjectRef, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Workload:
        return self._unary("GetWorkload", request, timeout)

    def list_workloads(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.WorkloadList:
        return self._unary("ListWorkloads", request, timeout)

    def watch_workloads(
        self, request: pb.WatchRequest, *, timeout: float | None = None
    ) -> Stream[pb.WorkloadWatchEvent]:
        return self._stream(lambda stub: stub.WatchWorkloads(request, timeout=timeout))

    def delete_workload(
        self, request: pb.DeleteWorkloadRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Empty:
        return self._unary("DeleteWorkload", request, timeout)

    def rollback_workload(
        self, request: pb.RollbackRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Workload:
        return self._unary("RollbackWorkload", request, timeout)

    def list_revisions(
        self, request: pb.ObjectRef, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.RevisionList:
        return self._unary("ListRevisions", request, timeout)

    def list_instances(
        self, request: pb.ListInstancesRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.InstanceList:
        return self._unary("ListInstances", request, timeout)

    def list_events(
        self, request: pb.ListEventsRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.EventList:
        return self._unary("ListEvents", request, timeout)

    def watch_events(
        self, request: pb.WatchRequest, *, timeout: float | None = None
    ) -> Stream[pb.Event]:
        return self._stream(lambda stub: stub.WatchEvents(request, timeout=timeout))

    def logs(self, request: pb.LogsRequest, *, timeout: float | None = None) -> Stream[pb.LogChunk]:
        return self._stream(lambda stub: stub.Logs(request, timeout=timeout))

    def exec(
        self, requests: Iterator[pb.ExecRequest], *, timeout: float | None = None
    ) -> Stream[pb.ExecResponse]:
        return self._stream(lambda stub: stub.Exec(requests, timeout=timeout))

    def create_namespace(
        self, request: pb.NamespaceRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Namespace:
        return self._unary("CreateNamespace", request, timeout)

    def list_namespaces(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.NamespaceList:
        return self._unary("ListNamespaces", request, timeout)

    def delete_namespace(
        self, request: pb.NamespaceRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Empty:
        return self._unary("DeleteNamespace", request, timeout)

    def list_nodes(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.NodeList:
        return self._unary("ListNodes", request, timeout)

    def get_node(self, request: pb.NodeRequest, *, timeout: float = DEFAULT_TIMEOUT) -> pb.Node:
        return self._unary("GetNode", request, timeout)

    def cordon_node(self, request: pb.NodeRequest, *, timeout: float = DEFAULT_TIMEOUT) -> pb.Node:
        return self._unary("CordonNode", request, timeout)

    def uncordon_node(
        self, request: pb.NodeRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Node:
        return self._unary("UncordonNode", request, timeout)

    def drain_node(self, request: pb.DrainRequest, *, timeout: float = DEFAULT_TIMEOUT) -> pb.Node:
        return self._unary("DrainNode", request, timeout)

    def remove_node(self, request: pb.NodeRequest, *, timeout: float = DEFAULT_TIMEOUT) -> pb.Empty:
        return self._unary("RemoveNode", request, timeout)

    def create_token(
        self, request: pb.CreateTokenRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.CreateTokenResponse:
        return self._unary("CreateToken", request, timeout)

    def list_audit(
        self, request: pb.ListAuditRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.AuditList:
        return self._unary("ListAudit", request, timeout)

    def list_tokens(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.TokenList:
        return self._unary("ListTokens", request, timeout)

    def revoke_token(
        self, request: pb.RevokeTokenRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.JoinToken:
        return self._unary("RevokeToken", request, timeout)

    def label_node(
        self, request: pb.LabelNodeRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Node:
        return self._unary("LabelNode", request, timeout)

    def get_endpoints(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.EndpointSet:
        return self._unary("GetEndpoints", request, timeout)

    def set_ingress_certificate(
        self, request: pb.IngressCertificateRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.IngressCertificate:
        return self._unary("SetIngressCertificate", request, timeout)

    def list_ingress_certificates(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.IngressCertificateList:
        return self._unary("ListIngressCertificates", request, timeout)

    def remove_ingress_certificate(
        self, request: pb.IngressCertificateRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Empty:
        return self._unary("RemoveIngressCertificate", request, timeout)

    def get_cluster_info(
        self, request: pb.ClusterInfoRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.ClusterInfo:
        return self._unary("GetClusterInfo", request, timeout)

    def backup(
        self, request: pb.BackupRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.BackupResponse:
        return self._unary("Backup", request, timeout)

    # ------------------------------------------------------------ plumbing

    def _unary(self, method: str, request: Any, timeout: float) -> Any:
        """Call ClusterAPI.<method> on the leader, trying endpoints in order and following
        redirects; while no leader answers, again with back-off for up to `request_timeout`
        seconds (only when sending the request again is safe, see katcall/failover.py)."""
        retry = failover.Retry(self.request_timeout, announce=self._announce)
        while True:
            budget = max(1.0, min(timeout, retry.left()))
            try:
                response, call = self._with_leader(
                    lambda stub, t=budget: getattr(stub, method).with_call(request, timeout=t)
                )
            except CallError as err:
                if not failover.waits_for_leader(err.code, str(err)) or not failover.may_retry(
                    method, err.executed_maybe
                ):
                    raise
                if not retry.pause(str(err)):
                    raise
                continue
            self._learn(call.trailing_metadata())
            return response

    def _announce(self, line: str) -> None:
        if not self._retry_told:  # once per katcall run, not once per call
            self._retry_told = True
            failover._stderr(line)

    def _stream(self, start: Callable[[Stub], Any]) -> Any:
        """Start a streaming RPC on the leader."""
        return self._with_leader(start)

    def _learn(self, trailing: Any) -> None:
        for key, value in trailing or ():
            if key == rpc.ENDPOINTS_KEY and value:
                endpoints = str(value).split(",")
                if sorted(endpoints) != sorted(self.ctx.endpoints):
                    self.ctx.endpoints = endpoints
                    if self._on_endpoints is not None:
                        self._on_endpoints(endpoints)

    def _with_leader(self, fn: Callable[[Stub], T]) -> T:
        queue = list(self.ctx.endpoints)
        tried: list[str] = []
        last = ""
        answered = ""  # the most telling error: from a live server
        executed_maybe = False
        while queue and len(tried) < 8:
            endpoint = queue.pop(0)
            tried.append(endpoint)
            channel = self._channel(endpoint)
            try:
                grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
            except grpc.FutureTimeoutError:
                last = f"not reachable within {CONNECT_TIMEOUT:g}s"
                continue
            try:
                return fn(Stub(channel))
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise CallError(describe(err), err.code()) from None  # type: ignore[attr-defined]
                details = err.details() or ""  # type: ignore[attr-defined]
                last = describe(err)
                if not failover.not_executed(details):
                    executed_maybe = True  # e.g. the connection broke after the request left
                if "failed to connect" not in details:
                    answered = last
                leader = rpc.leader_from_error(err)
                if leader and leader not in tried:
                    queue.insert(0, leader)
        if answered:
            raise CallError(answered, grpc.StatusCode.UNAVAILABLE, executed_maybe=executed_maybe)
        why, lasting = diagnose.unreachable(self.ctx, tried)
        raise CallError(
            why or f"cannot reach the cluster at {', '.join(tried)}: {last}",
            # a certificate problem is not a failover: it is reported at once, not retried
            grpc.StatusCode.UNAUTHENTICATED if lasting else grpc.StatusCode.UNAVAILABLE,
            executed_maybe=executed_maybe,
        )


def describe(err: grpc.RpcError) -> str:
    code = err.code()  # type: ignore[attr-defined]
    details = err.details() or ""  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in details or "Connection refused" in details
    ):
        return "connection refused (is kat-agent running there?)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out waiting for the leader"
    return details or code.name
