"""GB/T 26875.3-2011 bridge: fire-alarm user information transmission devices (用户信息传输装置).

The device beside a fire panel reports fire, fault and status changes in binary frames over TCP,
UDP or a serial line. The agent plays the monitoring centre: it confirms each data frame as
clause 6.3 requires, turns a fire into a ``critical`` event (life safety in the outbox), other
status changes into events and status words into readings.

Modules, one job each:

- :mod:`.frame`      frame layout, checksum, build, strict parse, stream resync
- :mod:`.appdata`    application data units: information objects, GB 18030 texts
- :mod:`.codes`      the standard's code tables (types, bits, analog quantities)
- :mod:`.mapping`    objects -> readings and events (transitions, de-duplication, point names)
- :mod:`.session`    routing to devices, confirm/deny, counters, online watch; one link's session
- :mod:`.runner`     one runner per channel, on the transport kit (:mod:`agent.core.transport`:
                     TCP server/client, UDP, serial, their limits and backoff)
- :mod:`.options`    the device entry's keys

See README.md beside this file for technicians.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.core.config import ConfigError
from agent.core.driver import DeviceInfo, Driver, PointInfo, Runner
from agent.core.hexbytes import parse_hex
from firmware_bridges.gb26875 import appdata, frame
from firmware_bridges.gb26875.mapping import COUNT_POINTS, DEVICE_POINTS, SYSTEM_POINTS, system_id
from firmware_bridges.gb26875.options import Options

if TYPE_CHECKING:
    from agent.core.config import DeviceConfig
    from agent.core.model import DeviceSink


def _point_type(name: str, bit: int | None) -> str:
    return "uint16" if bit is None else "bool"


class Gb26875Driver(Driver):
    name = "gb26875"
    polled = False   # stations and panels push their frames
    Options = Options

    def describe(self, device: "DeviceConfig") -> DeviceInfo:
        """The device's own points and those of each system named in ``systems``; component points
        appear as components report (bounded by max_component_points) and are not listed."""
        options = self.options(device)
        points = [PointInfo(f"device.{name}", None, "uint8" if bit is None else "bool")
                  for name, bit in DEVICE_POINTS]
        points.append(PointInfo("device.clock_offset_s", "s", "float"))
        for system_type, address in options.systems:
            sid = system_id(system_type, address)
            points += [PointInfo(f"{sid}.{name}", None, _point_type(name, bit)) for name, bit in SYSTEM_POINTS]
            points += [PointInfo(f"{sid}.{name}", None, "int") for name, _ in COUNT_POINTS]
        return DeviceInfo(kind="fire_panel", points=tuple(points))

    def create_runners(self, devices: list["DeviceConfig"], sink: "DeviceSink") -> list[Runner]:
        from firmware_bridges.gb26875.runner import Gb26875Runner   # late: asyncio transports

        problems = self.validate_devices(devices)
        if problems:
            raise ConfigError(problems)
        return [Gb26875Runner(members, sink) for members in self._channels(devices).values()]

    def _channels(self, devices: list["DeviceConfig"]) -> dict[tuple[str, ...], list[tuple["DeviceConfig", Options]]]:
        channels: dict[tuple[str, ...], list[tuple[DeviceConfig, Options]]] = {}
        for device in devices:
            options = self.options(device)
            channels.setdefault(options.channel_key, []).append((device, options))
        return channels

    def validate_devices(self, devices: list["DeviceConfig"]) -> list[str]:
        """Devices sharing a port must be told apart by address, and must agree on the port."""
        problems = []
        for members in self._channels(devices).values():
            first_device, first = members[0]
            if len(members) > 1:
                addresses: dict[int, str] = {}
                for device, options in members:
                    if options.address is None:
                        problems.append(f"devices {', '.join(d.id for d, _ in members)} share "
                                        f"{first.describe_channel()}: each needs its 'address' so frames "
                                        f"can be told apart ({device.id} has none)")
                        break
                    if options.address in addresses:
                        problems.append(f"devices {addresses[options.address]} and {device.id} both have "
                                        f"address {options.address} on {first.describe_channel()}")
                    addresses.setdefault(options.address, device.id)
            for device, options in members[1:]:
                if options.describe_channel() != first.describe_channel():
                    problems.append(f"devices {first_device.id} and {device.id} share a port but set "
                                    f"{first.describe_channel()} and {options.describe_channel()}")
        return problems

    def decode(self, text: str) -> dict[str, Any]:
        """A frame pasted as hex ('40 40 01 00 ...', with or without spaces) as a dict."""
        data = parse_hex(text)
        decoded = frame.parse(data)
        length = len(decoded.app_data)
        out: dict[str, Any] = {
            "serial": decoded.serial,
            "version": {"main": decoded.version[0], "user": decoded.version[1]},
            "time": frame.time_label_text(decoded.time_label),
            "time_raw": decoded.time_label.hex(" "),
            "source": _address(decoded.source),
            "destination": _address(decoded.destination),
            "length": length,
            "command": decoded.command,
            "command_name": decoded.command_name,
            "checksum": f"{data[frame.HEADER_LEN + length]:#04x}",
            "app_data": None,
        }
        if decoded.app_data:
            try:
                unit = appdata.parse(decoded.app_data, strict=True)
            except appdata.AppDataError as exc:
                offset = frame.HEADER_LEN + exc.offset
                raise frame.FrameError(f"application data (type {decoded.app_data[0]}): {exc}", offset) from None
            out["app_data"] = appdata.unit_dict(unit)
        return out


def _address(value: int) -> dict[str, Any]:
    return {"value": value, "hex": f"{value:#014x}", "wire": frame.address_wire(value)}


DRIVER = Gb26875Driver()
