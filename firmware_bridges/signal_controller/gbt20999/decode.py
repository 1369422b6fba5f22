"""`edge-agent decode gbt20999 HEX`: one captured frame, escaped (TCP, RS-232) or not (UDP), as JSON
for a technician. A bad CRC, a length that disagrees or a cut frame raises FrameError (a
ValueError) saying what is wrong and at which byte."""

from __future__ import annotations

from typing import Any

from agent.core.hexbytes import parse_hex
from firmware_bridges.signal_controller.gbt20999 import codec, objects


def decode(text: str) -> dict[str, Any]:
    frame, escaped = codec.parse_any(parse_hex(text))
    return frame_dict(frame, escaped=escaped)


def frame_dict(frame: codec.Frame, *, escaped: bool = False) -> dict[str, Any]:
    return {
        "frame_type": frame.frame_type,
        "frame_type_name": frame.type_name,
        "escaped": escaped,
        "version": f"{frame.version:#06x}",
        "centre": frame.centre,
        "controller": frame.controller,
        "road": frame.road,
        "seq": frame.seq,
        "crc": f"{frame.crc:#06x}" if frame.crc is not None else None,
        "values": [value_dict(frame, v) for v in frame.values],
    }


def value_dict(frame: codec.Frame, value: codec.DataValue) -> dict[str, Any]:
    out: dict[str, Any] = {"index": value.index, "class": value.cls, "object": value.obj,
                           "attribute": value.attribute, "element": value.element, "raw": value.value.hex()}
    name, decoded = objects.describe(value.cls, value.obj, value.attribute, value.value)
    if name is not None:
        out["name"] = name
    if frame.is_error:
        code = value.value[0] if value.value else None
        out["value"] = None
        out["error"] = code
        out["error_name"] = codec.ERRORS.get(code, "unknown error") if code is not None else "no error byte"
    elif frame.frame_type == codec.FrameType.SET_REPLY:
        out["value"] = None
        out["status"] = value.value[0] if len(value.value) == 1 else None
        out["done"] = value.value == b"\x00"
    elif frame.frame_type == codec.FrameType.QUERY:
        out["value"] = None    # a query names objects and carries no values
    else:
        out["value"] = decoded
    return out
