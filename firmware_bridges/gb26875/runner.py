"""One runner per channel (a listening port, an outgoing connection, a UDP port or a serial port):
the transport kit's transport for it (:mod:`agent.core.transport`) plus a watchdog that reports
devices gone silent. The runner is the kit's Bridge: a :class:`~.session.Link` per conversation,
transport problems shown on the devices.

The limits every link gets: a TCP peer silent for ``idle_timeout`` (the most patient device's
setting) is closed, as is one leaving a frame incomplete for FRAME_TIMEOUT, sending 256 KiB
without a valid frame, or not reading our answers; at most 64 connections per listening port
(the oldest without a valid frame makes room); a datagram is deframed on its own; a serial
frame that stalls is dropped. Confirms go out as soon as the frame is handed over: a critical
event is committed inside ``sink.event`` before it returns (see :mod:`.session`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.core.clock import SYSTEM, Clock
from agent.core.config import DeviceConfig
from agent.core.driver import Runner
from agent.core.model import DeviceSink
from agent.core.transport import Limits, Link as KitLink, SerialTransport, TcpDialer, TcpServer, UdpPort
from firmware_bridges.gb26875.frame import MAX_FRAME
from firmware_bridges.gb26875.options import Options
from firmware_bridges.gb26875.session import FRAMES, Channel, Link

WATCH_INTERVAL = 1.0
FRAME_TIMEOUT = 30.0   # a frame is at most 1054 bytes: a device sends it at once


class Gb26875Runner(Runner):
    guard = FRAMES

    def __init__(self, members: list[tuple[DeviceConfig, Options]], sink: DeviceSink, clock: Clock = SYSTEM):
        self.options = members[0][1]   # the transport settings of the channel's first device
        self.name = f"gb26875 {self.options.describe_channel()}"
        self.clock = clock
        self.channel = Channel(self.name, members, sink, clock)
        self.committed = getattr(sink, "committed", None)
        # the channel closes idle links by the most patient device's setting
        self.idle_timeout = max(o.idle_timeout for _, o in members)
        self.transport = self._transport()

    # -- the transport kit's Bridge -------------------------------------------------------------

    def open_session(self, link: KitLink) -> Link:
        return Link(link.peer, link.send, self.channel, announce=self.options.udp is None)

    def transport_problem(self, error: str | None) -> None:
        """The channel's last transport error on each device (None once it works again)."""
        for device in self.channel.devices:
            device.stats.last_error = error

    # -- Runner ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        return self.channel.stats_by_device()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.transport.run(), name=f"{self.name} transport")
            group.create_task(self._watch(), name=f"{self.name} watchdog")

    async def close(self) -> None:
        """Sockets and ports belong to the transport's run and close when it is cancelled."""

    def _transport(self) -> TcpServer | TcpDialer | UdpPort | SerialTransport:
        o = self.options
        # a device puts a frame or a few in one datagram: four maximal ones at most
        limits = Limits(idle_timeout=self.idle_timeout, frame_timeout=FRAME_TIMEOUT, max_datagram=4 * MAX_FRAME)
        common: dict[str, Any] = {"limits": limits, "backoff": o.reconnect, "clock": self.clock}
        if o.listen is not None:
            return TcpServer(o.listen.host, o.listen.port, self, **common)
        if o.connect is not None:
            return TcpDialer(o.connect.host, o.connect.port, self, **common)
        if o.udp is not None:
            return UdpPort(o.udp.host, o.udp.port, self, **common)
        assert o.serial is not None
        return SerialTransport(o.serial, self, **common)

    async def _watch(self) -> None:
        while True:
            await self.clock.sleep(WATCH_INTERVAL)
            self.channel.check_silence()
