"""CPU and memory quantities, Kubernetes style.

CPU:    "500m" (millicores), "2", "0.5", "1.5" (cores, at most three decimals) -> millicores.
Memory: plain bytes "1048576", decimal suffixes k M G T P E (powers of 1000) and binary
        suffixes Ki Mi Gi Ti Pi Ei (powers of 1024); a fractional number is allowed when the
        result is a whole number of bytes ("1.5Gi"). Exponent forms ("1e3") are refused:
        they are rare in practice and easy to misread.
"""

from __future__ import annotations

import re
from decimal import Decimal

MAX_INT64 = 2**63 - 1

_CPU_MILLI = re.compile(r"^([0-9]+)m$")
_NUMBER = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([A-Za-z]*)$")

MEMORY_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}

_SUFFIX_HINTS = {
    "K": "use k (1000) or Ki (1024)",
    "m": "m would mean millibytes; use M (10^6) or Mi (2^20)",
    "b": "write plain bytes without a suffix",
    "B": "write plain bytes without a suffix",
}


def parse_cpu(text: str) -> int:
    """Return the CPU quantity in millicores."""
    s = text.strip()
    if not s:
        raise ValueError("empty cpu quantity")
    if s.startswith("-"):
        raise ValueError(f'invalid cpu quantity "{text}": must not be negative')
    m = _CPU_MILLI.match(s)
    if m:
        return _bounded(int(m.group(1)), text)
    if not _NUMBER.match(s):
        raise ValueError(
            f'invalid cpu quantity "{text}": expected cores ("2", "0.5") or millicores ("500m")'
        )
    millis = Decimal(s) * 1000
    if millis != millis.to_integral_value():
        raise ValueError(f'invalid cpu quantity "{text}": finer than 1m (0.001 cores)')
    return _bounded(int(millis), text)


def parse_memory(text: str) -> int:
    """Return the memory quantity in bytes."""
    s = text.strip()
    if not s:
        raise ValueError("empty memory quantity")
    if s.startswith("-"):
        raise ValueError(f'invalid memory quantity "{text}": must not be negative')
    m = _MEMORY.match(s)
    if not m:
        raise ValueError(
            f'invalid memory quantity "{text}": expected a number with an optional suffix '
            "(Ki, Mi, Gi, Ti or k, M, G, T), e.g. 64Mi"
        )
    number, suffix = m.groups()
    if suffix not in MEMORY_SUFFIXES:
        hint = _SUFFIX_HINTS.get(suffix) or _SUFFIX_HINTS.get(suffix[:1]) or ""
        allowed = "Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E"
        extra = f" ({hint})" if hint else ""
        raise ValueError(
            f'invalid memory quantity "{text}": unknown suffix "{suffix}"{extra}; '
            f"allowed: {allowed}"
        )
    value = Decimal(number) * MEMORY_SUFFIXES[suffix]
    if value != value.to_integral_value():
        raise ValueError(f'invalid memory quantity "{text}": not a whole number of bytes')
    return _bounded(int(value), text)


def _bounded(value: int, text: str) -> int:
    if value > MAX_INT64:
        raise ValueError(f'quantity "{text}" is too large')
    return value


def format_cpu(millis: int) -> str:
    """Inverse of parse_cpu: whole cores as "2", anything else as "1500m"."""
    if millis < 0:
        raise ValueError("cpu quantity cannot be negative")
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def format_memory(n_bytes: int) -> str:
    """Inverse of parse_memory, using the largest binary suffix that divides exactly."""
    if n_bytes < 0:
        raise ValueError("memory quantity cannot be negative")
    if n_bytes == 0:
        return "0"
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = MEMORY_SUFFIXES[suffix]
        if n_bytes % unit == 0:
            return f"{n_bytes // unit}{suffix}"
    return str(n_bytes)
