"""katcall's connection to the cluster: mTLS with the admin certificate from
the chosen context, trying each API endpoint and following a non-leader's
pointer to the leader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from api.v1alpha1 import kat_pb2_grpc
from internal.security import clientconfig, rpc

T = TypeVar("T")

DEFAULT_TIMEOUT = 15.0


class CallError(Exception):
    """A failed call, worded for a person."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


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

    def call(self, method: str, request: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Call ClusterAPI.<method>, trying endpoints in order and following redirects."""
        response, call = self._with_leader(
            lambda stub: getattr(stub, method).with_call(request, timeout=timeout)
        )
        self._learn(call.trailing_metadata())
        return response

    def _learn(self, trailing: Any) -> None:
        for key, value in trailing or ():
            if key == rpc.ENDPOINTS_KEY and value:
                endpoints = str(value).split(",")
                if sorted(endpoints) != sorted(self.ctx.endpoints):
                    self.ctx.endpoints = endpoints
                    if self._on_endpoints is not None:
                        self._on_endpoints(endpoints)

    def stream(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """Start a server-streaming ClusterAPI call on the leader."""
        return self._with_leader(lambda stub: getattr(stub, method)(request, timeout=timeout))

    def _with_leader(self, fn: Callable[[kat_pb2_grpc.ClusterAPIStub], T]) -> T:
        queue = list(self.ctx.endpoints)
        tried: list[str] = []
        last: grpc.RpcError | None = None
        answered: grpc.RpcError | None = None  # the most telling error: from a live server
        while queue and len(tried) < 8:
            endpoint = queue.pop(0)
            tried.append(endpoint)
            try:
                return fn(kat_pb2_grpc.ClusterAPIStub(self._channel(endpoint)))
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
        raise CallError(
            f"cannot reach the cluster at {', '.join(tried)}: {describe(last)}",
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
