"""GB/T 20999-2017 data objects this bridge reads and sets, and how their values decode.

Ids are (class, object, attribute, element). In a table object, the attribute is the column and
the element the row (lamp group g, phase p, stage s, road r, detector d); attribute 1 is the row
number itself. Values are big-endian. Sources as in :mod:`.codec`; the captured device's answers
(``protocol_catalog.json``) fixed the bitmap layout: phase 1's lamp groups answer
``00 00 00 00 00 00 00 01`` (lamp group 1) and stage 1's phases ``... 00 0f`` (phases 1-4), so an
8-byte bitmap is one big-endian 64-bit number whose bit n-1 stands for number n
(RVDataFusionServer: "按位标示bit0:1 bit63:64").

Sizes differ between sources: RVDataFusionServer lists a stage's elapsed and remaining time as
4 bytes, the captured device sends 2 (``00 05``). Numbers are read as big-endian integers of
1 to 4 bytes, whatever their size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# -- classes (OpenATC EDataType_GB20999) ---------------------------------------------------------
DEVICE_INFO, BASE_INFO, LAMP_GROUPS, PHASES, DETECTORS, STAGES = 1, 2, 3, 4, 5, 6
PRIORITY, PLANS, RUN_STATUS, TRAFFIC_DATA, ALARMS, FAULTS, CENTRE_CONTROL = 8, 9, 13, 14, 15, 16, 17

# -- objects used for state --------------------------------------------------------------------
LAMP_GROUP_COUNT = (3, 1, 0, 0)


def lamp_group_type(g: int) -> tuple[int, int, int, int]:
    return (3, 2, 2, g)          # 1 vehicle, 2 non-motor, 3 pedestrian, 4 lane


def lamp_group_state(g: int) -> tuple[int, int, int, int]:
    return (3, 3, 2, g)


def phase_lamp_groups(p: int) -> tuple[int, int, int, int]:
    return (4, 2, 2, p)          # 8-byte bitmap of lamp groups


def stage_phases(s: int) -> tuple[int, int, int, int]:
    return (6, 2, 2, s)          # 8-byte bitmap of phases


def stage_status(s: int) -> tuple[int, int, int, int]:
    return (6, 3, 2, s)


def stage_elapsed(s: int) -> tuple[int, int, int, int]:
    return (6, 3, 3, s)


def stage_remaining(s: int) -> tuple[int, int, int, int]:
    return (6, 3, 4, s)


def run_mode(r: int) -> tuple[int, int, int, int]:
    return (13, 2, 2, r)


def current_plan(r: int) -> tuple[int, int, int, int]:
    return (13, 2, 3, r)


def current_stage(r: int) -> tuple[int, int, int, int]:
    return (13, 2, 4, r)


DETECTOR_PRESENCE = (14, 1, 0, 0)   # 8-byte bitmap of detectors with a vehicle present


def detector_volume(d: int) -> tuple[int, int, int, int]:
    return (14, 2, 2, d)


def detector_occupancy(d: int) -> tuple[int, int, int, int]:
    return (14, 2, 3, d)


# -- objects used for control (set) --------------------------------------------------------------
# The centre control table, one row per road: attribute 2 specified stage, 3 specified plan,
# 4 specified run mode (OpenATC ECenterControlTable_GB20999). The captured device answers
# 11.02/11.03/11.04 with "does not exist": those are not the objects.
def specified_stage(r: int) -> tuple[int, int, int, int]:
    return (17, 1, 2, r)


def specified_plan(r: int) -> tuple[int, int, int, int]:
    return (17, 1, 3, r)


def specified_mode(r: int) -> tuple[int, int, int, int]:
    return (17, 1, 4, r)


# -- values ------------------------------------------------------------------------------------
LAMP_STATES = {
    0x01: "off", 0x10: "red", 0x11: "red_flash", 0x12: "red_fast_flash", 0x20: "green", 0x21: "green_flash",
    0x22: "green_fast_flash", 0x30: "yellow", 0x31: "yellow_flash", 0x32: "yellow_fast_flash", 0x40: "red_yellow",
}
LAMP_GROUP_TYPES = {1: "vehicle", 2: "non_motor", 3: "pedestrian", 4: "lane"}
STAGE_STATES = {0x10: "idle", 0x20: "running", 0x30: "transition"}
RUN_MODES = {
    0x11: "centre_timetable", 0x12: "centre_optimised", 0x13: "centre_coordinated", 0x14: "centre_adaptive",
    0x15: "centre_manual", 0x21: "local_fixed_time", 0x22: "local_actuated", 0x23: "local_coordinated",
    0x24: "local_adaptive", 0x25: "local_manual", 0x31: "flash", 0x32: "all_red", 0x33: "lamps_off",
}
CENTRE_MANUAL = 0x15


def uint(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def bitmap(raw: bytes) -> list[int]:
    """Numbers (from 1) whose bits are set: bit n-1 of the big-endian number is number n."""
    number = int.from_bytes(raw, "big")
    return [n + 1 for n in range(len(raw) * 8) if number >> n & 1]


def to_bitmap(numbers: list[int] | tuple[int, ...], size: int = 8) -> bytes:
    value = 0
    for n in numbers:
        value |= 1 << (n - 1)
    return value.to_bytes(size, "big")


def _named(names: dict[int, str]) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        if len(raw) != 1:
            return None
        return names.get(raw[0], f"unknown_{raw[0]:#04x}")
    return decode


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode("utf-8", "replace")


def _version(raw: bytes) -> dict[str, int] | None:
    """Device version: 4 bytes, hardware (2) then software (2) (RVDataFusionServer's table of the
    standard's objects: "高两个字节代表硬件版本,低两个字节代表软件版本")."""
    if len(raw) != 4:
        return None
    return {"hardware": uint(raw[:2]), "software": uint(raw[2:])}


def _date(raw: bytes) -> str | None:
    """Year (2 bytes), month, day[, hour, minute, second] as the captured device sends dates."""
    if len(raw) < 4:
        return None
    year, rest = uint(raw[:2]), list(raw[2:])
    date = f"{year:04d}-{rest[0]:02d}-{rest[1]:02d}"
    if len(rest) >= 5:
        date += f"T{rest[2]:02d}:{rest[3]:02d}:{rest[4]:02d}"
    return date


# (class, object, attribute) -> (name, decoder of the value bytes)
KNOWN: dict[tuple[int, int, int], tuple[str, Callable[[bytes], Any]]] = {
    (1, 1, 0): ("manufacturer", _text),
    (1, 2, 0): ("device_version", _version),
    (1, 3, 0): ("device_number", _text),
    (1, 4, 0): ("manufacture_date", _date),
    (1, 5, 0): ("install_date", _date),
    (3, 1, 0): ("lamp_group_count", uint),
    (3, 2, 1): ("lamp_group_number", uint),
    (3, 2, 2): ("lamp_group_type", _named(LAMP_GROUP_TYPES)),
    (3, 3, 1): ("lamp_group_number", uint),
    (3, 3, 2): ("lamp_group_state", _named(LAMP_STATES)),
    (4, 1, 0): ("phase_count", uint),
    (4, 2, 1): ("phase_number", uint),
    (4, 2, 2): ("phase_lamp_groups", bitmap),
    (6, 1, 0): ("stage_count", uint),
    (6, 2, 1): ("stage_number", uint),
    (6, 2, 2): ("stage_phases", bitmap),
    (6, 3, 1): ("stage_number", uint),
    (6, 3, 2): ("stage_state", _named(STAGE_STATES)),
    (6, 3, 3): ("stage_elapsed_s", uint),
    (6, 3, 4): ("stage_remaining_s", uint),
    (13, 1, 10): ("standard_time", _date),
    (13, 1, 11): ("local_time", _date),
    (13, 2, 1): ("road_number", uint),
    (13, 2, 2): ("run_mode", _named(RUN_MODES)),
    (13, 2, 3): ("current_plan", uint),
    (13, 2, 4): ("current_stage", uint),
    (14, 1, 0): ("detector_presence", bitmap),
    (14, 2, 1): ("detector_number", uint),
    (14, 2, 2): ("detector_volume", uint),
    (14, 2, 3): ("detector_occupancy", uint),
    (14, 2, 4): ("detector_speed", uint),
    (17, 1, 1): ("road_number", uint),
    (17, 1, 2): ("specified_stage", uint),
    (17, 1, 3): ("specified_plan", uint),
    (17, 1, 4): ("specified_run_mode", _named(RUN_MODES)),
}


def describe(cls: int, obj: int, attribute: int, raw: bytes) -> tuple[str | None, Any]:
    """(name, decoded value) of a value whose object is known; (None, None) otherwise. A value of
    the wrong size for its object decodes to None (its raw bytes still say what came)."""
    known = KNOWN.get((cls, obj, attribute))
    if known is None:
        return None, None
    name, decode = known
    if not raw:
        return name, None
    try:
        return name, decode(raw)
    except (ValueError, IndexError):
        return name, None
