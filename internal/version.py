"""KAT's version, one place: the installed package's, else the source tree's."""

from __future__ import annotations

import importlib.metadata

try:
    VERSION = importlib.metadata.version("kat")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    VERSION = "0.1.0+source"
