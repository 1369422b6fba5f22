"""The retrofit path: lamp sensors and the preempt input wired to a Modbus digital I/O module.

Nothing Modbus is written here. The Modbus driver's own bus runner polls the module (its client,
lock, fixed-rate schedule, backoff and offline detection), with the module's profile
(``config/profiles/signal_io_module.yaml`` by default) narrowed to the points this controller
needs. This layer only turns its readings into phase states (:class:`LampDecoder`) and a preempt
request into a coil write (``BusRunner.write_point``).

The module cannot see the controller's own preempt status, so ``preempt`` here is the coil as
read back from the module (what the agent is asking for); whether the controller honours it shows
in the phase colours.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.core.clock import SYSTEM, Clock
from agent.core.config import DeviceConfig
from agent.core.model import Event, Reading
from drivers.modbus import bus as modbus_bus
from drivers.modbus.options import Options as ModbusOptions
from firmware_bridges.signal_controller.errors import NoAnswer, Refused
from firmware_bridges.signal_controller.polling import StateCallback, StatusCallback
from firmware_bridges.signal_controller.options import Options
from firmware_bridges.signal_controller.phases import ControllerStatus, LampDecoder

log = logging.getLogger("firmware_bridges.signal_controller")


class _BusSink:
    """The DeviceSink the Modbus bus runner reports to: readings become phase states here."""

    def __init__(self, link: "ModbusIoLink"):
        self.link = link

    def readings(self, device_id: str, readings: list[Reading]) -> None:
        self.link._readings(readings)

    def event(self, device_id: str, event: Event) -> None:   # the bus runner sends none; keep the protocol
        pass

    def device_state(self, device_id: str, online: bool, error: str | None = None) -> None:
        if self.link._on_state is not None:
            self.link._on_state(online, error)


class ModbusIoLink:
    """One I/O module (one unit on one bus) serving one signal controller."""

    def __init__(self, device: DeviceConfig, options: Options, *, clock: Clock = SYSTEM):
        assert options.profile is not None and options.unit is not None
        self.device_id = device.id
        self.clock = clock
        self.phases = list(options.phases)
        self.peds = options.peds
        self.decoder = LampDecoder(self.phases, self.peds)
        self._lamp_points = LampDecoder.point_names(self.phases, self.peds)
        self.coils = ({address: options.preempt_coil_name(address) for address in options.priority.preempts.values()}
                      if options.priority else {})
        modbus_options = ModbusOptions.model_validate({
            "connection": options.connection, "unit": options.unit, "profile": options.profile,
            "points": self._lamp_points + sorted(set(self.coils.values())),
            "backoff": options.backoff, "offline_after": options.offline_after})
        self.describe = f"modbus {options.connection.describe()} unit {options.unit}"
        self.bus = modbus_bus.BusRunner(options.connection, [(device, modbus_options)], _BusSink(self), clock=clock)
        self._on_status: StatusCallback | None = None
        self._on_state: StateCallback | None = None

    @property
    def online(self) -> bool | None:
        return self.bus.devices[self.device_id].stats.online

    @property
    def stats(self) -> Any:
        return self.bus.devices[self.device_id].stats

    def _readings(self, readings: list[Reading]) -> None:
        values = {r.point: r.value for r in readings if r.q == "good"}
        if not all(name in values for name in self._lamp_points):
            # a poll cut short (the module stopped answering mid-poll, or refused a read): the
            # bus runner reports the device state; half a picture of the lamps is not published
            return
        vehicles, peds = self.decoder.decode(values, self.clock.monotonic())
        status = ControllerStatus(vehicles, peds, t=max(r.t for r in readings))
        if self.coils:
            status.preempt = any(bool(values.get(name)) for name in self.coils.values())
        if self._on_status is not None:
            self._on_status(status)

    async def set_preempt(self, address: int, on: bool) -> None:
        try:
            await self.bus.write_point(self.device_id, self.coils[address], on)
        except modbus_bus.Refused as exc:
            raise Refused(str(exc)) from None
        except modbus_bus.CommandError as exc:   # NoAnswer, LinkDown
            raise NoAnswer(str(exc)) from None

    async def run(self, on_status: StatusCallback, on_state: StateCallback) -> None:
        self._on_status, self._on_state = on_status, on_state
        await self.bus.run()

    async def close(self) -> None:
        await self.bus.close()
