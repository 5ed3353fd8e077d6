"""The checks every leader API handler runs, as decorators in one place: the caller's
role (admin certificate), leadership (UNAVAILABLE naming the leader otherwise), and
etcd failures mapped to clear status codes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from internal.security import rpc
from internal.state.etcd_values import EtcdUnavailable
from internal.state.kv import Compacted, StaleWrite

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

log = logging.getLogger(__name__)


class _Servicer(Protocol):
    lc: LeaderContext


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]
StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


def admin(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Admin certificate, leadership, and etcd failures mapped to clear codes."""

    async def wrapper(self: _Servicer, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        who = await rpc.require_role(context, rpc.ROLE_ADMIN)
        await self.lc.require_leader(context)
        try:
            response = await fn(self, request, context)
            context.set_trailing_metadata(((rpc.ENDPOINTS_KEY, ",".join(self.lc.api_endpoints())),))
            return response
        except EtcdUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cluster state unavailable: {exc}")
        except StaleWrite as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"conflicting change, retry: {exc}")
        finally:
            log.debug("audit: %s called %s", who, fn.__name__)
        raise AssertionError("unreachable")

    wrapper.__name__ = fn.__name__
    return wrapper


def admin_stream(
    fn: StreamHandler[Req, Resp],
) -> StreamHandler[Req, Resp]:
    """The same checks for streaming calls."""

    async def wrapper(
        self: _Servicer, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        async def checks(
            _self: _Servicer, _request: Any, _context: grpc.aio.ServicerContext
        ) -> None:
            return None

        await admin(checks)(self, request, context)
        try:
            async for item in fn(self, request, context):
                yield item
        except EtcdUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cluster state unavailable: {exc}")
        except Compacted as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))

    wrapper.__name__ = fn.__name__
    return wrapper


def caller(context: grpc.aio.ServicerContext) -> str:
    """The admin certificate's common name, for the audit trail."""
    ident = rpc.peer_identity(context)
    return ident[0] if ident and ident[0] else "unknown"
