"""Register codec: Modbus registers <-> values, for every type and word/byte order.

Pure functions, no I/O. Two ways in:

- :func:`decode` / :func:`encode` for one value (profiles, writes, the simulator, tests);
- :func:`compile_block` for the poll hot path: one merged request's points are turned, once, into
  a generated function that packs the block into bytes and unpacks every point with a single
  precompiled ``struct`` call per byte-order group, so a poll never re-parses type names.

Orders (Telegraf's names in brackets for 64-bit values). Letters are the value's bytes, most
significant first; the order names how they sit in the registers as they come off the wire:

    ABCD (ABCDEFGH)  big-endian                        23.5 float32 -> [0x41BC, 0x0000]
    CDAB (GHEFCDAB)  word-swapped                       -> [0x0000, 0x41BC]
    BADC (BADCFEHG)  bytes swapped inside each word     -> [0xBC41, 0x0000]
    DCBA (HGFEDCBA)  little-endian                      -> [0x0000, 0xBC41]

For 16-bit types CDAB reads like ABCD and DCBA like BADC (there is only one word to swap).
Strings: 2 ASCII characters per register, ABCD (first character in the high byte) or BADC
(first character in the low byte); word-swapped strings do not occur in practice and are rejected.

Every order reduces to two choices, which is what makes the fast path possible:
the registers are packed into bytes big-endian (``>H``) or little-endian (``<H``), and the value
is then read big-endian (``>``) or little-endian (``<``) from those bytes:

    ABCD: registers >H, value >      CDAB: registers <H, value <
    BADC: registers <H, value >      DCBA: registers >H, value <
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from agent.core.model import Value

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
# Telegraf's 64-bit spellings are accepted as aliases of the four names above.
ORDER_ALIASES = {"ABCDEFGH": "ABCD", "GHEFCDAB": "CDAB", "BADCFEHG": "BADC", "HGFEDCBA": "DCBA"}

# type -> (struct code, registers); string's count is its `length`
_NUMERIC: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1),
    "int32": ("i", 2), "uint32": ("I", 2), "float32": ("f", 2),
    "int64": ("q", 4), "uint64": ("Q", 4), "float64": ("d", 4),
}
TYPES = ("bool", *_NUMERIC, "string")
INTEGER_TYPES = frozenset(t for t, (code, _) in _NUMERIC.items() if code not in "fd")
FLOAT_TYPES = frozenset(("float32", "float64"))
NUMERIC_TYPES = frozenset(_NUMERIC)

# order -> (register packing, value endianness); see the module docstring
_LAYOUT = {"ABCD": (">", ">"), "CDAB": ("<", "<"), "BADC": ("<", ">"), "DCBA": (">", "<")}

MAX_STRING_REGISTERS = 125   # one read request


class CodecError(ValueError):
    """A value cannot be encoded (out of range, wrong type) or a type/order is unknown."""


def normalize_order(order: str) -> str:
    """ABCD/CDAB/BADC/DCBA from any accepted spelling (case-insensitive, 64-bit aliases)."""
    name = order.upper()
    name = ORDER_ALIASES.get(name, name)
    if name not in _LAYOUT:
        raise CodecError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}"
                         f" (or {', '.join(ORDER_ALIASES)} for 64-bit values)")
    return name


def register_count(type: str, length: int | None = None) -> int:
    """How many registers a value of ``type`` occupies (a coil or discrete input counts as 1)."""
    if type == "bool":
        return 1
    if type == "string":
        if not length or length < 1:
            raise CodecError("a string needs 'length' (registers, 2 characters each)")
        return length
    try:
        return _NUMERIC[type][1]
    except KeyError:
        raise CodecError(f"unknown type {type!r}; expected one of {', '.join(TYPES)}") from None


def _check_string_order(order: str) -> None:
    if order not in ("ABCD", "BADC"):
        raise CodecError(f"order {order} is not supported for strings; use ABCD or BADC")


def _string_from_bytes(raw: bytes) -> str:
    # Devices pad with NULs or spaces; bytes after the first NUL are stale buffer content.
    return raw.split(b"\x00", 1)[0].rstrip(b" ").decode("ascii", "replace")


_F32 = struct.Struct(">f")


def float32_value(value: float) -> float:
    """A float32 as the decimal the device meant: the shortest one that is the same float32.

    Widened to a Python float, a device's 12.3 reads 12.300000190734863; the extra digits are
    noise of the binary format, not information, and would travel to the centre as such. The
    value itself is kept exactly: packed back to float32 it gives the same bits.
    """
    if value != value or value in (math.inf, -math.inf):
        return value
    bits = _F32.pack(value)
    seven = float(f"{value:.7g}")   # %g drops trailing zeros: 12.300000190734863 -> 12.3
    if _F32.pack(seven) == bits:
        return seven
    eight = float(f"{value:.8g}")
    return eight if _F32.pack(eight) == bits else float(f"{value:.9g}")   # 9 digits always round-trip


def decimal_ratio(scale: float, offset: float) -> tuple[int, int, int] | None:
    """(A, B, D) with scale == A/D and offset == B/D exactly, D a power of ten; None if there is none.

    A register holds an integer and a decimal scale means a decimal value: 553 with scale 0.1 is
    55.3. ``553 * 0.1`` is 55.300000000000004 in binary floating point, which then travels to the
    centre as such; ``(553 * 1 + 0) / 10`` is one correctly rounded division and gives 55.3.
    """
    for digits in range(10):
        denominator = 10 ** digits
        a, b = round(scale * denominator), round(offset * denominator)
        if a / denominator == scale and b / denominator == offset:
            return a, b, denominator
    return None


def _scaled(raw: Any, scale: float, offset: float, integer: bool) -> Any:
    if scale == 1.0 and offset == 0.0:
        return raw   # an integer stays an integer
    if integer and (ratio := decimal_ratio(scale, offset)):
        a, b, denominator = ratio
        return (raw * a + b) / denominator
    return raw * scale + offset


def decode(registers: Sequence[int], type: str, order: str = "ABCD",
           scale: float = 1.0, offset: float = 0.0) -> Value:
    """One value from its registers (or a coil/discrete input's bit for ``bool``)."""
    if type == "bool":
        return bool(registers[0])
    order = normalize_order(order)
    words, endian = _LAYOUT[order]
    count = len(registers)
    if type == "string":
        _check_string_order(order)
        return _string_from_bytes(struct.pack(f"{words}{count}H", *registers))
    code, needed = _NUMERIC.get(type, ("", 0))
    if not code:
        raise CodecError(f"unknown type {type!r}; expected one of {', '.join(TYPES)}")
    if count != needed:
        raise CodecError(f"{type} needs {needed} register(s), got {count}")
    raw = struct.unpack(endian + code, struct.pack(f"{words}{needed}H", *registers))[0]
    if type == "float32":
        raw = float32_value(raw)
    return _scaled(raw, scale, offset, type in INTEGER_TYPES)


def encode(value: Any, type: str, order: str = "ABCD", scale: float = 1.0, offset: float = 0.0,
           length: int | None = None) -> list[int]:
    """The registers that :func:`decode` turns back into ``value`` (inverse of decode).

    Integers are rounded to the nearest raw step after removing scale/offset; a value that does not
    fit the type raises :class:`CodecError`.
    """
    if type == "bool":
        if not isinstance(value, (bool, int)):
            raise CodecError(f"expected a boolean, got {value!r}")
        return [1 if value else 0]
    order = normalize_order(order)
    words, endian = _LAYOUT[order]
    if type == "string":
        _check_string_order(order)
        count = register_count("string", length)
        if not isinstance(value, str):
            raise CodecError(f"expected a string, got {value!r}")
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise CodecError(f"{value!r} is not ASCII") from None
        if len(raw) > 2 * count:
            raise CodecError(f"{value!r} is longer than {2 * count} characters")
        return list(struct.unpack(f"{words}{count}H", raw.ljust(2 * count, b"\x00")))
    code, count = _NUMERIC.get(type, ("", 0))
    if not code:
        raise CodecError(f"unknown type {type!r}; expected one of {', '.join(TYPES)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"expected a number, got {value!r}")
    raw: int | float
    if scale == 1.0 and offset == 0.0:
        raw = value
    else:
        raw = (value - offset) / scale
    if type in INTEGER_TYPES:
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise CodecError(f"{value!r} cannot be written as {type}")
            raw = round(raw)
    try:
        data = struct.pack(endian + code, raw)
    except (struct.error, OverflowError):
        raise CodecError(f"{value!r} does not fit {type}"
                         + ("" if scale == 1.0 and offset == 0.0 else f" with scale {scale:g}, offset {offset:g}")) from None
    return list(struct.unpack(f"{words}{count}H", data))


# -- compiled fast path -------------------------------------------------------------------------

class PointLike(Protocol):
    """What :func:`compile_block` needs of a point (``drivers.modbus.profile.Point`` has it)."""

    address: int
    type: str
    order: str
    scale: float
    offset: float
    length: int | None
    bit: int | None


def _const(value: float) -> str:
    if not math.isfinite(value):
        raise CodecError(f"scale/offset must be finite, got {value!r}")
    return repr(float(value))   # repr of a float round-trips exactly


def _scaled_expr(var: str, scale: float, offset: float, integer: bool) -> str:
    if scale == 1.0 and offset == 0.0:
        return var
    if integer and (ratio := decimal_ratio(scale, offset)):   # exact decimal: see decimal_ratio
        a, b, denominator = ratio
        term = var if a == 1 else f"{var} * {a}"
        return f"({term}{f' + {b}' if b > 0 else f' - {-b}' if b < 0 else ''}) / {denominator}"
    if offset == 0.0:
        return f"{var} * {_const(scale)}"
    if scale == 1.0:
        return f"{var} + {_const(offset)}"
    return f"{var} * {_const(scale)} + {_const(offset)}"


def compile_block(points: Sequence[PointLike], start: int,
                  bits: bool = False) -> Callable[[Sequence[Any]], list[Value]]:
    """A decoder for one read request starting at ``start``: registers (or bits) -> values.

    The result lists one value per point, in the order of ``points``. ``bits=True`` is for coil and
    discrete-input requests, whose response is a list of booleans.

    The decoder is generated source (like ``dataclasses`` and ``namedtuple`` do) because a poll
    decodes thousands of values a second: one ``pack`` of the whole block per register order and
    one ``unpack_from`` per (order, endianness) group, then one list display. Only indices and
    float constants enter the source, never names from a profile. ``decoder.source`` shows it.

    A response of the wrong length raises ``struct.error`` (or ``IndexError`` for bits): the caller
    treats that as garbage from the device.
    """
    lines: list[str] = []
    namespace: dict[str, Any] = {"_text": _string_from_bytes, "_bool": bool, "_f32": float32_value}
    exprs: list[str] = []

    if bits:
        exprs = [f"_bool(r[{p.address - start}])" for p in points]
        return _build(lines, exprs, namespace, "r")

    end = start
    for p in points:
        end = max(end, p.address + register_count("bool" if p.bit is not None else p.type, p.length))
    count = end - start

    # group the non-bit points by (register packing, value endianness)
    groups: dict[tuple[str, str], list[tuple[int, PointLike]]] = {}
    for index, p in enumerate(points):
        if p.bit is not None or p.type == "bool":
            continue
        order = normalize_order(p.order)
        if p.type == "string":
            _check_string_order(order)
        groups.setdefault(_LAYOUT[order], []).append((index, p))

    exprs = [""] * len(points)
    packed: dict[str, str] = {}
    for (words, endian), members in groups.items():
        if words not in packed:
            name = "be" if words == ">" else "le"
            namespace[f"_pack_{name}"] = struct.Struct(f"{words}{count}H").pack
            lines.append(f"{name} = _pack_{name}(*r)")
            packed[words] = name
        members.sort(key=lambda item: item[1].address)
        fmt, cursor, targets = endian, members[0][1].address, []
        first = cursor
        for index, p in members:
            if p.address > cursor:
                fmt += f"{2 * (p.address - cursor)}x"
            if p.type == "string":
                fmt += f"{2 * p.length}s"
            else:
                fmt += _NUMERIC[p.type][0]
            cursor = p.address + register_count(p.type, p.length)
            var = f"v{index}"
            targets.append(var)
            if p.type == "string":
                exprs[index] = f"_text({var})"
            else:
                raw = f"_f32({var})" if p.type == "float32" else var
                exprs[index] = _scaled_expr(raw, p.scale, p.offset, p.type in INTEGER_TYPES)
        unpack = f"_unpack{len(namespace)}"
        namespace[unpack] = struct.Struct(fmt).unpack_from
        lines.append(f"{', '.join(targets)}, = {unpack}({packed[words]}, {2 * (first - start)})")

    # bits of a register: bit 0 is the least significant bit of the register as read
    for index, p in enumerate(points):
        if p.bit is not None:
            exprs[index] = f"(r[{p.address - start}] & {1 << p.bit}) != 0"
        elif p.type == "bool":   # a whole register as a flag (non-zero = true)
            exprs[index] = f"r[{p.address - start}] != 0"
    if any(p.bit is not None or p.type == "bool" for p in points) and not packed:
        # no struct call validates the length: check it, so a short response is not half-decoded
        namespace["_count"] = count
        lines.insert(0, "if len(r) != _count: raise _struct_error('expected %d registers' % _count)")
        namespace["_struct_error"] = struct.error
    return _build(lines, exprs, namespace, "r")


def _build(lines: list[str], exprs: list[str], namespace: dict[str, Any],
           arg: str) -> Callable[[Sequence[Any]], list[Value]]:
    body = "".join(f"    {line}\n" for line in lines)
    source = f"def decode_block({arg}):\n{body}    return [{', '.join(exprs)}]\n"
    exec(compile(source, "<modbus block decoder>", "exec"), namespace)   # noqa: S102 - see docstring
    decoder = namespace["decode_block"]
    decoder.source = source
    return decoder
