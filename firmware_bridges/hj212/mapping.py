"""CP content of an upload → readings of named points, with quality and UTC time.

- 2011 real-time data: ``a34004-Rtd=35.2,a34004-Flag=N`` → ``pm25 = 35.2 ug/m3, good``;
  ``-ZsRtd`` (the converted "折算" value of emission stations) → ``pm25.zs``.
- 2051/2061/2031 minute/hour/day data: ``-Avg/-Min/-Max/-Cou`` (and ``-ZsAvg`` ...) →
  ``{point}.{minute|hour|day}.{avg|min|max|cou|zs_avg ...}``; Cou carries the code's
  cumulative unit (kg, m3 ...).
- 2021 device status ``SB1-RS=1`` → ``sb1.run_state``; 2041 running time ``SB1-RT=23.5`` →
  ``sb1.day.run_hours``.
- The data flag (``-Flag``) sets the quality of the code's values (see :mod:`.codes`); with
  ``flag_points`` the raw letter is reported too, as ``{point}.flag``.
- Time: ``-SampleTime`` of the code, else the CP's ``DataTime``, else the QN, else the time of
  receipt; all are the station's local time (``timezone``), converted to UTC epoch ms.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime

from agent.core.model import Reading
from firmware_bridges.hj212 import codes
from firmware_bridges.hj212.options import PointOverride

_NUMBER_START = frozenset("+-.0123456789")
_NUMBER_END = frozenset(".0123456789")
_CODE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
MIN_MS, MAX_MS = 1_000_000_000_000, 9_999_999_999_999   # the contract's epoch_ms bounds
RUN_STATE_LIMIT = 2**31


def number(text: str) -> float | None:
    """A decimal number as loggers write it ('35.2', '-0.9', '1.2e3'); None for anything else
    (empty, 'nan', 'inf', '1_0', ' 1', words), so no NaN or infinity ever reaches the uplink."""
    if not text or text[0] not in _NUMBER_START or text[-1] not in _NUMBER_END or "_" in text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value - value == 0.0 else None     # inf - inf and nan - nan are nan


class LocalClock:
    """Station-local ``YYYYMMDDhhmmss`` text → UTC epoch ms, cached per hour (a frame's DataTime
    repeats across its fields and its neighbours: the zone lookup runs once an hour)."""

    def __init__(self, timezone: str):
        self.zone = zoneinfo.ZoneInfo(timezone)
        self._hours: dict[str, int] = {}

    def to_ms(self, text: str) -> int | None:
        """None when the text is not a valid time or falls outside the contract's bounds."""
        if len(text) < 14 or not text[:14].isdigit() or not text.isascii():
            return None
        base = self._hours.get(text[:10])
        if base is None:
            try:
                moment = datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                                  tzinfo=self.zone)
            except ValueError:
                return None
            if len(self._hours) > 4096:
                self._hours.clear()
            base = self._hours[text[:10]] = int(moment.timestamp()) * 1000
        minutes, seconds = int(text[10:12]), int(text[12:14])
        if minutes > 59 or seconds > 60:
            return None
        ms = base + minutes * 60_000 + seconds * 1000
        if len(text) == 17 and text[14:17].isdigit():
            ms += int(text[14:17])       # a QN's milliseconds
        return ms if MIN_MS <= ms <= MAX_MS else None


@dataclass(slots=True)
class MapResult:
    readings: list[Reading] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)      # codes or fields not turned into readings
    bad_values: int = 0                                    # values that are not numbers
    time_problem: str | None = None                        # DataTime unreadable: receipt time used
    data_time_ms: int | None = None


class PointMapper:
    """One station's code → (name, unit) table: built-in entries under its overrides."""

    def __init__(self, overrides: dict[str, PointOverride], st: str | None, *, flag_points: bool = False):
        self.overrides = overrides
        self.st = st
        self.flag_points = flag_points
        self._cache: dict[str | None, dict[str, tuple[str, str | None, str | None] | None]] = {}

    def point(self, code: str, st: str | None = None) -> tuple[str, str | None, str | None] | None:
        """(name, unit, cumulative unit) of a code, or None when it cannot be a point name.
        ``st`` (the frame's) decides units only when the station's config names none."""
        st = self.st or st
        cache = self._cache.get(st)
        if cache is None:
            cache = self._cache[st] = {}
        try:
            return cache[code]
        except KeyError:
            pass
        if len(cache) > 4096:      # a logger inventing codes cannot grow this without bound
            cache.clear()
        result = cache[code] = self._resolve(code, st)
        return result

    def table(self, st: str | None = None) -> dict[str, tuple[str, str | None, str | None] | None]:
        """The cache behind :meth:`point` for one system code (read directly by hot loops)."""
        st = self.st or st
        cache = self._cache.get(st)
        if cache is None:
            cache = self._cache[st] = {}
        return cache

    def _resolve(self, code: str, st: str | None) -> tuple[str, str | None, str | None] | None:
        entry = codes.lookup(code)
        override = self.overrides.get(code)
        if override is None:
            override = next((o for c, o in self.overrides.items() if c.lower() == code.lower()), None)
        if entry is not None:
            unit = entry.ambient_unit if entry.ambient_unit and st in codes.AMBIENT_ST else entry.unit
            name, cou_unit = entry.name, entry.cou_unit
        elif _CODE.match(code):
            name, unit, cou_unit = code.lower(), None, None
        else:
            return None
        if override is not None:
            name = override.name or name
            if override.unit:
                unit = override.unit
        return (name, unit, cou_unit)


def cp_fields(cp: str) -> dict[str, str]:
    """CP content → {field: value} in order (items and fields flattened: ``a34004-Rtd``,
    ``a34004-Flag``, ``DataTime`` ...). A field without '=' maps to ''."""
    fields: dict[str, str] = {}
    for item in cp.replace(",", ";").split(";"):
        if item:
            key, _, value = item.partition("=")
            fields[key] = value
    return fields


# Suffixes that qualify a value rather than carry one.
_QUALIFIERS = frozenset({"Flag", "ZsFlag", "EFlag", "SampleTime"})


def map_upload(cn: str, cp: str, qn: str | None, st: str | None, received_ms: int,
               mapper: PointMapper, clock: LocalClock) -> MapResult:
    """The readings an upload carries (empty for CNs that carry none)."""
    result = MapResult()
    fields = cp_fields(cp)
    t = None
    data_time = fields.get("DataTime")
    if data_time is not None:
        t = clock.to_ms(data_time)
        if t is None:
            result.time_problem = f"DataTime {data_time[:20]!r} is not a valid local time"
    elif qn:
        t = clock.to_ms(qn)
    if t is None:
        t = received_ms
    result.data_time_ms = t
    period = codes.PERIODS.get(cn)
    if cn == codes.REALTIME_CN:
        names = _REALTIME
    elif period is not None:
        names = {suffix: f".{period}.{stat}" for suffix, stat in codes.STATS.items()}
    elif cn == codes.STATUS_CN:
        names = _STATUS
    elif cn == codes.RUNTIME_CN:
        names = _RUNTIME
    else:
        return result
    readings = result.readings
    unmapped = result.unmapped
    append = readings.append
    sample_times = "SampleTime" in cp
    converted = "ZsFlag" in cp
    flag_points = mapper.flag_points
    flag_quality = codes.FLAG_QUALITY
    points = mapper.table(st)
    for key, text in fields.items():
        code, dash, suffix = key.partition("-")
        if not dash:
            continue                          # DataTime and other plain fields
        tail = names.get(suffix)
        if tail is None:
            if suffix not in _QUALIFIERS:
                unmapped.append(key[:40])
            continue
        point = points.get(code)
        if point is None:
            point = mapper.point(code, st)
            if point is None:
                unmapped.append(key[:40])
                continue
        name, unit, cou_unit = point
        flag = fields.get(code + "-Flag")
        if converted and suffix[:2] == "Zs":
            flag = fields.get(code + "-ZsFlag", flag)
        q = "good" if flag is None else flag_quality.get(flag, "bad")
        at = t
        if sample_times:
            sample = fields.get(code + "-SampleTime")
            if sample is not None:
                at = clock.to_ms(sample) or t
        # number(), inlined: this loop runs for every value of every frame
        value = None
        if text and text[0] in _NUMBER_START and text[-1] in _NUMBER_END and "_" not in text:
            try:
                value = float(text)
            except ValueError:
                pass
            else:
                if value - value != 0.0:      # inf or nan
                    value = None
        if suffix == "RS" and value is not None:
            # a run state is a small code (0 stopped, 1 running, 2 fault ...): one too large for an
            # integer of the contract (SB1-RS=1e20) is a bad reading, not a lost frame
            value = int(value) if -RUN_STATE_LIMIT < value < RUN_STATE_LIMIT else None
        if value is None:
            result.bad_values += 1
            q = "bad"
        if suffix in _OWN_UNITS:
            unit = cou_unit if suffix == "Cou" else _OWN_UNITS[suffix]
        append(Reading(name + tail, value, unit, at, q))
        if flag_points and flag is not None and suffix in _FLAGGED:
            append(Reading(f"{name}.flag", flag[:8], None, at, "good"))
    return result


_REALTIME = {"Rtd": "", "ZsRtd": ".zs"}
_STATUS = {"RS": ".run_state"}
_RUNTIME = {"RT": ".day.run_hours"}
_OWN_UNITS: dict[str, str | None] = {"Cou": None, "RT": "h", "RS": None}   # Cou: the code's cumulative unit
_FLAGGED = frozenset({"Rtd", "Avg", "RS", "RT"})   # one .flag reading per code and frame
