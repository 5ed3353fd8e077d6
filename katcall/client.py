"""katcall's connection to the cluster: mTLS with the admin certificate from
the chosen context, trying each API endpoint and following a non-leader's
pointer to the leader.

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
from katcall import diagnose

T = TypeVar("T")
R = TypeVar("R", covariant=True)
Stub = kat_pb2_grpc.ClusterAPIStub

DEFAULT_TIMEOUT = 15.0


class CallError(Exception):
    """A failed call, worded for a person."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


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
    ) -> None:
        self.ctx = ctx
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
        return self._unary(lambda stub: stub.Apply, request, timeout)

    def get_workload(
        self, request: pb.ObjectRef, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Workload:
        return self._unary(lambda stub: stub.GetWorkload, request, timeout)

    def list_workloads(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.WorkloadList:
        return self._unary(lambda stub: stub.ListWorkloads, request, timeout)

    def watch_workloads(
        self, request: pb.WatchRequest, *, timeout: float | None = None
    ) -> Stream[pb.WorkloadWatchEvent]:
        return self._stream(lambda stub: stub.WatchWorkloads(request, timeout=timeout))

    def delete_workload(
        self, request: pb.DeleteWorkloadRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Empty:
        return self._unary(lambda stub: stub.DeleteWorkload, request, timeout)

    def rollback_workload(
        self, request: pb.RollbackRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Workload:
        return self._unary(lambda stub: stub.RollbackWorkload, request, timeout)

    def list_revisions(
        self, request: pb.ObjectRef, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.RevisionList:
        return self._unary(lambda stub: stub.ListRevisions, request, timeout)

    def list_instances(
        self, request: pb.ListInstancesRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.InstanceList:
        return self._unary(lambda stub: stub.ListInstances, request, timeout)

    def list_events(
        self, request: pb.ListEventsRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.EventList:
        return self._unary(lambda stub: stub.ListEvents, request, timeout)

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
        return self._unary(lambda stub: stub.CreateNamespace, request, timeout)

    def list_namespaces(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.NamespaceList:
        return self._unary(lambda stub: stub.ListNamespaces, request, timeout)

    def delete_namespace(
        self, request: pb.NamespaceRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Empty:
        return self._unary(lambda stub: stub.DeleteNamespace, request, timeout)

    def list_nodes(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.NodeList:
        return self._unary(lambda stub: stub.ListNodes, request, timeout)

    def get_node(self, request: pb.NodeRequest, *, timeout: float = DEFAULT_TIMEOUT) -> pb.Node:
        return self._unary(lambda stub: stub.GetNode, request, timeout)

    def cordon_node(self, request: pb.NodeRequest, *, timeout: float = DEFAULT_TIMEOUT) -> pb.Node:
        return self._unary(lambda stub: stub.CordonNode, request, timeout)

    def uncordon_node(
        self, request: pb.NodeRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.Node:
        return self._unary(lambda stub: stub.UncordonNode, request, timeout)

    def drain_node(self, request: pb.DrainRequest, *, timeout: float = DEFAULT_TIMEOUT) -> pb.Node:
        return self._unary(lambda stub: stub.DrainNode, request, timeout)

    def remove_node(self, request: pb.NodeRequest, *, timeout: float = DEFAULT_TIMEOUT) -> pb.Empty:
        return self._unary(lambda stub: stub.RemoveNode, request, timeout)

    def create_token(
        self, request: pb.CreateTokenRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.CreateTokenResponse:
        return self._unary(lambda stub: stub.CreateToken, request, timeout)

    def list_audit(
        self, request: pb.ListAuditRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.AuditList:
        return self._unary(lambda stub: stub.ListAudit, request, timeout)

    def list_tokens(
        self, request: pb.ListRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.TokenList:
        return self._unary(lambda stub: stub.ListTokens, request, timeout)

    def revoke_token(
        self, request: pb.RevokeTokenRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.JoinToken:
        return self._unary(lambda stub: stub.RevokeToken, request, timeout)

    def get_cluster_info(
        self, request: pb.ClusterInfoRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.ClusterInfo:
        return self._unary(lambda stub: stub.GetClusterInfo, request, timeout)

    def backup(
        self, request: pb.BackupRequest, *, timeout: float = DEFAULT_TIMEOUT
    ) -> pb.BackupResponse:
        return self._unary(lambda stub: stub.Backup, request, timeout)

    # ------------------------------------------------------------ plumbing

    def _unary(self, method: Callable[[Stub], Any], request: Any, timeout: float) -> Any:
        """Call a unary RPC on the leader, trying endpoints in order and following redirects."""
        response, call = self._with_leader(
            lambda stub: method(stub).with_call(request, timeout=timeout)
        )
        self._learn(call.trailing_metadata())
        return response

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
        last: grpc.RpcError | None = None
        answered: grpc.RpcError | None = None  # the most telling error: from a live server
        while queue and len(tried) < 8:
            endpoint = queue.pop(0)
            tried.append(endpoint)
            try:
                return fn(Stub(self._channel(endpoint)))
            except grpc.RpcError as err:
                last = err
                if err.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise CallError(describe(err), err.code()) from None  # type: ignore[attr-defined]
                if "failed to connect" not in (err.details() or ""):  # type: ignore[attr-defined]
                    answered = err
                leader = rpc.leader_from_error(err)
                if leader and leader not in tried:
                    queue.insert(0, leader)
        assert last is not None
        if answered is not None:
            raise CallError(describe(answered), grpc.StatusCode.UNAVAILABLE)
        why = diagnose.unreachable(self.ctx, tried)
        raise CallError(
            why or f"cannot reach the cluster at {', '.join(tried)}: {describe(last)}",
            grpc.StatusCode.UNAVAILABLE,
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
