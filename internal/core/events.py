"""Building Event records (pure); the store writes them."""

from __future__ import annotations

from datetime import UTC, datetime

from api.v1alpha1 import kat_pb2


def new_event(
    reason: str,
    message: str,
    *,
    kind: str,
    name: str,
    namespace: str = "",
    warning: bool = False,
    source: str = "leader",
) -> kat_pb2.Event:
    ev = kat_pb2.Event(
        type=kat_pb2.Event.WARNING if warning else kat_pb2.Event.NORMAL,
        reason=reason,
        message=message,
        object_kind=kind,
        object_name=name,
        namespace=namespace,
        source=source,
    )
    ev.timestamp.FromDatetime(datetime.now(UTC))
    return ev
