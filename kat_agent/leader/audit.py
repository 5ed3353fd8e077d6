"""The audit trail: every mutating ClusterAPI call, recorded by a gRPC interceptor
with time, actor (the client certificate's CN), verb, object and outcome.

Records go to etcd (`Store.record_audit`, kept `auditRetentionDays`, apart from
events) and, as JSON lines, to `<data-dir>/audit.log` (0600) on the leader.
"Mutating" is every ClusterAPI method except reads (Get*, List*, Watch*, Logs,
GetClusterInfo), so methods added later are audited without being listed here.
Calls a non-leader only redirects (UNAVAILABLE) are not recorded: the leader
records them when they arrive there. Request payloads are never stored (a
bundle, a command's stdin, a join token): only the object's kind and name.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from api.v1alpha1 import kat_pb2
from internal.observability import metrics
from internal.observability.grpc_metrics import split_method
from internal.observability.rotation import LOG_KEEP, RotatingFile
from internal.security import rpc
from kat_agent.leader.context import LeaderContext

log = logging.getLogger(__name__)

READ_PREFIXES = ("Get", "List", "Watch", "Logs")
PRUNE_INTERVAL_SECONDS = 3600.0
WRITE_TIMEOUT_SECONDS = 5.0
LOG_MAX_BYTES = 10 * 1024 * 1024

_WORDS = re.compile(r"[A-Z][a-z]*")


def is_mutating(service: str, method: str) -> bool:
    return service == "ClusterAPI" and not method.startswith(READ_PREFIXES)


def verb_and_kind(method: str) -> tuple[str, str]:
    """("delete", "workload") from DeleteWorkload; ("apply", "") from Apply."""
    words = [w.lower() for w in _WORDS.findall(method)] or [method.lower()]
    return words[0], " ".join(words[1:])


def _field(msg: Message | None, name: str) -> str:
    if msg is None or name not in msg.DESCRIPTOR.fields_by_name:
        return ""
    value = getattr(msg, name)
    return value if isinstance(value, str) else ""


def describe_object(method: str, request: Message | None, response: Message | None) -> str:
    """The object a call acted on, e.g. "workload default/web" or "token 1a2b"."""
    _, kind = verb_and_kind(method)
    if isinstance(response, kat_pb2.ApplyResponse):
        if response.HasField("namespace"):
            return f"namespace {response.namespace.metadata.name}"
        meta = response.workload.metadata
        return f"workload {meta.namespace}/{meta.name}" if meta.name else "bundle"
    if method == "Apply":
        return "bundle"  # refused before it named anything
    if isinstance(response, kat_pb2.CreateTokenResponse):
        return f"token {response.token.id}"  # never the secret
    if method == "Exec" or _field(request, "workload"):
        ns, wl = _field(request, "namespace"), _field(request, "workload")
        inst = _field(request, "instance_id")
        return f"workload {ns or 'default'}/{wl}" + (f" instance {inst}" if inst else "")
    name = _field(request, "name") or _field(request, "id") or _field(request, "node_name")
    name = name or _field(request, "host")
    ns = _field(request, "namespace")
    target = f"{ns}/{name}" if ns and name else name
    return f"{kind} {target}".strip() if target else kind or method


class AuditLog:
    """Append-only JSON lines, 0600, rotated by size (audit.log.1 ... .N)."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> None:
        self.path = path
        self._file = RotatingFile(path, max_bytes, keep)

    def append(self, record: kat_pb2.AuditRecord) -> None:
        self._file.write((json.dumps(to_json(record), separators=(",", ":")) + "\n").encode())


def to_json(record: kat_pb2.AuditRecord) -> dict[str, str]:
    doc = {
        "time": record.time.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds"),
        "actor": record.actor,
        "role": record.role,
        "verb": record.verb,
        "object": record.object,
        "outcome": record.outcome,
        "method": record.method,
    }
    if record.message:
        doc["message"] = record.message
    doc["time"] = doc["time"].replace("+00:00", "Z")
    return doc


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """Records mutating ClusterAPI calls answered while this node leads."""

    def __init__(self, lc: LeaderContext, audit_log: Path | None) -> None:
        self.lc = lc
        self.file: AuditLog | None = AuditLog(audit_log) if audit_log else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, method = split_method(handler_call_details.method)
        if handler is None or not is_mutating(service, method):
            return handler
        ser = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method), **ser
            )
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(
                self._streams(handler.stream_stream, method), **ser
            )
        return handler  # no mutating call of another shape exists yet

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, response, exc = datetime.now(UTC), None, None
            try:
                response = await behavior(request, context)
                return response
            except BaseException as e:
                exc = e
                raise
            finally:
                await self.record(context, method, request, response, exc, started)

        return wrapper

    def _streams(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        # Exec: the first request names the target; later ones carry stdin (not kept).
        async def gen(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            started, first = datetime.now(UTC), []
            exc: BaseException | None = None

            async def peek() -> AsyncIterator[Any]:
                async for r in requests:
                    if not first:
                        first.append(r)
                    yield r

            try:
                async for item in behavior(peek(), context):
                    yield item
            except BaseException as e:
                exc = e
                raise
            finally:
                await self.record(context, method, first[0] if first else None, None, exc, started)

        return gen

    async def record(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        request: Message | None,
        response: Message | None,
        exc: BaseException | None,
        started: datetime,
    ) -> None:
        from internal.observability.grpc_metrics import _code

        outcome = _code(context, exc)
        if not self.lc.leading:
            return  # redirected (or refused) by a follower: the leader records the real call
        ident = rpc.peer_identity(context)
        cn, role = ident if ident else ("", "")
        verb, _ = verb_and_kind(method)
        rec = kat_pb2.AuditRecord(
            actor=cn or "(no certificate)",
            role=role,
            verb=verb,
            method=f"ClusterAPI/{method}",
            object=describe_object(method, request, response),
            outcome=outcome,
        )
        rec.time.FromDatetime(started)
        if outcome != "OK":
            details = getattr(context, "details", None)
            with contextlib.suppress(Exception):
                rec.message = str(details() or "") if details else ""
            if not rec.message and exc is not None and not isinstance(exc, asyncio.CancelledError):
                rec.message = str(exc)[:500]
        metrics.AUDIT_RECORDS.labels(outcome).inc()
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                rec = await self.lc.store.record_audit(rec)
        except Exception as e:  # noqa: BLE001 - the call's answer must not depend on it
            log.error("audit record for %s %s not stored in etcd: %s", verb, rec.object, e)
        if self.file is not None:
            try:
                await asyncio.to_thread(self.file.append, rec)
            except OSError as e:
                log.error("audit log %s not written: %s", self.file.path, e)


async def list_audit(lc: LeaderContext, request: kat_pb2.ListAuditRequest) -> kat_pb2.AuditList:
    since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
    items = await lc.store.list_audit(since, request.limit)
    return kat_pb2.AuditList(items=items)


async def run_audit_pruning(lc: LeaderContext) -> None:
    """Reconcile loop while leading: drop records older than auditRetentionDays."""
    days = lc.spec.audit_retention_days or 90  # configurations from before the field
    while True:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        started = time.monotonic()
        try:
            removed = await lc.store.prune_audit(cutoff)
            if removed:
                log.info(
                    "pruned %d audit records older than %d days (%.1fs)",
                    removed,
                    days,
                    time.monotonic() - started,
                )
        except Exception as exc:  # noqa: BLE001 - retried next interval
            log.warning("audit pruning failed: %s", exc)
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
