"""Human units in config files: durations ("500ms", "1s", "2h") and sizes ("64MiB", "2GiB")."""

from __future__ import annotations

import math
import re
import reprlib
from typing import Annotated

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_SIZE_SCALE = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, None: 1,
}


def _shown(value: object) -> str:
    """The value as an error message may quote it: bounded (a YAML alias can make it huge)."""
    return reprlib.repr(value)


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as '250ms', '1s', '5m', '2h'. A number
    too large for a float (an integer of 400 digits raised OverflowError, found by bench/fuzz.py)
    or not finite is refused like any other bad duration."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '500ms', '1s' or '5m'")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_SCALE[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as '500ms', '1s' or '5m', got {_shown(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"{_shown(value)} is not a duration a gateway can wait")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as '64MiB', '2GiB', '500MB'."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '64MiB' or '2GiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = match.group(2).lower() if match.group(2) else None
        number = float(match.group(1)) * _SIZE_SCALE[unit]
        if not math.isfinite(number):   # int(inf) raises OverflowError
            raise ValueError(f"{_shown(value)} is not a size a gateway can have")
        size = int(number)
    else:
        raise ValueError(f"expected a size such as '64MiB' or '2GiB', got {_shown(value)}")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
