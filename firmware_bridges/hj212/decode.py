"""`edge-agent decode hj212 FRAME`: one frame as a technician pastes it, explained as JSON.

Accepts the frame as text (with or without its CR LF; a literal ``\\r\\n`` typed into a shell
counts as CR LF) or as hex bytes (``2323303130...``). Raises ValueError naming what is wrong and
the character where it is: bad CRC (expected vs found), wrong length, junk instead of CR LF,
malformed header values.
"""

from __future__ import annotations

import re
import time
from typing import Any

from firmware_bridges.hj212 import codes
from firmware_bridges.hj212.frame import FrameError, check_header, decode_frame, parse_cp
from firmware_bridges.hj212.crc import crc16
from firmware_bridges.hj212.mapping import LocalClock, PointMapper, map_upload

_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2}[\s:]*)+$")


def _to_bytes(text: str) -> bytes:
    text = text.strip(" \t")
    if _HEX.match(text) and text[:4] == "2323":
        return bytes.fromhex(re.sub(r"[\s:]", "", text))
    text = text.replace("\\r\\n", "\r\n")
    if text.endswith("\n") and not text.endswith("\r\n"):
        text = text.rstrip("\n")          # a shell's trailing newline, not part of the frame
    return text.encode("utf-8")


def decode(text: str, timezone: str = "Asia/Shanghai") -> dict[str, Any]:
    data = _to_bytes(text)
    try:
        frame = decode_frame(data, require_crlf=False)
    except FrameError as exc:
        raise ValueError(str(exc)) from None
    problem = check_header(frame)
    if problem is not None:
        raise ValueError(f"{problem} (a receiver refuses it with QnRtn={problem.qnrtn})")
    segment = frame.segment.encode("utf-8")
    flag = frame.flag
    st, cn = frame.st or "", frame.cn or ""
    result: dict[str, Any] = {
        "length": int(data[2:6]),
        "segment_bytes": len(segment),
        "crc": {"received": frame.crc, "computed": f"{crc16(segment):04X}", "ok": True},
        "crlf": data.endswith(b"\r\n"),
        "header": frame.header,
        "st": {"code": st, "system": codes.SYSTEMS.get(st, "unknown")},
        "cn": {"code": cn, "command": codes.COMMANDS.get(cn, "unknown")},
        "flag": None if flag is None else {
            "value": flag, "version": {0: "HJ/T 212-2005", 1: "HJ 212-2017"}.get(flag >> 2, f"version bits {flag >> 2}"),
            "answer_required": bool(flag & 1), "split": bool(flag & 2)},
        "cp": {"raw": frame.cp, "items": [dict(item) for item in parse_cp(frame.cp)]},
        "warnings": list(frame.warnings),
    }
    if frame.is_split:
        result["packet"] = {"pnum": int(frame.header["PNUM"]), "pno": int(frame.header["PNO"])}
    elif flag is not None and flag & 2:
        result["warnings"].append("Flag sets D (split) but PNUM/PNO are missing: read as a whole frame")
    if flag is None:
        result["warnings"].append("no Flag: an HJ/T 212-2005 style frame (no answer expected)")
    if cn in codes.PERIODS or cn in (codes.REALTIME_CN, codes.STATUS_CN, codes.RUNTIME_CN):
        mapped = map_upload(cn, frame.cp, frame.qn, st, int(time.time() * 1000),
                            PointMapper({}, None), LocalClock(timezone))
        result["readings"] = [r.to_wire() for r in mapped.readings]
        if mapped.unmapped:
            result["unmapped"] = mapped.unmapped
        if mapped.time_problem:
            result["warnings"].append(mapped.time_problem)
        result["time_zone"] = timezone
    return result
