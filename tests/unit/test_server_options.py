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
