"""GB/T 26875.3-2011 code tables: data unit types, system and component types, status and
operation bits, analog quantities. Clause numbers refer to the standard; the English names are
ours (the standard is Chinese only).

Note the three status words differ (PROTOCOLS.md lists them as one):
- system status (8.2.1.1) has bits 0..13, including main/backup power, bus fault and reset;
- component status (8.2.1.2) has bits 0..8 only, bit 8 being "power fault"; 9..15 are reserved;
- the transmission device's own status (8.2.1.8) is one byte with its own meaning per bit.
"""

from __future__ import annotations

# Application data unit type flag (8.1.1, 类型标志)
APP_TYPES: dict[int, str] = {
    1: "system_status", 2: "component_status", 3: "component_analog", 4: "system_operation",
    5: "system_software_version", 6: "system_config", 7: "component_config", 8: "system_time",
    21: "device_status", 24: "device_operation", 25: "device_software_version", 26: "device_config",
    28: "device_time",
    61: "read_system_status", 62: "read_component_status", 63: "read_component_analog",
    64: "read_system_operations", 65: "read_system_software_version", 66: "read_system_config",
    67: "read_component_config", 68: "read_system_time", 81: "read_device_status",
    84: "read_device_operations", 85: "read_device_software_version", 86: "read_device_config",
    88: "read_device_time", 89: "initialise_device", 90: "sync_device_clock", 91: "duty_check",
}


def app_type_name(code: int) -> str:
    if code in APP_TYPES:
        return APP_TYPES[code]
    return "user_defined" if code >= 128 else "reserved"


# System type (8.2.1.1, 系统类型定义表)
SYSTEM_TYPES: dict[int, str] = {
    0: "general", 1: "fire alarm system", 10: "fire linkage controller", 11: "fire hydrant system",
    12: "automatic sprinkler system", 13: "gas extinguishing system",
    14: "water spray extinguishing system (pump)", 15: "water spray extinguishing system (pressure vessel)",
    16: "foam extinguishing system", 17: "dry powder extinguishing system",
    18: "smoke control and exhaust system", 19: "fire door and shutter system", 20: "fire elevator",
    21: "fire emergency broadcast", 22: "emergency lighting and evacuation signs",
    23: "fire power supply", 24: "fire telephone",
}

# Component type (8.2.1.2, 部件类型定义表)
COMPONENT_TYPES: dict[int, str] = {
    0: "general", 1: "fire alarm control panel",
    10: "combustible gas detector", 11: "point combustible gas detector",
    12: "stand-alone combustible gas detector", 13: "line combustible gas detector",
    16: "electrical fire monitoring detector", 17: "residual current electrical fire detector",
    18: "temperature electrical fire detector",
    21: "detection loop", 22: "fire display panel", 23: "manual call point", 24: "hydrant button",
    25: "fire detector",
    30: "heat detector", 31: "point heat detector", 32: "point heat detector (S)",
    33: "point heat detector (R)", 34: "line heat detector", 35: "line heat detector (S)",
    36: "line heat detector (R)", 37: "fibre-optic heat detector",
    40: "smoke detector", 41: "point ionisation smoke detector", 42: "point photoelectric smoke detector",
    43: "line beam smoke detector", 44: "aspirating smoke detector",
    50: "multi-sensor detector", 51: "smoke and heat detector", 52: "flame and heat detector",
    53: "flame and smoke detector",
    61: "ultraviolet flame detector", 62: "infrared flame detector", 69: "flame detector",
    74: "gas detector", 78: "video fire detector", 79: "acoustic fire detector",
    81: "gas extinguishing controller", 82: "fire electrical control device",
    83: "fire control room graphic display", 84: "module", 85: "input module", 86: "output module",
    87: "input/output module", 88: "relay module",
    91: "fire pump", 92: "fire water tank", 95: "sprinkler pump", 96: "water flow indicator",
    97: "signal valve", 98: "alarm valve", 99: "pressure switch",
    101: "valve actuator", 102: "fire door", 103: "fire damper", 104: "ventilation/air conditioning",
    105: "foam pump", 106: "pipe network solenoid valve",
    111: "smoke exhaust fan", 113: "smoke exhaust fire damper", 114: "normally closed air inlet",
    115: "smoke outlet", 116: "electric smoke curtain", 117: "fire shutter controller",
    118: "fire door monitor", 121: "alarm device",
}


def type_name(table: dict[int, str], code: int) -> str:
    if code in table:
        return table[code]
    return "user-defined" if code >= 128 else f"reserved ({code})"


# Status words: bit -> name when the bit is SET. Bit 0 is "normal running" (1) / "test" (0) in the
# standard, but devices in the field leave it 0 in ordinary fire and fault reports (the public
# vendor examples send 0x0002 for a fire), so it is not named: it stays visible in the raw word.
SYSTEM_STATUS_BITS: dict[int, str] = {   # 8.2.1.1
    1: "fire", 2: "fault", 3: "shielded", 4: "supervisory", 5: "started", 6: "feedback",
    7: "delay", 8: "main_power_fault", 9: "backup_power_fault", 10: "bus_fault", 11: "manual",
    12: "config_changed", 13: "reset",
}
COMPONENT_STATUS_BITS: dict[int, str] = {   # 8.2.1.2
    1: "fire", 2: "fault", 3: "shielded", 4: "supervisory", 5: "started", 6: "feedback",
    7: "delay", 8: "power_fault",
}
DEVICE_STATUS_BITS: dict[int, str] = {   # 8.2.1.8, the transmission device itself
    1: "fire", 2: "fault", 3: "main_power_fault", 4: "backup_power_fault", 5: "channel_fault",
    6: "line_fault",
}
SYSTEM_OPERATION_BITS: dict[int, str] = {   # 8.2.1.4
    0: "reset", 1: "silence", 2: "manual_alarm", 3: "alarm_cleared", 4: "self_test",
    5: "acknowledge", 6: "test",
}
DEVICE_OPERATION_BITS: dict[int, str] = {   # 8.2.1.9
    0: "reset", 1: "silence", 2: "manual_alarm", 3: "alarm_cleared", 4: "self_test",
    5: "duty_check_answer", 6: "test",
}

FIRE = 1 << 1
RESET = 1 << 13   # system status only


def status_names(status: int, bits: dict[int, str]) -> list[str]:
    """Names of the set bits 1..15, low first; unknown set bits as 'bitN' so nothing a device
    sends is hidden. Bit 0 is left out (see above)."""
    names = []
    for bit in range(1, 16):
        if status >> bit & 1:
            names.append(bits.get(bit, f"bit{bit}"))
    return names


def operation_names(flags: int, bits: dict[int, str]) -> list[str]:
    return [bits.get(bit, f"bit{bit}") for bit in range(8) if flags >> bit & 1]


# Analog quantities (8.2.1.3): type -> (point name, unit, resolution). The value on the wire is a
# signed 16-bit count of the resolution ("最小计量单元"): 253 with type 3 is 25.3 degC.
ANALOG_TYPES: dict[int, tuple[str, str | None, float]] = {
    1: ("event_count", None, 1), 2: ("height", "m", 0.01), 3: ("temperature", "degC", 0.1),
    4: ("pressure_mpa", "MPa", 0.1), 5: ("pressure_kpa", "kPa", 0.1), 6: ("gas", "%LEL", 0.1),
    7: ("time", "s", 1), 8: ("voltage", "V", 0.1), 9: ("current", "A", 0.1), 10: ("flow", "L/s", 0.1),
    11: ("air_volume", "m3/min", 0.1), 12: ("wind_speed", "m/s", 1),
}


def analog(code: int, raw: int) -> tuple[str, str | None, float | int]:
    """(point name, unit, value) of an analog reading; unknown types keep the raw count."""
    name, unit, resolution = ANALOG_TYPES.get(code, (f"analog{code}", None, 1))
    if resolution == 1:
        return name, unit, raw
    digits = len(str(resolution).split(".")[1])
    return name, unit, round(raw * resolution, digits)   # 253 * 0.1 -> 25.3, not 25.300000000000001
