"""Modbus TCP/RTU driver: polls devices described by register-map profiles.

Modules, one job each:

- :mod:`.codec`    registers <-> values (types, word/byte orders, scale/offset), compiled decoders
- :mod:`.profile`  the profile schema (``config/profiles/*.yaml``) and its loader
- :mod:`.plan`     points -> as few read requests as possible
- :mod:`.options`  the device entry's keys (connection, unit, profile, points, backoff)
- :mod:`.device`   one device's schedule, backoff, counters and readings
- :mod:`.bus`      one runner per bus: the pymodbus client, the lock, the scheduler, commands

See README.md beside this file for technicians.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core.config import ConfigError
from agent.core.driver import DeviceInfo, Driver, PointInfo, Runner
from drivers.modbus.options import Options, RtuConnection

if TYPE_CHECKING:
    from agent.core.config import DeviceConfig
    from agent.core.model import DeviceSink


class ModbusDriver(Driver):
    name = "modbus"
    Options = Options

    def describe(self, device: "DeviceConfig") -> DeviceInfo:
        options = self.options(device)
        return DeviceInfo(
            kind=options.profile.kind,
            points=tuple(PointInfo(p.name, p.unit, p.type, p.writable) for p in options.selected_points()),
        )

    def create_runners(self, devices: list["DeviceConfig"], sink: "DeviceSink") -> list[Runner]:
        """One runner per bus: devices on the same TCP host:port or serial port share it."""
        from drivers.modbus.bus import BusRunner   # late: pymodbus is only needed when running

        buses: dict[tuple[str, ...], list[tuple[DeviceConfig, Options]]] = {}
        for device in devices:
            options = self.options(device)
            buses.setdefault(options.connection.bus_key, []).append((device, options))
        problems = self.validate_devices(devices)
        if problems:
            raise ConfigError(problems)
        return [BusRunner(members[0][1].connection, members, sink) for members in buses.values()]

    def validate_devices(self, devices: list["DeviceConfig"]) -> list[str]:
        buses: dict[tuple[str, ...], list[tuple[DeviceConfig, Options]]] = {}
        for device in devices:
            options = self.options(device)
            buses.setdefault(options.connection.bus_key, []).append((device, options))
        problems = []
        for members in buses.values():
            problems += _bus_conflicts(members)
        return problems


def _bus_conflicts(members: list[tuple["DeviceConfig", Options]]) -> list[str]:
    """Devices on one bus must agree on the line settings and must not share a unit id."""
    problems = []
    first_device, first = members[0]
    units: dict[int, str] = {}
    for device, options in members:
        connection = options.connection
        if (isinstance(connection, RtuConnection) and isinstance(first.connection, RtuConnection)
                and connection.line_settings != first.connection.line_settings):
            problems.append(f"devices {first_device.id} and {device.id} share {connection.port} but set "
                            f"{first.connection.describe()} and {connection.describe()}: one bus has one speed")
        if options.unit in units:
            problems.append(f"devices {units[options.unit]} and {device.id} are both unit {options.unit} "
                            f"on {connection.describe()}")
        units.setdefault(options.unit, device.id)
    return problems


DRIVER = ModbusDriver()
