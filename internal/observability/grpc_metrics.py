"""A grpc.aio server interceptor that counts and times every call:
kat_api_requests_total{service,method,code} and, for calls with a single
response, kat_api_request_duration_seconds{service,method}. One line to use:
`grpc.aio.server(interceptors=[MetricsInterceptor()])`."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from internal.observability import metrics


def split_method(full: str) -> tuple[str, str]:
    """("ClusterAPI", "Apply") from "/kat.v1alpha1.ClusterAPI/Apply"."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service.rpartition(".")[2] or "unknown", method or "unknown"


def _code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = None
    getter = getattr(context, "code", None)
    if getter is not None:
        try:
            code = getter()
        except Exception:  # noqa: BLE001 - older grpc: no code() on aio contexts
            code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if exc is not None:
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = split_method(handler_call_details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _stream(handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _stream(handler.stream_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _unary(behavior: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        exc: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            metrics.API_SECONDS.labels(service, method).observe(time.perf_counter() - start)
            metrics.API_REQUESTS.labels(service, method, _code(context, exc)).inc()

    return wrapper


def _stream(behavior: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):
        # Served through `context.write` (gRPC's reader/writer API), not as a generator:
        # grpc.aio keeps the message a handler generator last yielded alive until the
        # next one, and a long-lived stream's last message can be large (a node's full
        # assignment snapshot lists every peer: ~200 KB with 1,000 nodes, held by each
        # idle stream). Here each message is dropped as soon as it is written.
        async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
            exc: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    await context.write(item)
                    del item
            except BaseException as e:
                exc = e
                raise
            finally:
                metrics.API_REQUESTS.labels(service, method, _code(context, exc)).inc()

        return writer

    async def coro(request: Any, context: grpc.aio.ServicerContext) -> Any:
        exc: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            metrics.API_REQUESTS.labels(service, method, _code(context, exc)).inc()

    return coro
