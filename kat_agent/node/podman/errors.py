"""The one error of the Podman layer: every failure in Podman, or in preparing a container
for it, is a ContainerRuntimeError with a `kind` the reconciler can act on (retry when
Podman is UNAVAILABLE, adopt on NAME_CONFLICT, ...)."""

from __future__ import annotations

import enum

from podman.errors import APIError


class ErrorKind(enum.Enum):
    IMAGE_NOT_FOUND = "image not found"
    NAME_CONFLICT = "name conflict"
    BAD_MOUNT = "bad mount"
    NOT_FOUND = "container not found"
    NOT_RUNNING = "container not running"
    TIMEOUT = "timeout"
    UNAVAILABLE = "podman unavailable"
    INVALID = "invalid spec"
    OTHER = "podman error"


class ContainerRuntimeError(RuntimeError):
    """Anything that went wrong in Podman or in preparing a container for it."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _classify(status: int | None, message: str, default: ErrorKind) -> ErrorKind:
    low = message.lower()
    if status is None:
        return ErrorKind.UNAVAILABLE
    if "image not known" in low or "image not found" in low:
        return ErrorKind.IMAGE_NOT_FOUND
    if "already in use" in low:
        return ErrorKind.NAME_CONFLICT
    if "state improper" in low or "is not running" in low:
        return ErrorKind.NOT_RUNNING
    if status == 404:
        return ErrorKind.NOT_FOUND
    if "mount" in low or "statfs" in low:
        return ErrorKind.BAD_MOUNT
    return default


def podman_error(
    what: str, status: int | None, message: str, default: ErrorKind
) -> ContainerRuntimeError:
    kind = _classify(status, message, default)
    if kind is ErrorKind.UNAVAILABLE:
        message = message or "no answer from the Podman service"
    return ContainerRuntimeError(kind, f"{what}: {message}")


def from_api_error(what: str, exc: APIError, default: ErrorKind) -> ContainerRuntimeError:
    message = exc.explanation or str(exc)
    if exc.status_code is None and exc.__cause__ is not None:
        message = f"{message}: {exc.__cause__}"
    return podman_error(what, exc.status_code, message, default)


class PodmanServiceError(RuntimeError):
    """A Podman service could not be started, or a workload user not be set up."""
