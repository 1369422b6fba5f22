"""Application data units (clauses 7 and 8): decode and encode the information objects.

An application data unit is a type flag (1 byte), an object count (1 byte) and the objects; most
objects end with a 6-byte time label (clause 7). Object layouts (clause 8.3.1, sizes without
the time label):

    type  what                                      body                                     +time  max n
    1     fire-facility system status (8.2.1.1)     sys type, sys addr, status u16            yes   102
    2     component status (8.2.1.2)                sys type, sys addr, comp type, comp addr
                                                    u32, status u16, description 31 (GB18030) yes    22
    3     component analog value (8.2.1.3)          sys type, sys addr, comp type, comp addr
                                                    u32, analog type, value i16               yes    63
    4     system operation (8.2.1.4)                sys type, sys addr, flags, operator       yes   102
    5     system software version (8.2.1.5)         sys type, sys addr, major, minor          no      1
    6     system config (8.2.1.6)                   sys type, sys addr, L, L bytes text       no      3
    7     component config (8.2.1.7)                sys type, sys addr, comp type, addr, 31   no     26
    8     system time                               sys type, sys addr, time                  (6)     1
    21    device status (8.2.1.8)                   flags (1 byte)                            yes     1
    24    device operation (8.2.1.9)                flags, operator                           yes   127
    25    device software version (8.2.1.10)        major, minor                              no      1
    26    device config (8.2.1.11)                  L, L bytes text                           no      1
    28    device time                               time                                      (6)     1

Downlink types (61..91) are decoded as raw objects; the agent does not act on them.

:func:`parse` is lenient by default: a unit whose count and length disagree still yields every
object that fits, with the disagreement in ``problems`` (a truncated frame must not hide the fire
in its first object). ``strict=True`` raises :class:`AppDataError` with the offset instead.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from firmware_bridges.gb26875 import codes
from firmware_bridges.gb26875.frame import time_label_text

DESCRIPTION_LEN = 31


class AppDataError(ValueError):
    """Application data that does not match its type's layout; ``offset`` counts from the type flag."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def decode_text(raw: bytes) -> str:
    """GB 18030 text from a fixed-size field: cut at the first NUL (GB 18030 never uses 0x00 inside
    a character), trim spaces, and drop a character the field's end cut in half."""
    raw = raw.split(b"\x00", 1)[0]
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError as exc:
        if exc.start >= len(raw) - 3:   # a 2- or 4-byte character truncated by the field's end
            text = raw[:exc.start].decode("gb18030", errors="replace")
        else:
            text = raw.decode("gb18030", errors="replace")
    return text.strip(" \t\r\n\u3000")


def encode_text(text: str, size: int = DESCRIPTION_LEN) -> bytes:
    """GB 18030 text NUL-padded to ``size`` bytes; cut at a character boundary when too long."""
    out = b""
    for char in text:
        encoded = char.encode("gb18030")
        if len(out) + len(encoded) > size:
            break
        out += encoded
    return out.ljust(size, b"\x00")


# -- information objects -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SystemStatus:
    system_type: int
    system_address: int
    status: int
    time: bytes


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    system_type: int
    system_address: int
    component_type: int
    component_address: int
    status: int
    description: str
    time: bytes


@dataclass(frozen=True, slots=True)
class AnalogValue:
    system_type: int
    system_address: int
    component_type: int
    component_address: int
    analog_type: int
    raw: int            # signed count of the type's resolution
    time: bytes


@dataclass(frozen=True, slots=True)
class Operation:
    """A system operation (type 4: system_type/address set) or a device operation (type 24: None)."""

    flags: int
    operator: int
    time: bytes
    system_type: int | None = None
    system_address: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    flags: int
    time: bytes


@dataclass(frozen=True, slots=True)
class SoftwareVersion:
    major: int
    minor: int
    system_type: int | None = None
    system_address: int | None = None


@dataclass(frozen=True, slots=True)
class ConfigText:
    text: str
    system_type: int | None = None
    system_address: int | None = None


@dataclass(frozen=True, slots=True)
class ComponentConfig:
    system_type: int
    system_address: int
    component_type: int
    component_address: int
    description: str


@dataclass(frozen=True, slots=True)
class ClockTime:
    """Type 8 (a system's clock: system set) or 28 (the device's clock)."""

    time: bytes
    system_type: int | None = None
    system_address: int | None = None


@dataclass(frozen=True, slots=True)
class Raw:
    data: bytes


InfoObject = (SystemStatus | ComponentStatus | AnalogValue | Operation | DeviceStatus | SoftwareVersion
              | ConfigText | ComponentConfig | ClockTime | Raw)


@dataclass(slots=True)
class AppData:
    type: int
    count: int
    objects: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def type_name(self) -> str:
        return codes.app_type_name(self.type)


# -- fixed-size layouts ---------------------------------------------------------------------------

_U16 = struct.Struct("<H")
_COMPONENT = struct.Struct("<BBBIH31s6s")
_ANALOG = struct.Struct("<BBBIBh6s")


def _system_status(b: bytes) -> SystemStatus:
    return SystemStatus(b[0], b[1], _U16.unpack_from(b, 2)[0], bytes(b[4:10]))


def _component_status(b: bytes) -> ComponentStatus:
    st, sa, ct, ca, status, desc, t = _COMPONENT.unpack(b)
    return ComponentStatus(st, sa, ct, ca, status, decode_text(desc), bytes(t))


def _analog(b: bytes) -> AnalogValue:
    return AnalogValue(*_ANALOG.unpack(b)[:6], time=bytes(b[10:16]))


def _component_config(b: bytes) -> ComponentConfig:
    st, sa, ct, ca = struct.unpack_from("<BBBI", b)
    return ComponentConfig(st, sa, ct, ca, decode_text(b[7:38]))


# type -> (object size, decoder, maximum count from clause 8.3)
_FIXED: dict[int, tuple[int, Callable[[bytes], Any], int]] = {
    1: (10, _system_status, 102),
    2: (46, _component_status, 22),
    3: (16, _analog, 63),
    4: (10, lambda b: Operation(b[2], b[3], bytes(b[4:10]), b[0], b[1]), 102),
    5: (4, lambda b: SoftwareVersion(b[2], b[3], b[0], b[1]), 1),
    7: (38, _component_config, 26),
    8: (8, lambda b: ClockTime(bytes(b[2:8]), b[0], b[1]), 1),
    21: (7, lambda b: DeviceStatus(b[0], bytes(b[1:7])), 1),
    24: (8, lambda b: Operation(b[0], b[1], bytes(b[2:8])), 127),
    25: (2, lambda b: SoftwareVersion(b[0], b[1]), 1),
    28: (6, lambda b: ClockTime(bytes(b)), 1),
    # downlink (8.3.2): raw objects
    61: (2, Raw, 102), 62: (6, Raw, 22), 63: (6, Raw, 63), 64: (9, Raw, 1), 65: (2, Raw, 1),
    66: (2, Raw, 3), 67: (6, Raw, 26), 68: (2, Raw, 1), 81: (1, Raw, 1), 84: (7, Raw, 1),
    85: (1, Raw, 1), 86: (1, Raw, 1), 88: (1, Raw, 1), 89: (1, Raw, 1), 91: (1, Raw, 1),
}


def parse(data: bytes, *, strict: bool = False) -> AppData:
    """Decode an application data unit (non-empty). See the module docstring for lenient/strict."""
    if len(data) < 2:
        raise AppDataError(f"application data of {len(data)} byte(s): a unit needs at least the type "
                           "flag and the object count", len(data))
    kind, count = data[0], data[1]
    unit = AppData(kind, count)

    def problem(message: str, offset: int) -> None:
        if strict:
            raise AppDataError(message, offset)
        unit.problems.append(f"byte {offset} of the application data: {message}")

    body = memoryview(data)[2:]
    if count == 0:
        problem("object count is 0", 1)
    if kind in _FIXED or kind == 90:
        if kind == 90:   # clock sync: the standard's text shows 1 reserved byte, devices send a time label
            size = 6 if len(body) == 6 * count else 1
            decoder: Callable[[bytes], Any] = Raw
            limit = 1
        else:
            size, decoder, limit = _FIXED[kind]
        if count > limit:
            problem(f"{count} objects of type {kind}; the standard allows at most {limit}", 1)
        fits = len(body) // size
        for index in range(min(count, fits)):
            unit.objects.append(decoder(bytes(body[index * size:(index + 1) * size])))
        expected = count * size
        if len(body) < expected:
            problem(f"count says {count} objects of {size} bytes ({expected} bytes) but {len(body)} follow; "
                    f"{len(unit.objects)} decoded", 2 + len(unit.objects) * size)
        elif len(body) > expected:
            problem(f"{len(body) - expected} bytes after {count} objects of {size} bytes", 2 + expected)
    elif kind in (6, 26):
        _parse_texts(unit, body, problem)
    else:   # reserved or user-defined: kept as raw bytes, not an error
        unit.objects.append(Raw(bytes(body)))
    return unit


def _parse_texts(unit: AppData, body: memoryview, problem: Callable[[str, int], None]) -> None:
    """Types 6 (system config: sys type, sys addr, L, text) and 26 (device config: L, text)."""
    with_system = unit.type == 6
    at = 0
    for _ in range(unit.count):
        head = 3 if with_system else 1
        if len(body) - at < head:
            problem(f"object header cut short after {len(body) - at} bytes", 2 + at)
            return
        length = body[at + head - 1]
        if len(body) - at - head < length:
            problem(f"text length {length} but {len(body) - at - head} bytes follow", 2 + at + head - 1)
            return
        text = decode_text(bytes(body[at + head:at + head + length]))
        unit.objects.append(ConfigText(text, body[at], body[at + 1]) if with_system else ConfigText(text))
        at += head + length
    if at < len(body):
        problem(f"{len(body) - at} bytes after {unit.count} objects", 2 + at)


# -- JSON-ready views ---------------------------------------------------------------------------

def component_id(address: int) -> str:
    """The component's id in point names: 'c' + the 32-bit address as 8 hex digits."""
    return f"c{address:08x}"


def object_dict(obj: Any, utc_offset_h: float = 8.0) -> dict[str, Any]:
    """One information object as plain data, with names for codes and bits."""
    out: dict[str, Any] = {}
    if getattr(obj, "system_type", None) is not None:
        out["system_type"] = obj.system_type
        out["system_type_name"] = codes.type_name(codes.SYSTEM_TYPES, obj.system_type)
        out["system_address"] = obj.system_address
    if isinstance(obj, (ComponentStatus, AnalogValue, ComponentConfig)):
        out["component_type"] = obj.component_type
        out["component_type_name"] = codes.type_name(codes.COMPONENT_TYPES, obj.component_type)
        out["component_address"] = obj.component_address
        out["component"] = component_id(obj.component_address)
    if isinstance(obj, SystemStatus):
        out["status"] = obj.status
        out["status_bits"] = codes.status_names(obj.status, codes.SYSTEM_STATUS_BITS)
    elif isinstance(obj, ComponentStatus):
        out["status"] = obj.status
        out["status_bits"] = codes.status_names(obj.status, codes.COMPONENT_STATUS_BITS)
        out["description"] = obj.description
    elif isinstance(obj, AnalogValue):
        name, unit, value = codes.analog(obj.analog_type, obj.raw)
        out.update(analog_type=obj.analog_type, quantity=name, raw=obj.raw, value=value, unit=unit)
    elif isinstance(obj, Operation):
        table = codes.DEVICE_OPERATION_BITS if obj.system_type is None else codes.SYSTEM_OPERATION_BITS
        out.update(flags=obj.flags, operations=codes.operation_names(obj.flags, table), operator=obj.operator)
    elif isinstance(obj, DeviceStatus):
        out.update(status=obj.flags, status_bits=codes.status_names(obj.flags, codes.DEVICE_STATUS_BITS))
    elif isinstance(obj, SoftwareVersion):
        out["version"] = f"{obj.major}.{obj.minor}"
    elif isinstance(obj, ConfigText):
        out["text"] = obj.text
    elif isinstance(obj, ComponentConfig):
        out["description"] = obj.description
    elif isinstance(obj, Raw):
        out["raw"] = obj.data.hex(" ")
    time = getattr(obj, "time", None)
    if time is not None:
        out["time"] = time_label_text(time, utc_offset_h)
        out["time_raw"] = time.hex(" ")
    return out


def unit_dict(unit: AppData, utc_offset_h: float = 8.0) -> dict[str, Any]:
    out: dict[str, Any] = {"type": unit.type, "type_name": unit.type_name, "count": unit.count,
                           "objects": [object_dict(o, utc_offset_h) for o in unit.objects]}
    if unit.problems:
        out["problems"] = unit.problems
    return out


# -- encoding (simulators, tests, and the agent's own downlink) -----------------------------------

def encode_unit(kind: int, objects: list[bytes]) -> bytes:
    return bytes((kind, len(objects))) + b"".join(objects)


def encode_system_status(system_type: int, system_address: int, status: int, time: bytes) -> bytes:
    return bytes((system_type, system_address)) + _U16.pack(status) + time


def encode_component_status(system_type: int, system_address: int, component_type: int,
                            component_address: int, status: int, description: str, time: bytes) -> bytes:
    return _COMPONENT.pack(system_type, system_address, component_type, component_address, status,
                           encode_text(description), time)


def encode_analog(system_type: int, system_address: int, component_type: int, component_address: int,
                  analog_type: int, raw: int, time: bytes) -> bytes:
    return _ANALOG.pack(system_type, system_address, component_type, component_address, analog_type, raw, time)


def encode_system_operation(system_type: int, system_address: int, flags: int, operator: int,
                            time: bytes) -> bytes:
    return bytes((system_type, system_address, flags, operator)) + time


def encode_device_status(flags: int, time: bytes) -> bytes:
    return bytes((flags,)) + time


def encode_device_operation(flags: int, operator: int, time: bytes) -> bytes:
    return bytes((flags, operator)) + time
