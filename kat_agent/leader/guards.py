"""The checks every leader API handler runs, as decorators in one place: the caller's
role (admin or node certificate), leadership (UNAVAILABLE naming the leader otherwise),
and etcd failures mapped to clear status codes. Handlers then hold only their logic."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc

from internal.security import rpc
from internal.state.etcd_values import EtcdUnavailable
from internal.state.kv import Compacted, StaleWrite
from kat_agent.leader.revocation import StreamCut, until_cut

if TYPE_CHECKING:
    from kat_agent.leader.context import LeaderContext

log = logging.getLogger(__name__)


class _Servicer(Protocol):
    lc: LeaderContext


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]
StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


async def _check_admin(servicer: _Servicer, context: grpc.aio.ServicerContext) -> str:
    """The admin certificate's common name, after checking that it is not revoked and
    that this process leads."""
    who = await rpc.require_role(context, rpc.ROLE_ADMIN)
    await servicer.lc.revocations.check(context, rpc.peer_certificate_sha256(context))
    await servicer.lc.require_leader(context)
    return who


async def _check_node(servicer: _Servicer, context: grpc.aio.ServicerContext) -> str:
    """The node certificate's common name, once this process leads and the certificate is
    the one its node holds now: a removed node's (or a replaced) certificate is refused."""
    cn = await rpc.require_role(context, rpc.ROLE_NODE)
    lc = servicer.lc
    await lc.require_leader(context)
    digest = rpc.peer_certificate_sha256(context)
    bound = lc.registry.bound_certificate(cn)
    # the certificate before a renewal stays accepted on connections made with it
    accepted = (bound, lc.registry.previous_certificate(cn))
    if bound is None or (bound and digest not in accepted) or lc.revocations.is_revoked(digest):
        context.set_trailing_metadata(((rpc.REVOKED_KEY, "1"),))  # the agent leaves on it
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the certificate of {cn!r} is revoked (the node was removed or re-joined)",
        )
    return cn


def guarded(fn: Any) -> Any:
    """Mark a handler as checked by one of these guards (tests/unit checks every RPC)."""
    fn.__kat_guarded__ = True
    return fn


def _send_endpoints(servicer: _Servicer, context: grpc.aio.ServicerContext) -> None:
    # Clients learn the current API endpoints from every answer (failover).
    context.set_trailing_metadata(((rpc.ENDPOINTS_KEY, ",".join(servicer.lc.api_endpoints())),))


def admin(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Admin certificate, leadership, and etcd failures mapped to clear codes."""

    async def wrapper(self: _Servicer, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        who = await _check_admin(self, context)
        try:
            response = await fn(self, request, context)
            _send_endpoints(self, context)
            return response
        except EtcdUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cluster state unavailable: {exc}")
        except StaleWrite as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"conflicting change, retry: {exc}")
        finally:
            log.debug("audit: %s called %s", who, fn.__name__)
        raise AssertionError("unreachable")

    wrapper.__name__ = fn.__name__
    return guarded(wrapper)


def admin_stream(fn: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """The same checks for streaming calls (a stream that outlives etcd's history of its
    start revision ends with OUT_OF_RANGE)."""

    async def wrapper(
        self: _Servicer, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        who = await _check_admin(self, context)
        _send_endpoints(self, context)
        log.debug("audit: %s called %s", who, fn.__name__)
        try:
            async for item in fn(self, request, context):
                yield item
                del item  # not kept while waiting for the next one (see until_cut)
        except EtcdUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cluster state unavailable: {exc}")
        except Compacted as exc:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))

    wrapper.__name__ = fn.__name__
    return guarded(wrapper)


def leader(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Only while this process leads (Join: the caller holds a token, not a certificate)."""

    async def wrapper(self: _Servicer, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        await self.lc.require_leader(context)
        return await fn(self, request, context)

    wrapper.__name__ = fn.__name__
    return guarded(wrapper)


NodeHandler = Callable[[Any, Req, grpc.aio.ServicerContext, str], Awaitable[Resp]]
NodeStreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext, str], AsyncIterator[Resp]]


def node(fn: NodeHandler[Req, Resp]) -> Handler[Req, Resp]:
    """A current node certificate (`_check_node`); the handler gets its common name (the
    node's name) as `cn`."""

    async def wrapper(self: _Servicer, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        cn = await _check_node(self, context)
        return await fn(self, request, context, cn)

    wrapper.__name__ = fn.__name__
    return guarded(wrapper)


def node_stream(fn: NodeStreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """The same for streaming calls; the stream is cut (PERMISSION_DENIED) as soon as
    its node is removed, whatever it is waiting for."""

    async def wrapper(
        self: _Servicer, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        cn = await _check_node(self, context)
        with self.lc.node_streams.opened(cn) as cut:
            try:
                async for item in until_cut(fn(self, request, context, cn), cut):
                    yield item  # type: ignore[misc]
                    del item  # not kept while waiting for the next one (see until_cut)
            except StreamCut:
                log.info("cut a %s stream of removed node %s", fn.__name__, cn)
                context.set_trailing_metadata(((rpc.REVOKED_KEY, "1"),))
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"node {cn!r} was removed from the cluster; its certificate is revoked",
                )

    wrapper.__name__ = fn.__name__
    return guarded(wrapper)


async def require_own_node(
    servicer: _Servicer, cn: str, node_name: str, context: grpc.aio.ServicerContext, action: str
) -> None:
    """Leadership, then that a node acts only as itself (`action`: "report as", ...). Per
    message of a stream, since leadership can end while the stream lasts."""
    await servicer.lc.require_leader(context)
    if cn != node_name:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"certificate of {cn!r} cannot {action} {node_name!r}",
        )


def caller(context: grpc.aio.ServicerContext) -> str:
    """The admin certificate's common name, for the audit trail."""
    ident = rpc.peer_identity(context)
    return ident[0] if ident and ident[0] else "unknown"
