"""Decoded information objects -> readings and events, for one transmission device.

Events come from *transitions* of remembered status words, so a status the device repeats (a
retransmission whose confirm was lost, a periodic status report) raises nothing new, while a
fire after a reset is new again. On top of that, a frame identical to one seen within
``dedupe_window`` (same serial number, command and application data: what a device re-sends when
our confirm was lost) is a duplicate: it produces no readings, no operation events and no
clearing transitions; it can still raise a fire the state does not hold (never drop a new fire:
a device whose serial numbers restarted after a reconnect and that has no clock sends frames
indistinguishable from a retransmission).

Event types (severity):

    fire.alarm  critical     fire bit rising (component, system or the device), or a manual-alarm operation
    fire.reset  major        system reset bit rising, a fire bit falling, or a reset operation while anything was active
    fire.fault / fire.power_fault / fire.backup_power_fault / fire.bus_fault / fire.channel_fault /
    fire.line_fault / fire.supervisory   major;  fire.shielded  minor
    <any of those>_cleared   info         the bit falling
    fire.operation  info     an operation record (reset, silence, self test ...)

Point names (bounded; see README.md):

    device.status, device.fire, device.fault, device.main_power_fault, device.backup_power_fault,
    device.channel_fault, device.line_fault, device.clock_offset_s
    sys{T}-{A}.status|fire|fault|shielded|supervisory|main_power_fault|backup_power_fault|bus_fault
    sys{T}-{A}.components_fire|components_fault|components_shielded|components_supervisory
    sys{T}-{A}.c{addr:08x}.status                 at most max_component_points component points
    sys{T}-{A}.c{addr:08x}.{quantity}             analog values: temperature, pressure_mpa ...
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agent.model import Event, Reading, Severity
from firmware_bridges.gb26875 import codes
from firmware_bridges.gb26875.appdata import (
    AnalogValue, AppData, ClockTime, ComponentStatus, DeviceStatus, Operation, SystemStatus, component_id,
)
from firmware_bridges.gb26875.frame import Frame, decode_time, time_label_text
from firmware_bridges.gb26875.options import Options

MAX_SYSTEMS = 64                 # systems with readings; more is a misbehaving device
MAX_TRACKED_COMPONENTS = 20_000  # remembered component states (quiet ones are forgotten first)
ACTIVE = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 8)   # fire, fault, shielded, supervisory, power

# bit -> (event type when set, severity, event type when cleared); 8.2.1.1 / 8.2.1.2
_STATUS_EVENTS: dict[int, tuple[str, Severity, str]] = {
    1: ("fire.alarm", "critical", "fire.reset"),
    2: ("fire.fault", "major", "fire.fault_cleared"),
    3: ("fire.shielded", "minor", "fire.shielded_cleared"),
    4: ("fire.supervisory", "major", "fire.supervisory_cleared"),
    8: ("fire.power_fault", "major", "fire.power_fault_cleared"),
    9: ("fire.backup_power_fault", "major", "fire.backup_power_fault_cleared"),
    10: ("fire.bus_fault", "major", "fire.bus_fault_cleared"),
}
_COMPONENT_EVENT_BITS = (1, 2, 3, 4, 8)        # component status has no bits above 8
_SYSTEM_EVENT_BITS = (1, 2, 3, 4, 8, 9, 10)    # 13 (reset) handled on its own
# 8.2.1.8: the transmission device's own status byte
_DEVICE_EVENTS: dict[int, tuple[str, Severity, str]] = {
    1: ("fire.alarm", "critical", "fire.reset"),
    2: ("fire.fault", "major", "fire.fault_cleared"),
    3: ("fire.power_fault", "major", "fire.power_fault_cleared"),
    4: ("fire.backup_power_fault", "major", "fire.backup_power_fault_cleared"),
    5: ("fire.channel_fault", "major", "fire.channel_fault_cleared"),
    6: ("fire.line_fault", "major", "fire.line_fault_cleared"),
}
_CLEAR_SEVERITY: dict[str, Severity] = {"fire.reset": "major"}   # every other clear is info

SYSTEM_POINTS: tuple[tuple[str, int | None], ...] = (   # name, bit (None: the whole word)
    ("status", None), ("fire", 1), ("fault", 2), ("shielded", 3), ("supervisory", 4),
    ("main_power_fault", 8), ("backup_power_fault", 9), ("bus_fault", 10),
)
COUNT_POINTS: tuple[tuple[str, int], ...] = (
    ("components_fire", 1), ("components_fault", 2), ("components_shielded", 3), ("components_supervisory", 4),
)
DEVICE_POINTS: tuple[tuple[str, int | None], ...] = (
    ("status", None), ("fire", 1), ("fault", 2), ("main_power_fault", 3), ("backup_power_fault", 4),
    ("channel_fault", 5), ("line_fault", 6),
)


def system_id(system_type: int, address: int) -> str:
    return f"sys{system_type}-{address}"


def _bit_value(word: int, bit: int | None) -> int | bool:
    return word if bit is None else bool(word >> bit & 1)


@dataclass(slots=True)
class Output:
    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class FireState:
    """What one device last told us, and what is new in each frame."""

    def __init__(self, options: Options):
        self.options = options
        self._systems: dict[tuple[int, int], int] = {}
        self._components: OrderedDict[tuple[int, int, int], int] = OrderedDict()
        self._device_flags: int | None = None
        self._system_points: set[tuple[int, int]] = set()
        self._component_points: set[str] = set()
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.duplicates = 0
        self.points_dropped = 0

    # -- undo, for a frame the agent could not take ------------------------------------------

    def checkpoint(self) -> tuple[Any, ...]:
        return (dict(self._systems), OrderedDict(self._components), self._device_flags)

    def restore(self, saved: tuple[Any, ...], frame: Frame) -> None:
        """Back to before ``frame``: its retransmission must raise the same events again."""
        self._systems, self._components, self._device_flags = saved
        self._seen.pop(self._dedupe_key(frame), None)

    # -- de-duplication --------------------------------------------------------------------

    @staticmethod
    def _dedupe_key(frame: Frame) -> bytes:
        return frame.serial.to_bytes(2, "little") + bytes((frame.command,)) + frame.app_data

    def is_duplicate(self, frame: Frame, now: float | None = None) -> bool:
        """True for a frame identical (serial, command, application data) to one seen within the
        window. The header's time label is left out: some devices re-stamp a retransmission."""
        now = time.monotonic() if now is None else now
        window = self.options.dedupe_window
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= window and len(self._seen) < 4096:
                break
            del self._seen[key]
        key = self._dedupe_key(frame)
        if key in self._seen:
            self.duplicates += 1
            return True
        self._seen[key] = now
        return False

    # -- the mapping ------------------------------------------------------------------------

    def apply(self, unit: AppData, frame: Frame, *, duplicate: bool = False,
              now_ms: int | None = None) -> Output:
        t = int(time.time() * 1000) if now_ms is None else now_ms
        out = Output()
        base = {"serial": frame.serial, "address": frame.source}
        touched: set[tuple[int, int]] = set()
        for obj in unit.objects:
            if isinstance(obj, ComponentStatus):
                self._component(obj, base, out, t, duplicate)
                touched.add((obj.system_type, obj.system_address))
            elif isinstance(obj, SystemStatus):
                touched.update(self._system(obj, base, out, t, duplicate))
            elif isinstance(obj, DeviceStatus):
                self._device(obj, base, out, t, duplicate)
            elif duplicate:
                continue   # stateless records: a re-sent frame would report them twice
            elif isinstance(obj, Operation):
                touched.update(self._operation(obj, base, out, t))
            elif isinstance(obj, AnalogValue):
                self._analog(obj, out, t)
            elif isinstance(obj, ClockTime):
                self._clock(obj, out, t)
        if not duplicate:
            for key in sorted(touched):
                self._counts(key, out, t)
        return out

    def _component(self, obj: ComponentStatus, base: dict[str, Any], out: Output, t: int,
                   duplicate: bool) -> None:
        key = (obj.system_type, obj.system_address, obj.component_address)
        previous = self._components.get(key, 0)
        status = obj.status
        if duplicate:
            # only a fire the state does not hold may come out of a re-sent frame
            if status & codes.FIRE and not previous & codes.FIRE:
                self._remember(key, previous | codes.FIRE)
                out.events.append(self._event("fire.alarm", "critical", self._component_data(obj, base), t))
            return
        self._remember(key, status)
        data = None
        for bit in _COMPONENT_EVENT_BITS:
            was, now = previous >> bit & 1, status >> bit & 1
            if was == now:
                continue
            data = data or self._component_data(obj, base)
            raised, severity, cleared = _STATUS_EVENTS[bit]
            if now:
                out.events.append(self._event(raised, severity, data, t))
            else:
                out.events.append(self._event(cleared, _CLEAR_SEVERITY.get(cleared, "info"),
                                              {**data, "cause": "cleared"}, t))
        name = f"{system_id(obj.system_type, obj.system_address)}.{component_id(obj.component_address)}.status"
        if self._admit_component_point(name):
            out.readings.append(Reading(name, status, None, t))

    def _system(self, obj: SystemStatus, base: dict[str, Any], out: Output, t: int,
                duplicate: bool) -> set[tuple[int, int]]:
        key = (obj.system_type, obj.system_address)
        previous = self._systems.get(key, 0)
        status = obj.status
        data = self._system_data(obj.system_type, obj.system_address, base) | {
            "status": status, "status_bits": codes.status_names(status, codes.SYSTEM_STATUS_BITS),
            "device_time": time_label_text(obj.time, self.options.utc_offset)}
        if duplicate:
            if status & codes.FIRE and not previous & codes.FIRE:
                self._systems[key] = previous | codes.FIRE
                out.events.append(self._event("fire.alarm", "critical", {**data, "source": "system"}, t))
            return set()
        self._systems[key] = status
        touched: set[tuple[int, int]] = set()
        reset = bool(status & codes.RESET and not previous & codes.RESET)
        if reset:
            cleared = self._clear_components(key)
            touched.add(key)
            out.events.append(self._event("fire.reset", "major",
                                          {**data, "source": "system", "cause": "reset",
                                           "components_cleared": cleared}, t))
        for bit in _SYSTEM_EVENT_BITS:
            was, now = previous >> bit & 1, status >> bit & 1
            if was == now or (reset and not now):
                continue   # a reset already says everything that cleared with it
            raised, severity, cleared_type = _STATUS_EVENTS[bit]
            if now:
                out.events.append(self._event(raised, severity, {**data, "source": "system"}, t))
            else:
                out.events.append(self._event(cleared_type, _CLEAR_SEVERITY.get(cleared_type, "info"),
                                              {**data, "source": "system", "cause": "cleared"}, t))
        if self._admit_system(key):
            sid = system_id(*key)
            out.readings += [Reading(f"{sid}.{name}", _bit_value(status, bit), None, t)
                             for name, bit in SYSTEM_POINTS]
        return touched

    def _device(self, obj: DeviceStatus, base: dict[str, Any], out: Output, t: int, duplicate: bool) -> None:
        previous = self._device_flags or 0
        flags = obj.flags
        data = {**base, "source": "device", "status": flags,
                "status_bits": codes.status_names(flags, codes.DEVICE_STATUS_BITS),
                "device_time": time_label_text(obj.time, self.options.utc_offset)}
        if duplicate:
            if flags & codes.FIRE and not previous & codes.FIRE:
                self._device_flags = previous | codes.FIRE
                out.events.append(self._event("fire.alarm", "critical", data, t))
            return
        self._device_flags = flags
        for bit, (raised, severity, cleared) in _DEVICE_EVENTS.items():
            was, now = previous >> bit & 1, flags >> bit & 1
            if was != now:
                out.events.append(self._event(raised, severity, data, t) if now else
                                  self._event(cleared, _CLEAR_SEVERITY.get(cleared, "info"),
                                              {**data, "cause": "cleared"}, t))
        out.readings += [Reading(f"device.{name}", _bit_value(flags, bit), None, t) for name, bit in DEVICE_POINTS]

    def _operation(self, obj: Operation, base: dict[str, Any], out: Output, t: int) -> set[tuple[int, int]]:
        device_level = obj.system_type is None
        table = codes.DEVICE_OPERATION_BITS if device_level else codes.SYSTEM_OPERATION_BITS
        names = codes.operation_names(obj.flags, table)
        data: dict[str, Any] = {**base, "source": "operation", "operations": names, "flags": obj.flags,
                                "operator": obj.operator,
                                "device_time": time_label_text(obj.time, self.options.utc_offset)}
        if not device_level:
            data.update(self._system_data(obj.system_type, obj.system_address, {}))
        touched: set[tuple[int, int]] = set()
        if obj.flags & 1:   # reset: whatever was active at that system (or the whole device) is over
            if device_level:   # every system the device reported, by status or by its components
                keys = set(self._systems) | {k[:2] for k in self._components}
            else:
                keys = {(obj.system_type, obj.system_address)}
            cleared = 0
            active = False
            for key in keys:
                cleared += self._clear_components(key)
                if self._systems.get(key, 0) & ACTIVE:
                    active = True
                    self._systems[key] &= ~ACTIVE
                touched.add(key)
            if device_level and self._device_flags and self._device_flags & codes.FIRE:
                self._device_flags &= ~codes.FIRE
                active = True
            if cleared or active:
                out.events.append(self._event("fire.reset", "major",
                                              {**data, "cause": "reset operation", "components_cleared": cleared}, t))
        if obj.flags & 1 << 2:   # manual alarm (手动报警) entered at the panel or the device: a fire
            out.events.append(self._event("fire.alarm", "critical", {**data, "cause": "manual alarm operation"}, t))
        out.events.append(self._event("fire.operation", "info", data, t))
        return touched

    def _analog(self, obj: AnalogValue, out: Output, t: int) -> None:
        quantity, unit, value = codes.analog(obj.analog_type, obj.raw)
        name = f"{system_id(obj.system_type, obj.system_address)}.{component_id(obj.component_address)}.{quantity}"
        if self._admit_component_point(name):
            out.readings.append(Reading(name, value, unit, t))

    def _clock(self, obj: ClockTime, out: Output, t: int) -> None:
        when = decode_time(obj.time, self.options.utc_offset)
        offset = None if when is None else round(when.timestamp() - t / 1000, 1)
        prefix = "device" if obj.system_type is None else system_id(obj.system_type, obj.system_address)
        if obj.system_type is not None and not self._admit_system((obj.system_type, obj.system_address)):
            return
        out.readings.append(Reading(f"{prefix}.clock_offset_s", offset, "s", t, "good" if when else "bad"))

    def _counts(self, key: tuple[int, int], out: Output, t: int) -> None:
        if not self._admit_system(key):
            return
        sid = system_id(*key)
        statuses = [s for (st, sa, _), s in self._components.items() if (st, sa) == key]
        out.readings += [Reading(f"{sid}.{name}", sum(1 for s in statuses if s >> bit & 1), None, t)
                         for name, bit in COUNT_POINTS]

    # -- helpers ----------------------------------------------------------------------------

    def _remember(self, key: tuple[int, int, int], status: int) -> None:
        self._components[key] = status
        self._components.move_to_end(key)
        if len(self._components) > MAX_TRACKED_COMPONENTS:
            # forget the quietest first: a component in fire or fault is never forgotten here
            for old in list(self._components):
                if not self._components[old] & ACTIVE:
                    del self._components[old]
                    break
            else:
                self._components.popitem(last=False)

    def _clear_components(self, system: tuple[int, int]) -> int:
        """After a reset: every component of the system is back to normal. Returns how many were in fire."""
        in_fire = 0
        for key, status in self._components.items():
            if key[:2] == system:
                in_fire += bool(status & codes.FIRE)
                self._components[key] = 1   # normal (bit 0), nothing active
        return in_fire

    def _admit_system(self, key: tuple[int, int]) -> bool:
        if key in self._system_points:
            return True
        if len(self._system_points) >= MAX_SYSTEMS:
            self.points_dropped += 1
            return False
        self._system_points.add(key)
        return True

    def _admit_component_point(self, name: str) -> bool:
        if name in self._component_points:
            return True
        if len(self._component_points) >= self.options.max_component_points:
            self.points_dropped += 1
            return False
        self._component_points.add(name)
        return True

    def _system_data(self, system_type: int | None, address: int | None, base: dict[str, Any]) -> dict[str, Any]:
        if system_type is None or address is None:
            return dict(base)
        data = {**base, "system": system_id(system_type, address), "system_type": system_type,
                "system_type_name": codes.type_name(codes.SYSTEM_TYPES, system_type), "system_address": address}
        name = self.options.system_name(system_type, address)
        if name:
            data["system_name"] = name
        return data

    def _component_data(self, obj: ComponentStatus, base: dict[str, Any]) -> dict[str, Any]:
        return self._system_data(obj.system_type, obj.system_address, base) | {
            "source": "component",
            "component": component_id(obj.component_address), "component_address": obj.component_address,
            "component_type": obj.component_type,
            "component_type_name": codes.type_name(codes.COMPONENT_TYPES, obj.component_type),
            "description": obj.description, "status": obj.status,
            "status_bits": codes.status_names(obj.status, codes.COMPONENT_STATUS_BITS),
            "device_time": time_label_text(obj.time, self.options.utc_offset),
        }

    @staticmethod
    def _event(kind: str, severity: Severity, data: dict[str, Any], t: int) -> Event:
        return Event(kind, severity, data, t)
