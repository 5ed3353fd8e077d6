"""Numbers read from the agent's environment (KAT_* knobs): clamped to their range, and
the default kept, with a warning, when the text is not a number."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

log = logging.getLogger(__name__)

N = TypeVar("N", int, float)


def number_from_env(
    name: str,
    default: N,
    low: N,
    high: N,
    parse: Callable[[str], N],
    environ: Mapping[str, str] | None = None,
) -> N:
    """$`name` parsed with `parse` and clamped to [low, high]; `default` when unset or
    empty, or (with a warning) when it does not parse."""
    env = os.environ if environ is None else environ
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return max(low, min(parse(text), high))
    except ValueError:
        log.warning("%s=%r is not a number; keeping %s", name, text, default)
        return default
