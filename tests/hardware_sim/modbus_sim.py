"""Hardware-in-the-loop Modbus device simulator (TCP, and RTU over a real or pty serial port).

It serves a device profile (``config/profiles/*.yaml``, loaded with the driver's own
``load_profile``) for several unit ids, with values that drift plausibly over time, and lets a test
or a maintainer break each unit on purpose. Everything on the wire is pymodbus's own server; the
simulator only plugs into three of its hooks:

* ``SimDevice(action=...)`` (pymodbus 3.16's datastore callback): refreshes the register image from
  the value model just before a read is answered, and turns client writes into values;
* a ``ServerRequestHandler`` subclass: per-unit faults that must act before or instead of the
  datastore (silence, injected exception codes, delays, unknown unit ids);
* its ``pdu_send``: corrupting the frame after pymodbus has built it (bad CRC on RTU, garbage PDU on
  TCP).

Values are a pure function of (seed, unit, point, time quantised to ``resolution``), so a test that
injects ``clock=`` can predict them, and ``values(unit)`` always equals what a client decodes now.

Usage from code::

    sim = ModbusSim("air_monitor_rs485", units=[1, 2], tcp=("127.0.0.1", 0))
    await sim.start(); host, port = sim.tcp_address
    sim.set_fault(2, "no_answer"); sim.set_value(1, "pm25", 42.5)
    await sim.stop()

    with ModbusSim.fleet(units=200, registers=50, tcp=("127.0.0.1", 0)).run_in_thread() as sim: ...

From the command line: ``python -m tests.hardware_sim.modbus_sim --help`` (and README.md beside this file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.core.model import Value
from drivers.modbus import codec
from drivers.modbus.profile import BUNDLED_DIR

DEFAULT_PROFILE_DIRS: tuple[Path, ...] = (BUNDLED_DIR,)   # the checkout's, or the installed package's

TABLES = ("coil", "discrete_input", "holding_register", "input_register")
BIT_TABLES = ("coil", "discrete_input")
# pymodbus function code -> the table it addresses (22/23 are register functions on holding registers)
_FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 4: "input_register",
             3: "holding_register", 6: "holding_register", 16: "holding_register",
             22: "holding_register", 23: "holding_register"}


# --------------------------------------------------------------------------------------------
# Points: the simulator's view of a profile point (decoupled from the driver's Profile class so
# the fleet generator can build points without a YAML file).
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SimPoint:
    name: str
    table: str                      # coil, discrete_input, input_register, holding_register
    address: int                    # protocol address, 0-based
    type: str = "uint16"
    order: str = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    writable: bool = False
    length: int | None = None
    min: float | None = None
    max: float | None = None
    bit: int | None = None          # this point is one bit of the register at `address`
    signal: str | None = None       # value-model behaviour; None = inferred from the name

    @classmethod
    def from_profile_point(cls, p: Any) -> SimPoint:
        """Copy the fields the simulator needs from a ``drivers.modbus.profile.Point``."""
        def get(attr: str, default: Any) -> Any:
            value = getattr(p, attr, default)
            return default if value is None else value

        return cls(
            name=p.name, table=str(getattr(p.table, "value", p.table)), address=int(p.address),
            type=str(get("type", "uint16")), order=str(get("order", "ABCD")),
            scale=float(get("scale", 1.0)), offset=float(get("offset", 0.0)),
            unit=getattr(p, "unit", None), writable=bool(get("writable", False)),
            length=getattr(p, "length", None), min=getattr(p, "min", None),
            max=getattr(p, "max", None), bit=getattr(p, "bit", None),
        )

    @property
    def is_bool(self) -> bool:
        return self.table in BIT_TABLES or self.bit is not None


def _encode(p: SimPoint, value: Value) -> list[int]:
    return codec.encode(value, p.type, order=p.order, scale=p.scale, offset=p.offset, length=p.length)


def _decode(p: SimPoint, registers: list[int]) -> Value:
    return codec.decode(registers, p.type, order=p.order, scale=p.scale, offset=p.offset)


def _width(p: SimPoint) -> int:
    """Registers (or bits) the point occupies."""
    return 1 if p.is_bool else codec.register_count(p.type, p.length)


def points_from_profile(profile: Any) -> list[SimPoint]:
    """Accept a ``Profile`` (with ``.points``) or an iterable of points / SimPoints."""
    points = getattr(profile, "points", profile)
    return [p if isinstance(p, SimPoint) else SimPoint.from_profile_point(p) for p in points]


def load_points(name: str, search_dirs: Sequence[Path | str] | None = None) -> list[SimPoint]:
    """Load a profile by name (or path to a .yaml) with the driver's own loader and validation."""
    from drivers.modbus.profile import load_profile

    return points_from_profile(load_profile(name, [Path(d) for d in (search_dirs or DEFAULT_PROFILE_DIRS)]))


# --------------------------------------------------------------------------------------------
# Value model: plausible, deterministic signals.
# --------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_DAY = 86400.0


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread integer hash (Python's hash() of str is salted)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _infer_signal(p: SimPoint) -> str:
    n = p.name.lower().replace(".", "_").replace("-", "_")
    if p.is_bool:
        return "flag"
    if p.type == "string":
        return "text"
    for signal_name, keys in _NAME_SIGNALS:
        if any(n == k or n.startswith(k + "_") or n.endswith("_" + k) for k in keys):
            return signal_name
    if any(k in n for k in ("counter", "energy", "hours")):
        return "counter"          # totals only ever grow
    if any(k in n for k in ("status", "fault", "alarm", "error", "count")):
        return "zero"             # a healthy device: no faults, nothing active
    if p.writable:
        return "setting"
    return "wave"


_NAME_SIGNALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pm25", ("pm25", "pm2_5")), ("pm10", ("pm10",)), ("temperature", ("temperature", "temp")),
    ("humidity", ("humidity", "rh")), ("pressure", ("pressure", "press")), ("so2", ("so2",)),
    ("no2", ("no2",)), ("co", ("co",)), ("o3", ("o3",)), ("uptime", ("uptime",)),
)
# Initial values of settings a device ships with; other writable points start at min or 0.
_SETTING_DEFAULTS: dict[str, Value] = {"fan_on": True, "report_interval": 60}


class ValueModel:
    """value(point, unit, t) for any point: air-quality signals by name, generic waves otherwise."""

    def __init__(self, seed: int = 0, boot_time: float = 0.0, resolution: float = 1.0) -> None:
        self.seed = seed
        self.boot_time = boot_time
        self.resolution = resolution

    # building blocks ------------------------------------------------------------------------
    def _h(self, unit: int, key: str, salt: int = 0) -> int:
        return _mix64(_mix64(_mix64(self.seed ^ (unit << 20) ^ salt) ^ zlib.crc32(key.encode())))

    def wave(self, unit: int, key: str, t: float, periods: Sequence[float] = (7200, 2700, 900)) -> float:
        """Smooth drift in [-1, 1]: a few sines with seed-dependent phases (weights 4:2:1 ...)."""
        total = norm = 0.0
        for i, period in enumerate(periods):
            phase = (self._h(unit, key, i + 1) % 6283) / 1000.0
            weight = 1.0 / (1 << i)
            total += weight * math.sin(2 * math.pi * t / period + phase)
            norm += weight
        return total / norm

    def noise(self, unit: int, key: str, t: float) -> float:
        """White noise in [-1, 1], constant within one tick (so reads in a tick agree)."""
        tick = int(t // self.resolution)
        return (self._h(unit, key, tick * 0x9E37 + 17) % 2_000_001) / 1_000_000.0 - 1.0

    @staticmethod
    def daily(t: float, peak_hour: float) -> float:
        """Daily cycle in [-1, 1] peaking at `peak_hour` UTC (a daily-ish sine)."""
        return math.cos(2 * math.pi * ((t % _DAY) / 3600.0 - peak_hour) / 24.0)

    # signals (engineering units) ------------------------------------------------------------
    def pm25(self, u: int, t: float) -> float:
        return _clamp(85 + 62 * self.wave(u, "pm25", t) + 3 * self.noise(u, "pm25", t), 20, 150)

    def pm10(self, u: int, t: float) -> float:
        ratio = 1.45 + 0.2 * self.wave(u, "pm10", t, (5400, 1300))
        return _clamp(self.pm25(u, t) * ratio + 4 * self.noise(u, "pm10", t), 25, 400)

    def temperature(self, u: int, t: float) -> float:
        return 17 + 8 * self.daily(t, 14) + 1.5 * self.wave(u, "temp", t) + 0.1 * self.noise(u, "temp", t)

    def humidity(self, u: int, t: float) -> float:
        value = 62 - 18 * self.daily(t, 14) + 6 * self.wave(u, "rh", t) + 0.5 * self.noise(u, "rh", t)
        return _clamp(value, 10, 99)

    def pressure(self, u: int, t: float) -> float:
        return 1013 + 6 * self.wave(u, "press", t, (43200, 14400)) + 0.2 * self.noise(u, "press", t)

    def so2(self, u: int, t: float) -> float:
        return _clamp(12 + 8 * self.wave(u, "so2", t) + self.noise(u, "so2", t), 1, 500)

    def no2(self, u: int, t: float) -> float:
        rush = 15 * max(self.daily(t, 8.5), self.daily(t, 18))      # traffic peaks
        return _clamp(45 + rush + 25 * self.wave(u, "no2", t) + 3 * self.noise(u, "no2", t), 2, 400)

    def co(self, u: int, t: float) -> float:
        return _clamp(0.9 + 0.5 * self.wave(u, "co", t) + 0.05 * self.noise(u, "co", t), 0.1, 10)

    def o3(self, u: int, t: float) -> float:
        value = 80 + 55 * self.daily(t, 15) + 12 * self.wave(u, "o3", t) + 3 * self.noise(u, "o3", t)
        return _clamp(value, 2, 400)

    def uptime(self, u: int, t: float) -> int:
        return max(0, int(t - self.boot_time))

    # dispatch -------------------------------------------------------------------------------
    def value(self, p: SimPoint, unit: int, t: float) -> Value:
        """The model's value of `p` at time `t` (before encoding; see ModbusSim.values)."""
        t = math.floor(t / self.resolution) * self.resolution
        kind = p.signal or _infer_signal(p)
        lo, hi = _carry_range(p)
        if kind in ("pm25", "pm10", "temperature", "humidity", "pressure", "so2", "no2", "co", "o3"):
            return _clamp(getattr(self, kind)(unit, t), lo, hi)
        if kind == "uptime":
            return min(self.uptime(unit, t), int(hi))
        if kind == "counter":              # e.g. an energy meter: starts high so 32-bit words both move
            start = 70_000 + self._h(unit, p.name) % 100_000
            return min(start + int(t - self.boot_time), int(hi))
        if kind == "flag":
            return bool(_SETTING_DEFAULTS.get(p.name, False)) if p.writable else False
        if kind == "zero":
            return 0
        if kind == "text":            # e.g. a panel name or serial number: fixed per unit
            return f"SIM{unit:03d} {p.name}"[: 2 * (p.length or 1)]
        if kind == "setting":
            default = _SETTING_DEFAULTS.get(p.name, p.min if p.min is not None else 0)
            return _clamp(default, lo, hi)
        lo, hi = _wave_range(p)
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        value = mid + half * (0.8 * self.wave(unit, p.name, t) + 0.05 * self.noise(unit, p.name, t))
        return _clamp(value, lo, hi)


def _clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


_RAW_RANGE = {"int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-(2**31), 2**31 - 1),
              "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}


def _carry_range(p: SimPoint) -> tuple[float, float]:
    """Engineering range the point's type can carry after scale/offset, narrowed by min/max."""
    raw = _RAW_RANGE.get(p.type)
    lo, hi = (-1e9, 1e9) if raw is None else sorted((raw[0] * p.scale + p.offset, raw[1] * p.scale + p.offset))
    if p.min is not None:
        lo = max(lo, float(p.min))
    if p.max is not None:
        hi = min(hi, float(p.max))
    return lo, hi


def _wave_range(p: SimPoint) -> tuple[float, float]:
    """Range of a generic wave: min..max when the profile gives both, else 0..100 (plausible for
    most unnamed analog points) within what the type carries."""
    lo, hi = _carry_range(p)
    if p.min is not None and p.max is not None:
        return lo, hi
    return max(lo, 0.0 if p.min is None else lo), min(hi, 100.0 if p.max is None else hi)


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------

class FaultMode(str, enum.Enum):
    NONE = "none"
    NO_ANSWER = "no_answer"     # the unit is silent (a dead RS-485 device)
    EXCEPTION = "exception"     # answers every request with a Modbus exception code
    CORRUPT = "corrupt"         # answers with a bad CRC (RTU) / an undecodable PDU (TCP)
    SLOW = "slow"               # answers correctly after `delay` seconds


@dataclass(frozen=True, slots=True)
class Fault:
    mode: FaultMode = FaultMode.NONE
    code: int = ExcCodes.DEVICE_FAILURE     # for EXCEPTION: 0x04 device failure, 0x02 illegal address ...
    delay: float = 2.0                      # for SLOW, seconds

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``none``, ``no_answer``, ``exception[:CODE]``, ``corrupt``, ``slow[:SECONDS]``."""
        mode, _, arg = text.strip().partition(":")
        fault = cls(FaultMode(mode.strip().lower()))
        if arg and fault.mode is FaultMode.EXCEPTION:
            fault = replace(fault, code=int(arg, 0))
        elif arg and fault.mode is FaultMode.SLOW:
            fault = replace(fault, delay=float(arg))
        elif arg:
            raise ValueError(f"fault {mode!r} takes no argument")
        return fault

    def __str__(self) -> str:
        if self.mode is FaultMode.EXCEPTION:
            return f"exception:{self.code:#04x}"
        if self.mode is FaultMode.SLOW:
            return f"slow:{self.delay:g}"
        return self.mode.value


def _corrupt_frame(frame: bytes, rtu: bool) -> bytes:
    """RTU: same frame, CRC inverted (the client's framer drops it). TCP: MBAP kept intact (so the
    client frames it and matches the transaction) but the PDU is garbage that no decoder accepts."""
    if rtu:
        return frame[:-2] + bytes(b ^ 0xFF for b in frame[-2:])
    # MBAP = tid(2) pid(2) len(2) unit(1); function code 0x00 does not exist -> decode error
    return frame[:7] + b"\x00" + bytes(b ^ 0xA5 for b in frame[8:])


# --------------------------------------------------------------------------------------------
# Device state: per-unit values, overrides, register images (thread-safe: tests poke it from
# their own thread while the server answers on the event loop).
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Layout:
    """Where each point lives, computed once per profile and shared by all units."""

    points: dict[str, SimPoint]
    width: dict[str, int]                          # registers (bits) per point
    writable_at: dict[tuple[str, int], list[SimPoint]]   # (table, address) -> writable points there
    used: dict[str, set[int]]                       # addresses covered by points, per table

    @classmethod
    def build(cls, points: Sequence[SimPoint]) -> _Layout:
        layout = cls({}, {}, {}, {t: set() for t in TABLES})
        for p in points:
            if p.table not in TABLES:
                raise ValueError(f"point {p.name}: unknown table {p.table!r}")
            if p.name in layout.points:
                raise ValueError(f"point {p.name} defined twice")
            layout.points[p.name] = p
            width = _width(p)
            layout.width[p.name] = width
            for a in range(p.address, p.address + width):
                layout.used[p.table].add(a)
                if p.writable:
                    layout.writable_at.setdefault((p.table, a), []).append(p)
        return layout


@dataclass(slots=True)
class _Snapshot:
    key: tuple[int, int]                           # (tick, version) it was computed for
    values: dict[str, Value]
    registers: dict[str, dict[int, int]]           # table -> address -> 16-bit word
    bits: dict[str, dict[int, bool]]               # table -> address -> bit


@dataclass(slots=True)
class _Unit:
    overrides: dict[str, Value] = field(default_factory=dict)   # pinned by tests or written by clients
    fault: Fault = field(default_factory=Fault)
    version: int = 0
    snapshot: _Snapshot | None = None
    requests: int = 0


class DeviceState:
    """The simulated devices: what each unit serves now, and how each is broken."""

    def __init__(self, points: Sequence[SimPoint], units: Iterable[int], model: ValueModel,
                 clock: Callable[[], float]) -> None:
        self.layout = _Layout.build(points)
        self.model = model
        self.clock = clock
        self.units: dict[int, _Unit] = {int(u): _Unit() for u in units}
        self.lock = threading.RLock()

    # reading --------------------------------------------------------------------------------
    def snapshot(self, unit: int) -> _Snapshot:
        """Values and register images of `unit` for the current tick (cached per tick/version)."""
        with self.lock:
            state = self.units[unit]
            tick = math.floor(self.clock() / self.model.resolution)
            key = (tick, state.version)
            if state.snapshot is None or state.snapshot.key != key:
                state.snapshot = self._compute(unit, state, tick * self.model.resolution, key)
            return state.snapshot

    def _compute(self, unit: int, state: _Unit, t: float, key: tuple[int, int]) -> _Snapshot:
        layout, snap = self.layout, _Snapshot(key, {}, {t_: {} for t_ in TABLES}, {t_: {} for t_ in TABLES})
        bit_points: list[SimPoint] = []
        for p in layout.points.values():
            if p.table in BIT_TABLES:
                value = bool(state.overrides.get(p.name, self.model.value(p, unit, t)))
                snap.bits[p.table][p.address] = value
                snap.values[p.name] = value
            elif p.bit is not None:
                bit_points.append(p)      # applied on top of the word they live in, below
            else:
                value = state.overrides[p.name] if p.name in state.overrides else self.model.value(p, unit, t)
                words = _encode(p, value)
                snap.registers[p.table].update(zip(range(p.address, p.address + len(words)), words))
                snap.values[p.name] = _decode(p, words)
        # Bit points (status bits) change their word only when pinned/written; otherwise they
        # report what the word says, so pinning status_word=3 shows both faults.
        touched: set[tuple[str, int]] = set()
        for p in bit_points:
            regs = snap.registers[p.table]
            word = regs.get(p.address, 0)
            if p.name in state.overrides:
                word = word | (1 << p.bit) if state.overrides[p.name] else word & ~(1 << p.bit)
                regs[p.address] = word
                touched.add((p.table, p.address))
        for p in bit_points:
            snap.values[p.name] = bool(snap.registers[p.table].get(p.address, 0) >> p.bit & 1)
        if touched:                       # re-decode word points that share a changed register
            for p in layout.points.values():
                if p.bit is None and p.table not in BIT_TABLES and any(
                        (p.table, a) in touched for a in range(p.address, p.address + layout.width[p.name])):
                    regs = snap.registers[p.table]
                    snap.values[p.name] = _decode(p, [regs[a] for a in range(p.address, p.address + layout.width[p.name])])
        return snap

    def values(self, unit: int) -> dict[str, Value]:
        return dict(self.snapshot(unit).values)

    # changing -------------------------------------------------------------------------------
    def set_value(self, unit: int, name: str, value: Value) -> None:
        p = self.layout.points[name]
        if not p.is_bool:
            _encode(p, value)             # fail here, in the test, if the type cannot carry it
        with self.lock:
            state = self.units[unit]
            state.overrides[name] = bool(value) if p.is_bool else value
            state.version += 1

    def clear_value(self, unit: int, name: str | None = None) -> None:
        with self.lock:
            state = self.units[unit]
            if name is None:
                state.overrides.clear()
            else:
                state.overrides.pop(name, None)
            state.version += 1

    def set_fault(self, unit: int, fault: Fault) -> None:
        with self.lock:
            self.units[unit].fault = fault

    def fault(self, unit: int) -> Fault:
        return self.units[unit].fault

    # the pymodbus datastore hook --------------------------------------------------------------
    async def on_access(self, unit: int, function_code: int, start_address: int, address: int,
                        count: int, registers: list[int], set_values: list[int] | list[bool] | None
                        ) -> ExcCodes | None:
        """``SimDevice.action``: called by pymodbus with the table's live register list.

        Reads: copy the current snapshot into the list so the response carries it. Writes: accept
        only writable points, decode what lands, and keep it as an override (so ``values()`` and
        later reads see it; the model never overwrites a setting the client made).
        """
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        with self.lock:
            if set_values is not None:
                result = self._write(unit, table, address, list(set_values), registers, start_address)
                if result is not None:
                    return result
            self._refresh(unit, table, registers, start_address)
        return None

    def _refresh(self, unit: int, table: str, registers: list[int], start: int) -> None:
        snap = self.snapshot(unit)
        if table in BIT_TABLES:
            for address, bit in snap.bits[table].items():
                i, b = address // 16 - start, address % 16
                registers[i] = registers[i] | (1 << b) if bit else registers[i] & ~(1 << b)
        else:
            for address, word in snap.registers[table].items():
                registers[address - start] = word

    def _write(self, unit: int, table: str, address: int, values: list, registers: list[int],
               start: int) -> ExcCodes | None:
        addresses = range(address, address + len(values))
        if any((table, a) not in self.layout.writable_at for a in addresses):
            return ExcCodes.ILLEGAL_ADDRESS      # what real devices answer for read-only registers
        if table in BIT_TABLES:
            for a, v in zip(addresses, values):
                for p in self.layout.writable_at[(table, a)]:
                    self.units[unit].overrides[p.name] = bool(v)
            self.units[unit].version += 1
            return None
        self._refresh(unit, table, registers, start)
        image = {a: registers[a - start] for a in self.layout.used[table] if 0 <= a - start < len(registers)}
        image.update(zip(addresses, (int(v) for v in values)))
        written = {p.name: p for a in addresses for p in self.layout.writable_at[(table, a)]}
        new: dict[str, Value] = {}
        for p in written.values():
            word_range = range(p.address, p.address + self.layout.width[p.name])
            if p.bit is not None:
                new[p.name] = bool(image[p.address] >> p.bit & 1)
                continue
            value = _decode(p, [image[a] for a in word_range])
            if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
                return ExcCodes.ILLEGAL_VALUE
            new[p.name] = value
        self.units[unit].overrides.update(new)
        self.units[unit].version += 1
        return None

    # pymodbus device definitions ------------------------------------------------------------
    def sim_devices(self, strict_gaps: bool = False) -> list[SimDevice]:
        return [SimDevice(u, simdata=self._simdata(strict_gaps),
                          action=functools.partial(self.on_access, u)) for u in self.units]

    def _simdata(self, strict_gaps: bool) -> tuple[list[SimData], ...]:
        """Four separate tables (coils, discrete inputs, holding, input), as the profile has them.

        Register tables cover first..last point address; gaps between points read as 0 unless
        `strict_gaps` (then a read spanning a gap gets exception 0x02, as some devices do).
        Addresses outside the map always get 0x02.
        """
        out: list[list[SimData]] = []
        for table in ("coil", "discrete_input", "holding_register", "input_register"):
            used = sorted(self.layout.used[table])
            if table in BIT_TABLES:
                if not used:     # pymodbus wants a block; park an unused one at the top of the space
                    out.append([SimData(65520, values=[False] * 16, datatype=DataType.BITS)])
                else:
                    out.append([SimData(used[0], values=[False] * (used[-1] - used[0] + 1),
                                        datatype=DataType.BITS)])
                continue
            if not used:
                out.append([SimData(0, datatype=DataType.INVALID)])
                continue
            if strict_gaps:
                runs, run_start, prev = [], used[0], used[0]
                for a in used[1:]:
                    if a != prev + 1:
                        runs.append((run_start, prev))
                        run_start = a
                    prev = a
                runs.append((run_start, prev))
            else:
                runs = [(used[0], used[-1])]
            out.append([SimData(a, values=[0] * (b - a + 1), datatype=DataType.REGISTERS) for a, b in runs])
        return tuple(out)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# pymodbus glue: a request handler that applies per-unit faults, and servers that use it.
# --------------------------------------------------------------------------------------------

class _FaultyRequestHandler(ServerRequestHandler):
    """One per client connection (TCP) or per open port (serial)."""

    server: Any     # _SimServerMixin

    async def handle_request(self) -> None:
        request, addr = self.last_pdu, self.last_addr
        if request is None:
            return
        state: DeviceState = self.server.sim_state
        rtu = self.server.sim_rtu
        unit = request.dev_id
        if unit not in state.units:
            if rtu:       # on a bus, nobody answers for an absent unit id
                return
            # TCP gateways answer 0x0B "target device failed to respond" for unknown unit ids
            self.server_send(ExceptionResponse(request.function_code, ExcCodes.GATEWAY_NO_RESPONSE,
                                               device_id=unit, transaction=request.transaction_id), addr)
            return
        with state.lock:
            state.units[unit].requests += 1
            fault = state.units[unit].fault
        if fault.mode is FaultMode.NO_ANSWER:
            return
        if fault.mode is FaultMode.SLOW:
            await asyncio.sleep(fault.delay)
        if fault.mode is FaultMode.EXCEPTION:
            self.server_send(ExceptionResponse(request.function_code, fault.code, device_id=unit,
                                               transaction=request.transaction_id), addr)
            return
        # The stock handler reads self.last_pdu; restore ours in case a newer request arrived
        # while we slept (it runs without awaiting anything slow, so nothing interleaves).
        self.last_pdu, self.last_addr = request, addr
        await super().handle_request()

    def pdu_send(self, pdu: ModbusPDU, addr: tuple | None = None) -> None:
        """Stock pdu_send, plus corruption of the finished frame for units in CORRUPT mode."""
        packet = self.framer.buildFrame(self.trace_pdu(True, pdu))
        state: DeviceState = self.server.sim_state
        if pdu.dev_id in state.units and state.fault(pdu.dev_id).mode is FaultMode.CORRUPT:
            packet = _corrupt_frame(packet, self.server.sim_rtu)
        self.low_level_send(self.trace_packet(True, packet), addr=addr)


class _SimServerMixin:
    sim_state: DeviceState
    sim_rtu: bool

    def callback_new_connection(self) -> ServerRequestHandler:
        return _FaultyRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[attr-defined]


class _SimTcpServer(_SimServerMixin, ModbusTcpServer):
    sim_rtu = False


class _SimSerialServer(_SimServerMixin, ModbusSerialServer):
    sim_rtu = True


# --------------------------------------------------------------------------------------------
# Virtual serial cable
# --------------------------------------------------------------------------------------------

from tests.hardware_sim.pty import PtyPair  # noqa: E402,F401 - re-exported: simulators and tests use it from here


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------

class ModbusSim:
    """N units of one profile on a TCP port and/or a serial port (real, or a pty pair it makes).

    :param profile: profile name (loaded with ``drivers.modbus.profile.load_profile`` from
        ``profile_dirs``), a path to a profile .yaml, a ``Profile``, or a list of ``SimPoint``.
    :param tcp: ``(host, port)`` or ``"host:port"``; port 0 picks a free one (see ``tcp_address``).
    :param serial: an existing serial port to serve RTU on.
    :param rtu_pty: make a socat pty pair and serve RTU on one end; the other end is
        ``agent_port`` (a path to put it at, or True for a temp path).
    :param clock: seconds since the epoch; inject a fake one to freeze or step time in tests.
    :param resolution: values are constant within one tick of this many seconds.
    :param strict_gaps: unmapped addresses between points answer 0x02 instead of reading as 0.
    """

    def __init__(self, profile: str | os.PathLike | Any, units: Iterable[int] = (1,), *,
                 tcp: tuple[str, int] | str | None = None, serial: str | None = None,
                 rtu_pty: str | os.PathLike | bool | None = None, baudrate: int = 9600,
                 seed: int = 0, clock: Callable[[], float] = time.time, resolution: float = 1.0,
                 boot_time: float | None = None, profile_dirs: Sequence[str | Path] | None = None,
                 strict_gaps: bool = False) -> None:
        if isinstance(profile, (str, os.PathLike)):
            points = load_points(os.fspath(profile), profile_dirs)
        else:
            points = points_from_profile(profile)
        units = sorted({int(u) for u in units})
        if not units or not all(1 <= u <= 247 for u in units):
            raise ValueError("unit ids must be 1..247")
        self.units = units
        self.profile_name = os.fspath(profile) if isinstance(profile, (str, os.PathLike)) else "custom"
        self.clock = clock
        self.model = ValueModel(seed, clock() if boot_time is None else boot_time, resolution)
        self.state = DeviceState(points, units, self.model, clock)
        self._tcp = _parse_hostport(tcp) if isinstance(tcp, str) else tcp
        self._serial, self._rtu_pty, self._baudrate = serial, rtu_pty, baudrate
        if not (self._tcp or serial or rtu_pty):
            raise ValueError("give at least one of tcp=, serial=, rtu_pty=")
        self._strict_gaps = strict_gaps
        self.pty: PtyPair | None = None
        self._servers: list[ModbusTcpServer | ModbusSerialServer] = []
        self._tcp_bound: tuple[str, int] | None = None
        self._restart: asyncio.Task | None = None

    @classmethod
    def fleet(cls, units: int | Iterable[int] = 200, registers: int = 50, **kwargs: Any) -> ModbusSim:
        """Benchmark mode: N units each serving `registers` holding registers of mixed types."""
        ids = range(1, units + 1) if isinstance(units, int) else units
        sim = cls(fleet_points(registers), ids, **kwargs)
        sim.profile_name = f"fleet_{registers}"
        return sim

    # --- introspection ------------------------------------------------------------------------
    @property
    def points(self) -> dict[str, SimPoint]:
        return dict(self.state.layout.points)

    @property
    def tcp_address(self) -> tuple[str, int]:
        """Where the TCP server listens (the real port when 0 was asked for)."""
        if self._tcp_bound is None:
            raise RuntimeError("no TCP server running")
        return self._tcp_bound

    @property
    def agent_port(self) -> str:
        """The serial device the agent should open: the pty's far end, or the served port."""
        if self.pty is not None:
            return self.pty.agent_port
        if self._serial:
            return self._serial
        raise RuntimeError("no serial side")

    def values(self, unit: int) -> dict[str, Value]:
        """What `unit` serves right now, as a client decodes it (scale applied, float32-rounded)."""
        return self.state.values(unit)

    def value_at(self, unit: int, point: str, t: float) -> Value:
        """The model's value of `point` at time `t` (ignores pins and writes), as served."""
        p = self.state.layout.points[point]
        value = self.model.value(p, unit, t)
        return bool(value) if p.is_bool else _decode(p, _encode(p, value))

    def requests(self, unit: int) -> int:
        """Requests addressed to `unit` so far (answered or not): to check a client's backoff."""
        return self.state.units[unit].requests

    # --- steering -----------------------------------------------------------------------------
    def set_value(self, unit: int, point: str, value: Value) -> None:
        """Pin `point` of `unit` to `value` until ``clear_value`` (or a client write)."""
        self.state.set_value(unit, point, value)

    def clear_value(self, unit: int, point: str | None = None) -> None:
        """Return one point (or all) to the value model; also forgets client writes."""
        self.state.clear_value(unit, point)

    def set_fault(self, unit: int, mode: FaultMode | str | Fault, *, code: int | None = None,
                  delay: float | None = None) -> None:
        """Break (or heal, with ``"none"``) one unit; takes effect on the next request."""
        if isinstance(mode, Fault):
            fault = mode
        else:
            fault = Fault(mode) if isinstance(mode, FaultMode) else Fault.parse(mode)
        if code is not None:
            fault = replace(fault, code=code)
        if delay is not None:
            fault = replace(fault, delay=delay)
        self.state.set_fault(unit, fault)

    def fault(self, unit: int) -> Fault:
        return self.state.fault(unit)

    async def drop(self, downtime: float = 0.0, *, wait: bool = False) -> None:
        """Whole-port failure. TCP: every client connection is closed now; with `downtime` > 0 the
        listener is also closed (connects are refused) and reopened after `downtime` seconds.
        Serial: the port is closed and reopened after `downtime` (a pty just goes silent).
        With `wait`, return only once serving again."""
        if downtime <= 0:
            for server in self._servers:
                if isinstance(server, ModbusTcpServer):
                    for conn in list(server.active_connections.values()):
                        conn.close()
            if any(isinstance(s, ModbusSerialServer) for s in self._servers):
                await self._stop_servers(serial_only=True)
                await self._start_servers(serial_only=True)
            return
        await self._stop_servers()
        self._restart = asyncio.create_task(self._restart_after(downtime))
        if wait:
            await self._restart

    async def _restart_after(self, downtime: float) -> None:
        await asyncio.sleep(downtime)
        await self._start_servers()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> ModbusSim:
        try:
            if self._rtu_pty and self.pty is None:
                agent_link = None if self._rtu_pty is True else self._rtu_pty
                self.pty = PtyPair(agent_link).start()
            await self._start_servers()
        except BaseException:
            await self.stop()         # no socat or half-started listener left behind
            raise
        return self

    async def stop(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
            self._restart = None
        await self._stop_servers()
        if self.pty is not None:
            self.pty.stop()
            self.pty = None

    async def __aenter__(self) -> ModbusSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start_servers(self, serial_only: bool = False) -> None:
        if self._tcp and not serial_only:
            host, port = self._tcp_bound or self._tcp    # after a drop, come back on the same port
            server = _SimTcpServer(self.state.sim_devices(self._strict_gaps), address=(host, port))
            server.sim_state = self.state
            try:
                await server.serve_forever(background=True)
            except RuntimeError:
                raise RuntimeError(f"cannot listen on TCP {host}:{port} (in use?)") from None
            sock = server.transport.sockets[0]  # type: ignore[attr-defined]
            self._tcp_bound = (host, sock.getsockname()[1])
            self._servers.append(server)
        port = self.pty.sim_port if self.pty else self._serial
        if port:
            server = _SimSerialServer(self.state.sim_devices(self._strict_gaps), framer=FramerType.RTU,
                                      port=port, baudrate=self._baudrate)
            server.sim_state = self.state
            try:
                await server.serve_forever(background=True)
            except RuntimeError:
                raise RuntimeError(f"cannot open serial port {port}") from None
            with contextlib.suppress(Exception):
                # requests written while the port was closed are stale: a device would not see them
                server.transport.sync_serial.reset_input_buffer()  # type: ignore[attr-defined]
            self._servers.append(server)

    async def _stop_servers(self, serial_only: bool = False) -> None:
        keep = []
        for server in self._servers:
            if serial_only and not isinstance(server, ModbusSerialServer):
                keep.append(server)
                continue
            await server.shutdown()
        self._servers = keep
        await asyncio.sleep(0)     # let asyncio finish closing transports before a rebind

    def run_in_thread(self, timeout: float = 10.0) -> ThreadedSim:
        """Start on a private event loop in a daemon thread, for synchronous tests."""
        return ThreadedSim(self).start(timeout)


class ThreadedSim:
    """A started ModbusSim on its own thread; the accessors are safe to call from any thread."""

    def __init__(self, sim: ModbusSim) -> None:
        self.sim = sim
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="modbus-sim", daemon=True)

    def _call(self, coro: Any, timeout: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, timeout: float = 10.0) -> ThreadedSim:
        self._thread.start()
        self._call(self.sim.start(), timeout)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self.sim.stop(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()

    def drop(self, downtime: float = 0.0, *, wait: bool = False) -> None:
        self._call(self.sim.drop(downtime, wait=wait), None if wait else 30.0)

    def __getattr__(self, name: str) -> Any:
        # values, value_at, set_value, clear_value, set_fault, fault, requests, tcp_address,
        # agent_port, points: plain thread-safe calls on the simulator
        return getattr(self.sim, name)

    def __enter__(self) -> ThreadedSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Fleet mode: a generated profile with mixed types, for benchmarks
# --------------------------------------------------------------------------------------------

# (type, order, scale, unit, signal, registers): cycles through the common encodings so a
# benchmark exercises each decoder path, including negative int16 and 32-bit words that both move.
_FLEET_CYCLE: tuple[tuple[str, str, float, str | None, str, int], ...] = (
    ("uint16", "ABCD", 1.0, None, "wave", 1),
    ("int16", "ABCD", 0.1, "degC", "wave", 1),
    ("float32", "ABCD", 1.0, "ug/m3", "wave", 2),
    ("float32", "CDAB", 1.0, "hPa", "wave", 2),
    ("uint32", "ABCD", 1.0, "Wh", "counter", 2),
)
_FLEET_RANGES = {("int16", 0.1): (-20.0, 45.0), ("uint16", 1.0): (0.0, 1000.0),
                 ("float32", "ABCD"): (0.0, 500.0), ("float32", "CDAB"): (950.0, 1050.0)}


def fleet_points(registers: int) -> list[SimPoint]:
    """Holding registers 0..registers-1 filled with points cycling through _FLEET_CYCLE."""
    if not 1 <= registers <= 10000:
        raise ValueError("registers must be 1..10000")
    points: list[SimPoint] = []
    address, i = 0, 0
    while address < registers:
        type_, order, scale, unit, signal_name, width = _FLEET_CYCLE[i % len(_FLEET_CYCLE)]
        if address + width > registers:      # the tail is filled with 16-bit points
            type_, order, scale, unit, signal_name, width = _FLEET_CYCLE[0]
        lo_hi = _FLEET_RANGES.get((type_, scale)) or _FLEET_RANGES.get((type_, order))
        points.append(SimPoint(
            name=f"p{address:03d}_{type_}{'_' + order.lower() if width == 2 and type_.startswith('float') else ''}",
            table="holding_register", address=address, type=type_, order=order, scale=scale, unit=unit,
            min=lo_hi[0] if lo_hi else None, max=lo_hi[1] if lo_hi else None, signal=signal_name))
        address += width
        i += 1
    return points


def fleet_profile_dict(registers: int) -> dict[str, Any]:
    """The fleet profile in the schema of config/profiles/*.yaml (drivers.modbus.profile.Profile)."""
    points = []
    for p in fleet_points(registers):
        entry: dict[str, Any] = {"name": p.name, "table": p.table, "address": p.address, "type": p.type}
        if codec.register_count(p.type) > 1:
            entry["order"] = p.order
        if p.scale != 1.0:
            entry["scale"] = p.scale
        if p.unit:
            entry["unit"] = p.unit
        if p.min is not None:
            entry["min"], entry["max"] = p.min, p.max
        points.append(entry)
    return {
        "model": f"modbus_sim fleet ({registers} registers)",
        "kind": "generic",
        "vendor": "simulator",
        "description": f"Generated by tests.hardware_sim.modbus_sim (write_fleet_profile) for benchmarks: "
                       f"{registers} holding registers of mixed types, served by --registers {registers}.",
        "addressing": "protocol",
        "points": points,
    }


def write_fleet_profile(path: str | os.PathLike, registers: int) -> Path:
    """Write the fleet profile YAML for the agent (the same points the fleet simulator serves)."""
    import yaml

    path = Path(path)
    data = fleet_profile_dict(registers)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port)) if sep else ("127.0.0.1", int(text))


def _parse_units(text: str, fleet: bool) -> list[int]:
    """``1,2,3``, ``1-10``; in fleet mode a bare number N means units 1..N."""
    text = text.strip()
    if fleet and text.isdigit():
        return list(range(1, int(text) + 1))
    units: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        units.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return units


def _parse_fault(text: str) -> tuple[int, Fault]:
    unit, sep, spec = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected UNIT=MODE[:ARG], e.g. 2=no_answer or 3=exception:2")
    try:
        return int(unit), Fault.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


_CONSOLE_HELP = """commands (one a line on stdin):
  fault UNIT MODE[:ARG]   none | no_answer | exception[:CODE] | corrupt | slow[:SECONDS]
  drop [SECONDS]          close client connections (and the port for SECONDS)
  set UNIT POINT VALUE    pin a value        clear UNIT [POINT]   back to the model
  show UNIT               print served values as JSON            help"""


async def _console_command(sim: ModbusSim, line: str) -> str:
    words = line.split()
    if not words:
        return ""
    cmd, args = words[0].lower(), words[1:]
    try:
        if cmd == "fault" and len(args) == 2:
            sim.set_fault(int(args[0]), Fault.parse(args[1]))
            return f"unit {args[0]}: {sim.fault(int(args[0]))}"
        if cmd == "drop":
            await sim.drop(float(args[0]) if args else 0.0)
            return "dropped"
        if cmd == "set" and len(args) == 3:
            try:
                value: Value = json.loads(args[2])      # 180, 1.5, true
            except json.JSONDecodeError:
                value = args[2]                         # a string point
            sim.set_value(int(args[0]), args[1], value)
            return f"unit {args[0]}: {args[1]} = {sim.values(int(args[0]))[args[1]]}"
        if cmd == "clear" and args:
            sim.clear_value(int(args[0]), args[1] if len(args) > 1 else None)
            return "cleared"
        if cmd == "show" and len(args) == 1:
            return json.dumps(sim.values(int(args[0])))
        if cmd == "help":
            return _CONSOLE_HELP
    except (ValueError, KeyError) as exc:
        return f"error: {exc!r}"
    return "error: unknown command; type help"


def _build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tests.hardware_sim.modbus_sim",
        description="Modbus device simulator: a profile for several unit ids over TCP and/or RTU.",
        epilog=_CONSOLE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tcp", metavar="HOST:PORT", help="serve Modbus TCP here (port 0: any free port)")
    ap.add_argument("--rtu-pty", metavar="PATH",
                    help="make a socat pty pair and serve RTU on it; the agent opens PATH")
    ap.add_argument("--serial", metavar="PORT", help="serve RTU on an existing serial port")
    ap.add_argument("--baudrate", type=int, default=9600)
    ap.add_argument("--units", default="1", help="unit ids: 1,2,3 or 1-10 (fleet mode: a count)")
    ap.add_argument("--profile", default=None, help="profile name or .yaml path (default air_monitor_rs485)")
    ap.add_argument("--profile-dir", action="append", default=None, help="where profiles are (repeatable)")
    ap.add_argument("--registers", type=int, default=None,
                    help="fleet mode: serve this many generated holding registers per unit")
    ap.add_argument("--write-profile", metavar="PATH", help="fleet mode: write the generated profile YAML here")
    ap.add_argument("--fault", action="append", type=_parse_fault, default=[], metavar="UNIT=MODE[:ARG]",
                    help="initial fault, e.g. 2=no_answer, 3=exception:2, 4=slow:1.5, 5=corrupt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict-gaps", action="store_true", help="unmapped registers between points answer 0x02")
    return ap


async def _run_cli(args: argparse.Namespace) -> None:
    fleet = args.registers is not None
    units = _parse_units(args.units, fleet)
    common: dict[str, Any] = dict(tcp=args.tcp, serial=args.serial, rtu_pty=args.rtu_pty,
                                  baudrate=args.baudrate, seed=args.seed, strict_gaps=args.strict_gaps)
    if fleet:
        if args.write_profile:
            print(f"profile written: {write_fleet_profile(args.write_profile, args.registers)}", flush=True)
        sim = ModbusSim.fleet(units, args.registers, **common)
    else:
        sim = ModbusSim(args.profile or "air_monitor_rs485", units, profile_dirs=args.profile_dir, **common)
    for unit, fault in args.fault:
        sim.set_fault(unit, fault)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sim.start()
    try:
        where = []
        if args.tcp:
            where.append("tcp=%s:%d" % sim.tcp_address)
        if args.rtu_pty or args.serial:
            where.append(f"rtu={sim.agent_port}")
        faults = ",".join(f"{u}={sim.fault(u)}" for u in units if sim.fault(u).mode is not FaultMode.NONE)
        print(f"modbus_sim ready {' '.join(where)} units={_ranges(units)} profile={sim.profile_name}"
              + (f" faults={faults}" if faults else ""), flush=True)
        if args.rtu_pty:
            print(f"agent serial port: {sim.agent_port}", flush=True)
        console = asyncio.create_task(_console(sim))
        await stop.wait()
        console.cancel()
    finally:
        await sim.stop()


async def _console(sim: ModbusSim) -> None:
    """Steering commands from stdin. A daemon thread reads it, because a blocked readline in the
    default executor would keep asyncio.run from returning on SIGTERM."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        # EOF (e.g. started with </dev/null): keep serving, just no more commands

    threading.Thread(target=read, name="modbus-sim-console", daemon=True).start()
    while True:
        reply = await _console_command(sim, await lines.get())
        if reply:
            print(reply, flush=True)


def _ranges(units: list[int]) -> str:
    if len(units) > 3 and units == list(range(units[0], units[-1] + 1)):
        return f"{units[0]}-{units[-1]}"
    return ",".join(map(str, units))


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_arg_parser().parse_args(argv)
    if not (args.tcp or args.rtu_pty or args.serial):
        _build_arg_parser().error("give --tcp, --rtu-pty and/or --serial")
    if args.write_profile and args.registers is None:
        _build_arg_parser().error("--write-profile needs --registers (fleet mode)")
    try:
        asyncio.run(_run_cli(args))
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"modbus_sim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
