"""katcall's connection to the cluster: mTLS with the admin certificate from
the chosen context, trying each API endpoint and following a non-leader's
pointer to the leader; unary calls ride through a failover (katcall/failover.py).

Every ClusterAPI RPC has a typed method here (`client.list_nodes(req)` returns a
`NodeList`), so commands never name RPCs by string and a typo or a wrong request type
is caught by the type checker, not at run time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import grpc

from api.v1alpha1 import kat_pb2 as pb
from api.v1alpha1 import kat_pb2_grpc
from internal.security import clientconfig, rpc
from katcall import diagnose, failover

T = TypeVar("T")
R = TypeVar("R", covariant=True)


class Stub(kat_pb2_grpc.ClusterAPIStub):
    """The ClusterAPI stub, keeping its channel (AgentAPI calls share it)."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel)
        self.channel = channel


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
        # The endpoint that last answered a unary call (every admin call checks that the
        # server leads): tried first, and where streams are opened. A stream's start
        # cannot fail over by itself (its errors come when it is read), so it needs it.
        self.leader: str | None = None
        self._answered: str | None = None

    def _channel(self, endpoint: str) -> grpc.Channel:
        if endpoint not in self._channels:
            self._channels[endpoint] = grpc.secure_channel(
                endpoint, self._creds, options=rpc.api_channel_options()
            )
        return self._channels[endpoint]

    def close(self) -> None:
        for ch in self._channels.values():
            _connectivity_polling_done(ch)
            ch.close()

    def use_certificate(self, cert: bytes, key: bytes) -> None:
        """Continue with a renewed client certificate (new channels)."""
        self.close()
        self._channels.clear()
        self.ctx.cert, self.ctx.key = cert, key
        self._creds = rpc.client_credentials(self.ctx.ca, cert, key)

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
        return self._watch(lambda stub: stub.WatchWorkloads(request, timeout=timeout))

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
        return self._watch(lambda stub: stub.WatchEvents(request, timeout=timeout))

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

    def create_admin(
        self, request: pb.CreateAdminRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.CreateAdminResponse:
        return self._unary("CreateAdmin", request, timeout)

    def revoke_admin(
        self, request: pb.AdminRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.AdminRecord:
        return self._unary("RevokeAdmin", request, timeout)

    def list_admins(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.AdminList:
        return self._unary("ListAdmins", request, timeout)

    def list_audit(
        self, request: pb.ListAuditRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.AuditList:
        return self._unary("ListAudit", request, timeout)

    def list_certificates(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.CertificateList:
        return self._unary("ListCertificates", request, timeout)

    def renew_certificate(
        self, request: pb.RenewCertificateRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.RenewCertificateResponse:
        """AgentAPI.RenewCertificate on the leader (admin certificates renew there too)."""
        return self._with_leader(
            lambda stub: kat_pb2_grpc.AgentAPIStub(stub.channel).RenewCertificate(
                request, timeout=timeout
            )
        )

    def restart_workload(
        self, request: pb.ObjectRef, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Workload:
        return self._unary("RestartWorkload", request, timeout)

    def list_instance_stats(
        self, request: pb.TopRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.TopResponse:
        return self._unary("ListInstanceStats", request, timeout)

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
            self.leader = self._answered
            return response

    def _announce(self, line: str) -> None:
        if not self._retry_told:  # once per katcall run, not once per call
            self._retry_told = True
            failover._stderr(line)

    def _stream(self, start: Callable[[Stub], Any]) -> Any:
        """Start a streaming RPC on the leader (found first with a unary call, which
        rides through a failover)."""
        if self.leader is None:
            self._unary("GetClusterInfo", pb.ClusterInfoRequest(), DEFAULT_TIMEOUT)
        return self._with_leader(start)

    def _watch(self, start: Callable[[Stub], Any]) -> Stream[Any]:
        """A watch that follows the leader: reopened on the new leader when the stream
        breaks with UNAVAILABLE (the leader went away or stepped down), for up to
        `request_timeout` seconds without a leader. Only for watches, whose first
        messages are the current state again: a reopened Logs or Exec would repeat."""
        return ResumingStream(self, start)

    def lost_leader(self, err: grpc.RpcError) -> None:
        """A stream from the leader broke: look for the leader again, first where the
        error points."""
        self.leader = rpc.leader_from_error(err)

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
        if self.leader:
            queue = [self.leader, *(e for e in queue if e != self.leader)]
        tried: list[str] = []
        last = ""
        answered = ""  # the most telling error: from a live server
        executed_maybe = False
        while queue and len(tried) < 8:
            endpoint = queue.pop(0)
            tried.append(endpoint)
            channel = self._channel(endpoint)
            ready = grpc.channel_ready_future(channel)
            try:
                ready.result(timeout=CONNECT_TIMEOUT)
            except grpc.FutureTimeoutError:
                ready.cancel()  # else its polling thread outlives the channel and complains
                last = f"not reachable within {CONNECT_TIMEOUT:g}s"
                continue
            try:
                result = fn(Stub(channel))
                self._answered = endpoint
                return result
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise CallError(describe(err), err.code()) from None  # type: ignore[attr-defined]
                details = err.details() or ""  # type: ignore[attr-defined]
                last = describe(err)
                if not failover.not_executed(details):
                    executed_maybe = True  # e.g. the connection broke after the request left
                leader = rpc.leader_from_error(err)
                # A live server's answer tells more than a refusal to connect, and the
                # leader's own failure more than a follower pointing at it afterwards.
                if "failed to connect" not in details and not (answered and leader):
                    answered = last
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


class ResumingStream:
    """A watch stream on the leader that is reopened on the next leader when it breaks
    with UNAVAILABLE (see Client._watch). Iterate it; cancel() ends it."""

    def __init__(self, client: Client, start: Callable[[Stub], Any]) -> None:
        self._client = client
        self._start = start
        self._call: Any = None
        self._cancelled = False
        self._retry: failover.Retry | None = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while True:
            if self._cancelled:
                raise StopIteration
            if self._call is None:
                try:
                    self._call = self._client._stream(self._start)
                except CallError as err:
                    if not failover.waits_for_leader(err.code, str(err)) or not self._pause(
                        str(err)
                    ):
                        raise
                    continue
            try:
                item = next(self._call)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or self._cancelled:  # type: ignore[attr-defined]
                    raise
                self._call = None
                self._client.lost_leader(err)
                if not self._pause(describe(err)):
                    raise
                continue
            self._retry = None  # a message: the next break gets a fresh budget
            return item

    def _pause(self, why: str) -> bool:
        if self._retry is None:
            client = self._client
            self._retry = failover.Retry(client.request_timeout, announce=client._announce)
        return self._retry.pause(why)

    def cancel(self) -> bool:
        self._cancelled = True
        return self._call.cancel() if self._call is not None else False


def _connectivity_polling_done(channel: grpc.Channel, within: float = 0.5) -> None:
    """Let grpc's connectivity thread (started by channel_ready_future) notice it has no
    subscriber left before the channel closes: it polls every 0.2 s and, finding the channel
    closed, dies with a traceback on stderr ("Cannot invoke RPC: Channel closed!")."""
    state = getattr(channel, "_connectivity_state", None)
    deadline = time.monotonic() + within
    while getattr(state, "polling", False) and time.monotonic() < deadline:
        time.sleep(0.02)


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
