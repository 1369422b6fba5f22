"""A device family that lives outside ``drivers/`` and ``firmware_bridges/``, named in a config by its
dotted path (``driver: tests.families.counter``): a counter that counts up each poll. It adds a
point (``count``), a command (``counter.reset``) and a metrics block (``counters``), all through
its Driver, with no line of ``agent/`` knowing it exists. tests/test_plugin_boundary.py runs it
in the real agent."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from agent.core.commands import Args, CommandContext, Refused, parse_args
from agent.core.config import DeviceConfig, Strict
from agent.core.driver import DeviceInfo, Driver, PointInfo, Runner
from agent.core.model import DeviceSink, Reading, now_ms


class Options(Strict):
    start: int = 0
    step: int = Field(default=1, ge=1)


class CounterRunner(Runner):
    def __init__(self, devices: list[DeviceConfig], sink: DeviceSink):
        self.name = "counter"
        self.sink = sink
        self.devices = {d.id: (d, DRIVER.options(d)) for d in devices}
        self.values = {d.id: options.start for d, options in self.devices.values()}
        self.resets = dict.fromkeys(self.devices, 0)

    async def run(self) -> None:
        period = min(device.poll for device, _ in self.devices.values())
        while True:
            for device_id, (_, options) in self.devices.items():
                self.sink.readings(device_id, [Reading("count", self.values[device_id], None, now_ms())])
                self.values[device_id] += options.step
            await asyncio.sleep(period)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {d: {"count": self.values[d], "resets": self.resets[d], "errors": 0} for d in self.devices}

    async def read_point(self, device_id: str, point: str) -> Reading:
        if point != "count":
            raise KeyError(f"{device_id} has only the point 'count'")
        return Reading("count", self.values[device_id], None, now_ms())


class ResetArgs(Args):
    device: str
    to: int = 0


async def reset(ctx: CommandContext, args: dict[str, Any]) -> dict[str, Any]:
    a = parse_args(ResetArgs, args)
    runner = ctx.runner(a.device)
    if not isinstance(runner, CounterRunner):
        raise Refused("unsupported", f"{a.device} is not a counter")
    runner.values[a.device] = a.to
    runner.resets[a.device] += 1
    return {"device": a.device, "count": a.to}


class CounterDriver(Driver):
    name = "counter"
    Options = Options

    def describe(self, device: DeviceConfig) -> DeviceInfo:
        return DeviceInfo(kind="counter", points=(PointInfo("count", None, "int32"),))

    def create_runners(self, devices: list[DeviceConfig], sink: DeviceSink) -> list[Runner]:
        return [CounterRunner(devices, sink)]

    def commands(self) -> dict[str, Any]:
        return {"counter.reset": reset}

    def metrics(self, stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {"counters": {device: {"count": s.get("count"), "resets": s.get("resets")}
                             for device, s in stats.items()}}


DRIVER = CounterDriver()
