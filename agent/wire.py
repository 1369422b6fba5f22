"""What may go on the wire: readings and event data a family hands over, made encodable and
within the contract before they reach the outbox.

A parser reads what a peer sends, and a peer can send ``SB1-RS=1e20`` (an integer no JSON encoder
of 64 bits takes), a float register holding NaN, a 10 kB string. Each family checks its own
values, and this is the net under all of them: a value the outbox could not encode, or the
contract does not allow, becomes one bad reading (``v: null, q: bad``) instead of an exception
that would lose the whole batch (and make the device send it again forever). Strings are cut to
the contract's lengths. The check is a type test per reading; nothing is copied unless a
reading needs fixing.
"""

from __future__ import annotations

import math
from typing import Any

from agent.core.model import Reading, now_ms

MAX_STRING = 256                        # telemetry.json: a value's maxLength
MAX_POINT = 128                         # a point name's
MAX_UNIT = 32                           # a unit's
INT_MIN, INT_MAX = -2**63, 2**64 - 1    # what orjson encodes
MIN_MS, MAX_MS = 1_000_000_000_000, 9_999_999_999_999   # common.json epoch_ms
QUALITIES = frozenset(("good", "bad", "stale"))
MAX_DEPTH = 32                          # event data nested deeper is cut (orjson stops at 255)


def _value_ok(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return value - value == 0.0          # false for nan and inf
    if kind is int:
        return INT_MIN <= value <= INT_MAX
    if kind is str:
        return len(value) <= MAX_STRING
    return kind is bool or value is None


def _reading_ok(r: Reading) -> bool:
    t = r.t
    return (_value_ok(r.value) and type(t) is int and MIN_MS <= t <= MAX_MS and r.q in QUALITIES
            and type(r.point) is str and 0 < len(r.point) <= MAX_POINT
            and (r.unit is None or (type(r.unit) is str and len(r.unit) <= MAX_UNIT)))


def safe_value(value: Any) -> tuple[Any, bool]:
    """(a value the contract takes, whether it is still good). Subclasses (numpy scalars, IntEnum)
    become their plain type; numbers out of range and other types become None."""
    if isinstance(value, bool):
        return bool(value), True
    if isinstance(value, int):
        value = int(value)
        return (value, True) if INT_MIN <= value <= INT_MAX else (None, False)
    if isinstance(value, float):
        value = float(value)
        return (value, True) if math.isfinite(value) else (None, False)
    if isinstance(value, str):
        return str(value)[:MAX_STRING], True
    return None, value is None


def _fixed(r: Reading) -> Reading:
    value, good = safe_value(r.value)
    q = r.q if r.q in QUALITIES else "bad"
    if not good or (value is None and q == "good"):
        q = "bad"
    t = r.t if type(r.t) is int and MIN_MS <= r.t <= MAX_MS else now_ms()
    point = str(r.point)[:MAX_POINT] or "?"
    unit = str(r.unit)[:MAX_UNIT] if r.unit else None
    return Reading(point, value, unit, t, q)


def safe_readings(readings: list[Reading]) -> tuple[list[Reading], int]:
    """The readings, with each one the outbox or the contract would refuse fixed; and how many were."""
    for i, r in enumerate(readings):
        if not _reading_ok(r):
            break
    else:
        return readings, 0
    out = readings[:i]
    fixed = 0
    for r in readings[i:]:
        if _reading_ok(r):
            out.append(r)
        else:
            out.append(_fixed(r))
            fixed += 1
    return out, fixed


def safe_data(data: Any, depth: int = 0) -> Any:
    """Event data that orjson encodes: keys as strings, values per :func:`safe_value` (a number
    out of range becomes null, bytes become hex), cut at MAX_DEPTH levels. Called only after
    the data failed to encode: the usual event never pays for it."""
    if depth >= MAX_DEPTH:
        return "(nested too deep)"
    if isinstance(data, dict):
        return {str(k)[:MAX_POINT]: safe_data(v, depth + 1) for k, v in data.items()}
    if isinstance(data, (list, tuple, set, frozenset)):
        return [safe_data(v, depth + 1) for v in data]
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)[:MAX_STRING // 2].hex()
    if data is None or isinstance(data, (bool, int, float, str)):
        return safe_value(data)[0]
    return f"({type(data).__name__})"   # an object JSON has no form for: named, not lost silently
