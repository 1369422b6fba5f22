"""One runner per channel (a listening port, an outgoing connection, a UDP port or a serial port):
the transport task plus a watchdog that reports devices gone silent."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.core.config import DeviceConfig
from agent.core.model import DeviceSink
from agent.core.driver import Runner
from firmware_bridges.gb26875 import transport
from firmware_bridges.gb26875.options import Options
from firmware_bridges.gb26875.session import Channel

WATCH_INTERVAL = 1.0


class Gb26875Runner(Runner):
    def __init__(self, members: list[tuple[DeviceConfig, Options]], sink: DeviceSink):
        self.options = members[0][1]   # the transport settings of the channel's first device
        self.name = f"gb26875 {self.options.describe_channel()}"
        self.channel = Channel(self.name, members, sink)
        # the channel closes idle links by the most patient device's setting
        self.idle_timeout = max(o.idle_timeout for _, o in members)

    def stats(self) -> dict[str, dict[str, Any]]:
        return self.channel.stats_by_device()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._transport(), name=f"{self.name} transport")
            group.create_task(self._watch(), name=f"{self.name} watchdog")

    async def close(self) -> None:
        """Sockets and ports belong to the transport task and close when it is cancelled."""

    def _transport(self):
        o = self.options
        if o.listen is not None:
            return transport.serve_tcp(self.channel, o.listen, self.idle_timeout, o.reconnect)
        if o.connect is not None:
            return transport.connect_tcp(self.channel, o.connect, self.idle_timeout, o.reconnect)
        if o.udp is not None:
            return transport.serve_udp(self.channel, o.udp, o.reconnect)
        assert o.serial is not None
        return transport.serve_serial(self.channel, o.serial, o.reconnect)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            self.channel.check_silence()
