"""HJ 212-2017 (and HJ/T 212-2005) bridge: air, water and noise monitoring stations' data loggers
connect to the agent over TCP (or a serial line) and upload frames; the bridge checks them,
answers them, and hands the readings to the agent.

Modules, one job each:

- :mod:`.crc`          the standard's CRC (Appendix A), fast
- :mod:`.frame`        framing, parsing, building, stream resynchronisation, header checks
- :mod:`.codes`        pollutant codes → point names/units, command codes, data flags → quality
- :mod:`.mapping`      CP content → readings (names, units, quality, UTC time)
- :mod:`.reassembly`   split packets (PNUM/PNO) put back together
- :mod:`.replies`      answer frames (9011/9013/9014) and the clock setting (1012)
- :mod:`.station`      one station: checks, answers, ingest, online state, counters
- :mod:`.router`       routing by MN; one link's session (framer, answers) for the transport kit
- :mod:`.runner`       what both runners share: stations, their tick, the kit's Bridge
- :mod:`.server`       the TCP server runner (on :class:`agent.core.transport.TcpServer`)
- :mod:`.serial_line`  the serial port runner (on :class:`agent.core.transport.SerialTransport`)
- :mod:`.options`      the device entry's keys
- :mod:`.decode`       `edge-agent decode hj212 FRAME`

See README.md beside this file for technicians.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.core.config import ConfigError
from agent.core.driver import DeviceInfo, Driver, PointInfo, Runner
from firmware_bridges.hj212 import codes
from firmware_bridges.hj212.options import Listen, Options, SerialLine

if TYPE_CHECKING:
    from agent.core.config import DeviceConfig
    from agent.core.model import DeviceSink

AGGREGATES = tuple(f"{period}.{stat}" for period in ("minute", "hour", "day") for stat in ("avg", "min", "max"))
_WILDCARDS = {"0.0.0.0", "::", "", "*"}


class Hj212Driver(Driver):
    name = "hj212"
    polled = False   # stations and panels push their frames
    Options = Options

    def describe(self, device: "DeviceConfig") -> DeviceInfo:
        """The station's kind (from ``st``) and the points it is expected to report: its
        ``points:`` overrides and the typical codes of its system type, each with its minute,
        hour and day aggregates. Codes a frame carries beyond these are reported all the same."""
        from firmware_bridges.hj212.mapping import PointMapper

        options = self.options(device)
        st = options.st_text
        mapper = PointMapper(options.points, st)
        wanted = list(options.points) + [c for c in codes.TYPICAL.get(st or "", ()) if c not in options.points]
        points: list[PointInfo] = []
        seen: set[str] = set()
        for code in wanted:
            point = mapper.point(code, st)
            if point is None or point[0] in seen:
                continue
            name, unit, _ = point
            seen.add(name)
            points.append(PointInfo(name, unit, "float64"))
            points += [PointInfo(f"{name}.{suffix}", unit, "float64") for suffix in AGGREGATES]
        return DeviceInfo(kind=codes.KINDS.get(st or "", "env_monitor"), points=tuple(points))

    def create_runners(self, devices: list["DeviceConfig"], sink: "DeviceSink") -> list[Runner]:
        """One runner per listen address or serial port; its stations are routed by MN."""
        from firmware_bridges.hj212.serial_line import SerialReader
        from firmware_bridges.hj212.server import TcpListener
        from firmware_bridges.hj212.station import Station

        problems = self.validate_devices(devices)
        if problems:
            raise ConfigError(problems)
        groups: dict[tuple[str, ...], list[tuple[DeviceConfig, Options]]] = {}
        for device in devices:
            options = self.options(device)
            groups.setdefault(options.connection.key, []).append((device, options))
        runners: list[Runner] = []
        for members in groups.values():
            stations = [Station(device.id, options, sink,
                                options.password.reveal() if options.password else None)
                        for device, options in members]
            connection = members[0][1].connection
            if isinstance(connection, Listen):
                runners.append(TcpListener(connection, stations, sink))
            else:
                runners.append(SerialReader(connection, stations, sink))
        return runners

    def validate_devices(self, devices: list["DeviceConfig"]) -> list[str]:
        problems: list[str] = []
        by_mn: dict[str, str] = {}
        listeners: dict[tuple[str, ...], tuple[str, Listen | SerialLine]] = {}
        for device in devices:
            options = self.options(device)
            if options.mn in by_mn:
                problems.append(f"devices {by_mn[options.mn]} and {device.id} both have mn {options.mn}: "
                                "frames are routed by MN, so each station needs its own")
            by_mn.setdefault(options.mn, device.id)
            connection = options.connection
            first = listeners.get(connection.key)
            if first is None:
                listeners[connection.key] = (device.id, connection)
            elif isinstance(connection, Listen) and connection.limits != first[1].limits:   # type: ignore[union-attr]
                problems.append(f"devices {first[0]} and {device.id} share {connection.describe()} but set "
                                "different max_connections/idle_timeout/frame_timeout: one server has one set")
            elif isinstance(connection, SerialLine) and connection.line_settings != first[1].line_settings:   # type: ignore[union-attr]
                problems.append(f"devices {first[0]} and {device.id} share {connection.port} but set different "
                                "line settings: one port has one speed")
            if options.password is not None:
                try:
                    options.password.reveal()
                except ConfigError as exc:
                    problems += [f"devices {device.id}: password: {p}" for p in exc.problems]
        tcp = [(device_id, c) for device_id, c in listeners.values() if isinstance(c, Listen)]
        for i, (a_id, a) in enumerate(tcp):
            for b_id, b in tcp[i + 1:]:
                if a.port == b.port and (a.host in _WILDCARDS or b.host in _WILDCARDS
                                         or a.host.lower() == b.host.lower()):
                    problems.append(f"devices {a_id} and {b_id} listen on {a.host}:{a.port} and {b.host}:{b.port}, "
                                    "which overlap: use the same host (one shared server) or another port")
        return problems

    def decode(self, text: str) -> dict[str, Any]:
        from firmware_bridges.hj212.decode import decode
        return decode(text)


DRIVER = Hj212Driver()
