"""KAT's gRPC servers do not share a port with another process (gRPC's default
SO_REUSEPORT let a second server bind a port in use, silently splitting connections)."""

from __future__ import annotations

import grpc
import pytest

from internal.security import rpc


@pytest.mark.parametrize("options", [rpc.SERVER_OPTIONS, rpc.JOIN_SERVER_OPTIONS])
async def test_a_second_server_cannot_bind_a_port_in_use(options: object) -> None:
    first = grpc.aio.server(options=options)  # type: ignore[arg-type]
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    try:
        second = grpc.aio.server(options=options)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="Failed to bind"):
            second.add_insecure_port(f"127.0.0.1:{port}")
    finally:
        await first.stop(0)


async def test_large_messages_cross_an_mtls_server_with_small_tls_frames() -> None:
    """SERVER_OPTIONS frames its TLS records small (grpc.tsi.max_frame_size): a message
    of many frames still arrives whole, both ways, and a bidi stream works."""
    from internal.security import pki

    ca = pki.create_ca("kat-ca")
    server_pair = pki.issue_certificate(
        ca.cert_pem,
        ca.key_pem,
        common_name="api",
        role=rpc.ROLE_API,
        dns_names=[rpc.API_SERVER_NAME],
    )
    client_pair = pki.issue_certificate(
        ca.cert_pem, ca.key_pem, common_name="c", role=rpc.ROLE_ADMIN
    )

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request[::-1]

    async def echoes(requests, context):  # type: ignore[no-untyped-def]
        async for r in requests:
            yield r[::-1]

    handler = grpc.method_handlers_generic_handler(
        "t.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Echoes": grpc.stream_stream_rpc_method_handler(echoes),
        },
    )
    server = grpc.aio.server(options=rpc.SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    creds = rpc.mtls_server_credentials(server_pair.cert_pem, server_pair.key_pem, ca.cert_pem)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        client_creds = rpc.client_credentials(
            ca.cert_pem, client_pair.cert_pem, client_pair.key_pem
        )
        big = bytes(range(256)) * 4096 + b"end"  # 1 MB: ~256 frames of 4 KB
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", client_creds, rpc.api_channel_options()
        ) as ch:
            assert await ch.unary_unary("/t.Echo/Echo")(big, timeout=30) == big[::-1]
            stream = ch.stream_stream("/t.Echo/Echoes")()
            for msg in (b"a", big, b"b" * 5000):
                await stream.write(msg)
                assert await stream.read() == msg[::-1]
            await stream.done_writing()
    finally:
        await server.stop(0)
