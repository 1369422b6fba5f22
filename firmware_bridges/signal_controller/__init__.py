"""Traffic-signal controller bridge: phase states in, a bounded priority (preemption) request out.

Three ways to a controller, one device entry each (``protocol:``):

- ``ntcip``: NTCIP 1202 over SNMP v2c/v3 (:mod:`.ntcip`): phase status groups, preempt control;
- ``modbus_io``: a Modbus digital I/O module wired to lamp sensors and the preempt input
  (:mod:`.modbus_io`, built on the Modbus driver's bus runner and profiles);
- ``gbt20999``: GB/T 20999-2017, the Chinese controller protocol, over UDP or TCP
  (:mod:`.gbt20999`, on the transport kit): lamp groups, stages, a held stage with the
  controller's own mode and plan restored. `edge-agent decode gbt20999 HEX` decodes its frames.

Modules, one job each: :mod:`.options` (config keys), :mod:`.phases` (colours, decoding, change
detection), :mod:`.priority` (the bounded request), :mod:`.runner` (one runner per controller),
:mod:`.polling` (the poll loop), :mod:`.errors`. README.md beside this file is for technicians and for the command layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.core.config import ConfigError
from agent.core.driver import DeviceInfo, Driver, PointInfo, Runner
from firmware_bridges.signal_controller.gbt20999.options import Gbt20999Connection
from firmware_bridges.signal_controller.options import NtcipConnection, Options

if TYPE_CHECKING:
    from agent.core.config import DeviceConfig
    from agent.core.model import DeviceSink

KIND = "traffic_signal"


class SignalControllerDriver(Driver):
    name = "signal_controller"
    Options = Options

    def describe(self, device: "DeviceConfig") -> DeviceInfo:
        options = self.options(device)
        points = [PointInfo(f"phase{p}", None, "string") for p in options.phases]
        points += [PointInfo(f"ped{p}", None, "string") for p in options.peds]
        if options.priority is not None:
            points.append(PointInfo("preempt", None, "bool"))
            if options.protocol == "ntcip":
                points.append(PointInfo("preempt_state", None, "string"))
        if options.protocol == "gbt20999":
            from firmware_bridges.signal_controller.gbt20999.link import EXTRA_POINTS
            points += [PointInfo(name, unit, kind) for name, unit, kind in EXTRA_POINTS]
            for d in options.detectors:
                points += [PointInfo(f"det{d}", None, "bool"), PointInfo(f"det{d}_volume", None, "int")]
        return DeviceInfo(kind=KIND, points=tuple(points))

    def create_runners(self, devices: list["DeviceConfig"], sink: "DeviceSink") -> list[Runner]:
        """One runner per controller."""
        from firmware_bridges.signal_controller.runner import SignalRunner

        problems = self.validate_devices(devices)
        if problems:
            raise ConfigError(problems)
        runners = [SignalRunner(device, self.options(device), sink) for device in devices]
        # holds a killed run left on controllers no longer configured: said once, kept (hold_record.py)
        from firmware_bridges.signal_controller.gbt20999.hold_record import report_orphans
        report_orphans(sink.store(self.name), {r.device_id: r.link.describe for r in runners
                                               if r.options.protocol == "gbt20999"}, sink)
        return runners

    def commands(self) -> dict[str, Any]:
        from firmware_bridges.signal_controller.commands import priority
        return {"signal.priority": priority}

    def decoders(self) -> dict[str, Any]:
        from firmware_bridges.signal_controller.gbt20999.decode import decode
        return {"gbt20999": decode}

    def validate_devices(self, devices: list["DeviceConfig"]) -> list[str]:
        """Two entries for one controller (NTCIP address) or one I/O module bus are a mistake: two
        runners would fight over its preempt input (and a serial port can be opened once)."""
        seen: dict[tuple[str, ...], str] = {}
        problems = []
        for device in devices:
            options = self.options(device)
            connection = options.connection
            if isinstance(connection, NtcipConnection):
                key: tuple[str, ...] = ("ntcip", connection.host.lower(), str(connection.port))
                what = connection.describe()
            elif isinstance(connection, Gbt20999Connection):
                key, what = connection.channel_key, connection.describe()
            else:
                key = connection.bus_key
                what = f"modbus {connection.describe()}"
            if key in seen:
                problems.append(f"devices {seen[key]} and {device.id} both use {what}: one controller (or one "
                                "I/O module bus) per signal_controller entry")
            seen.setdefault(key, device.id)
            if isinstance(connection, Gbt20999Connection) and connection.transport == "udp" and connection.local_port:
                port_key = ("gbt20999-local", str(connection.local_port))
                if port_key in seen:
                    problems.append(f"devices {seen[port_key]} and {device.id} both listen on UDP port "
                                    f"{connection.local_port}: give each controller its own local_port (and set "
                                    "that centre port in the controller)")
                seen.setdefault(port_key, device.id)
        return problems


DRIVER = SignalControllerDriver()
