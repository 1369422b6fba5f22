"""Decoded information objects -> readings and events, for one transmission device.

Events come from *transitions* of remembered status words, so a status the device repeats (a
retransmission whose confirm was lost, a periodic status report) raises nothing new, while a
fire after a reset is new again. On top of that, a frame identical to one seen within
``dedupe_window`` (same serial number, command and application data: what a device re-sends when
our confirm was lost) is a duplicate: it produces no readings, no operation events and no
clearing transitions; it can still raise a fire the state does not hold (never drop a new fire:
a device whose serial numbers restarted after a reconnect and that has no clock sends frames
indistinguishable from a retransmission).

What is remembered is bounded by the config: the status of at most ``max_systems`` systems and of
at most ``max_components`` components (the least recently seen quiet one is forgotten first, one
in fire or fault only when all are active). The objects of a system beyond ``max_systems`` still
raise their events, against a state of nothing (a fire is never dropped; a repeated one is
reported again), but nothing of it is kept; they are counted in ``systems_dropped``. No record
costs more for what is remembered: a reset visits only the active components (each made active
by a record of its own), the counts per system are kept as statuses change, and the undo of a
frame the agent could not take replays that frame's changes backwards instead of copying the state.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.core.model import Event, Reading, Severity
from firmware_bridges.gb26875 import codes
from firmware_bridges.gb26875.appdata import (
    AnalogValue, AppData, ClockTime, ComponentStatus, DeviceStatus, Operation, SystemStatus, component_id,
)
from firmware_bridges.gb26875.frame import Frame, decode_time, time_label_text
from firmware_bridges.gb26875.options import Options

MAX_SYSTEMS = 64   # systems with readings (max_systems bounds those whose state is kept); more is a misbehaving device
ACTIVE = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 8)   # fire, fault, shielded, supervisory, power
NORMAL = 1 << 0            # a component after a reset: nothing active
RESET_OPERATION = 1 << 0   # operation flags (8.2.1.4, 8.2.1.9)

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
_COUNT_BITS = tuple(bit for _, bit in COUNT_POINTS)
_FIRE_COUNT = _COUNT_BITS.index(1)
# a quiet component counts nowhere, so clearing only the active ones leaves every count right
assert all(ACTIVE >> bit & 1 for bit in _COUNT_BITS)
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


class _System:
    """What one fire-facility system last told us."""

    __slots__ = ("status", "components", "active", "counts")

    def __init__(self) -> None:
        self.status: int | None = None           # None: only its components have reported
        self.components: dict[int, int] = {}    # component address -> status word
        self.active: dict[int, None] = {}        # addresses whose status has an ACTIVE bit, least recently seen first
        self.counts = [0] * len(COUNT_POINTS)    # components with each COUNT_POINTS bit, kept as they change

    @property
    def known(self) -> bool:
        """Reported by a status of its own or by a component still remembered."""
        return self.status is not None or bool(self.components)

    @property
    def has_active(self) -> bool:
        return bool((self.status or 0) & ACTIVE or self.active)


class FireState:
    """What one device last told us, and what is new in each frame.

    Every change to the remembered state goes through a setter (``_set_device_flags``,
    ``_set_system_status``, ``_set_component``, ``_clear_components`` for a reset in bulk,
    ``_system_state`` making a system) that keeps the derived indexes in step and logs how to put
    the previous value back, so :meth:`undo` can take back one frame without a copy of the state."""

    def __init__(self, options: Options):
        self.options = options
        self._systems: dict[tuple[int, int], _System] = {}   # at most options.max_systems
        self._active_systems: set[tuple[int, int]] = set()    # what a device-level reset has to visit
        # Every remembered component, least recently seen first, split in two so that forgetting
        # the least recently seen *quiet* one is O(1): one in fire or fault is forgotten only when
        # all are active. Together at most options.max_components.
        self._quiet: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self._active: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self._device_flags: int | None = None
        self._undo_log: list[tuple[Callable[..., None], tuple[Any, ...]]] | None = []   # None while undoing
        self._undo_frame: Frame | None = None   # the frame the log belongs to
        self._system_points: set[tuple[int, int]] = set()
        self._component_points: set[str] = set()
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self.duplicates = 0
        self.points_dropped = 0
        self.systems_dropped = 0   # objects of systems beyond max_systems: events raised, state not kept

    # -- undo, for a frame the agent could not take ------------------------------------------

    def undo(self, frame: Frame) -> None:
        """Back to before the last :meth:`apply` (of ``frame``): its retransmission must raise the
        same events again. The frame's own changes are replayed backwards, so this costs what the
        frame did, not what is remembered. The order of forgetting is not all put back: the
        components the frame reported count as seen (they were), and once its retransmission is
        taken the state is as if the frame had been taken once. Counters are not put back."""
        if self._undo_frame is not frame:
            return   # the log is another frame's: this one failed before apply() began
        log, self._undo_log = self._undo_log or [], None   # the setters must not log their own undoing
        try:
            for setter, previous in reversed(log):
                setter(*previous)
        finally:
            self._undo_log = []
        self._seen.pop(self._dedupe_key(frame), None)

    def _log_undo(self, setter: Callable[..., None], *previous: Any) -> None:
        if self._undo_log is not None:
            self._undo_log.append((setter, previous))

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
        self._undo_log = []   # undo() takes back this frame only
        self._undo_frame = frame
        out = Output()
        base = {"serial": frame.serial, "address": frame.source}
        touched: set[tuple[int, int]] = set()
        every_system = False
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
                every_system |= obj.system_type is None and bool(obj.flags & RESET_OPERATION)
            elif isinstance(obj, AnalogValue):
                self._analog(obj, out, t)
            elif isinstance(obj, ClockTime):
                self._clock(obj, out, t)
        if not duplicate:
            if every_system:
                # a device-level reset speaks for every system the device reported: their counts
                # go out, once per frame however many reset records it holds (at most max_systems)
                touched.update(key for key, system in self._systems.items() if system.known)
            for key in sorted(touched):
                self._counts(key, out, t)
        return out

    def _component(self, obj: ComponentStatus, base: dict[str, Any], out: Output, t: int,
                   duplicate: bool) -> None:
        system = self._system_state((obj.system_type, obj.system_address))
        key = (obj.system_type, obj.system_address, obj.component_address)
        previous = system.components.get(obj.component_address, 0) if system is not None else 0
        status = obj.status
        if duplicate:
            # only a fire the state does not hold may come out of a re-sent frame
            if status & codes.FIRE and not previous & codes.FIRE:
                if system is not None:
                    self._remember(key, previous | codes.FIRE)
                out.events.append(self._event("fire.alarm", "critical", self._component_data(obj, base), t))
            return
        if system is not None:
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
        system = self._system_state(key)
        previous = (system.status or 0) if system is not None else 0
        status = obj.status
        data = self._system_data(obj.system_type, obj.system_address, base) | {
            "status": status, "status_bits": codes.status_names(status, codes.SYSTEM_STATUS_BITS),
            "device_time": time_label_text(obj.time, self.options.utc_offset)}
        if duplicate:
            if status & codes.FIRE and not previous & codes.FIRE:
                if system is not None:
                    self._set_system_status(key, previous | codes.FIRE)
                out.events.append(self._event("fire.alarm", "critical", {**data, "source": "system"}, t))
            return set()
        if system is not None:
            self._set_system_status(key, status)
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
                self._set_device_flags(previous | codes.FIRE)
                out.events.append(self._event("fire.alarm", "critical", data, t))
            return
        self._set_device_flags(flags)
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
        if obj.flags & RESET_OPERATION:   # whatever was active at that system (or the whole device) is over
            # at the device level only a system with something active has anything to clear (apply()
            # reports the counts of the others); after the first reset record none is left. In
            # order, so that which cleared component is forgotten first does not hang on the set's history
            keys = sorted(self._active_systems) if device_level else [(obj.system_type, obj.system_address)]
            cleared = 0
            active = False
            for key in keys:
                cleared += self._clear_components(key)
                system = self._systems.get(key)
                status = (system.status or 0) if system is not None else 0
                if status & ACTIVE:
                    active = True
                    self._set_system_status(key, status & ~ACTIVE)
                touched.add(key)
            if device_level and self._device_flags and self._device_flags & codes.FIRE:
                self._set_device_flags(self._device_flags & ~codes.FIRE)
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
        system = self._systems.get(key)
        if system is None and len(self._systems) >= self.options.max_systems:
            return   # beyond max_systems: its components are not remembered, their counts unknown
        counts = system.counts if system is not None else [0] * len(COUNT_POINTS)
        sid = system_id(*key)
        out.readings += [Reading(f"{sid}.{name}", count, None, t) for (name, _), count in zip(COUNT_POINTS, counts)]

    # -- the remembered state: every change goes through these --------------------------------

    def _set_device_flags(self, flags: int | None) -> None:
        self._log_undo(self._set_device_flags, self._device_flags)
        self._device_flags = flags

    def _system_state(self, key: tuple[int, int]) -> _System | None:
        """The system's state, made on first sight; None beyond max_systems (its objects still
        raise their events, against a state of nothing: a fire is never dropped)."""
        system = self._systems.get(key)
        if system is None:
            if len(self._systems) >= self.options.max_systems:
                self.systems_dropped += 1
                return None
            system = self._systems[key] = _System()
            self._log_undo(self._forget_system, key)
        return system

    def _forget_system(self, key: tuple[int, int]) -> None:
        """Undoes its making; by then the rest of the undo has emptied it."""
        del self._systems[key]

    def _set_system_status(self, key: tuple[int, int], status: int | None) -> None:
        system = self._systems[key]
        self._log_undo(self._set_system_status, key, system.status)
        system.status = status
        self._note_active(key, system)

    def _set_component(self, key: tuple[int, int, int], status: int | None, least_recent: bool = False) -> None:
        """Remember a component's status as the most recently seen (None: forget it), keeping its
        system's counts and active set and the two recency orders in step. ``least_recent`` puts
        it back first in line to be forgotten: the undo of forgetting it."""
        system_key, address = key[:2], key[2]
        system = self._systems[system_key]
        previous = system.components.get(address)
        self._log_undo(self._set_component, key, previous, status is None)
        if previous is not None:
            if previous & ACTIVE:
                self._count(system, previous, -1)
                del system.active[address]
                del self._active[key]
            else:
                del self._quiet[key]
        if status is None:
            del system.components[address]
        else:
            system.components[address] = status
            order = self._quiet
            if status & ACTIVE:
                self._count(system, status, 1)
                system.active[address] = None
                order = self._active
            order[key] = None
            if least_recent:
                order.move_to_end(key, last=False)
        self._note_active(system_key, system)

    # -- helpers ----------------------------------------------------------------------------

    def _remember(self, key: tuple[int, int, int], status: int) -> None:
        self._set_component(key, status)
        if len(self._quiet) + len(self._active) > self.options.max_components:
            # forget the quietest first: a component in fire or fault only when all are active
            self._set_component(next(iter(self._quiet or self._active)), None)

    def _clear_components(self, system_key: tuple[int, int]) -> int:
        """After a reset: every component of the system is back to normal. Returns how many were
        in fire. Only the active ones are visited (a quiet one has nothing to clear, and what a
        status word holds besides the ACTIVE bits is never read); each became active by a record
        of its own, which pays for clearing it. Done in bulk, not through _set_component: a reset
        may end thousands of them in one record."""
        system = self._systems.get(system_key)
        if system is None or not system.active:
            return 0
        in_fire = system.counts[_FIRE_COUNT]
        cleared = {address: system.components[address] for address in system.active}
        self._log_undo(self._unclear_components, system_key, cleared)
        for address in cleared:
            key = system_key + (address,)
            del self._active[key]
            self._quiet[key] = None   # as seen now, by the reset (in the order they were seen before)
        system.components.update(dict.fromkeys(cleared, NORMAL))
        system.active = {}
        system.counts = [0] * len(COUNT_POINTS)
        self._note_active(system_key, system)
        return in_fire

    def _unclear_components(self, system_key: tuple[int, int], cleared: dict[int, int]) -> None:
        """Undoes _clear_components: by then the rest of the undo has put the state back to right
        after the reset, every one of ``cleared`` quiet again."""
        system = self._systems[system_key]
        for address, status in cleared.items():
            key = system_key + (address,)
            del self._quiet[key]
            self._active[key] = None
            self._count(system, status, 1)
        system.components.update(cleared)
        system.active.update(dict.fromkeys(cleared))
        self._note_active(system_key, system)

    @staticmethod
    def _count(system: _System, status: int, step: int) -> None:
        for index, bit in enumerate(_COUNT_BITS):
            if status >> bit & 1:
                system.counts[index] += step

    def _note_active(self, key: tuple[int, int], system: _System) -> None:
        if system.has_active:
            self._active_systems.add(key)
        else:
            self._active_systems.discard(key)

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
