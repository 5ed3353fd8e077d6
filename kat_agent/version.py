"""The kat-agent's version: the installed `kat` package's, as in pyproject.toml."""

from __future__ import annotations

from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("kat")
    except metadata.PackageNotFoundError:
        return "unknown"


AGENT_VERSION = _version()
