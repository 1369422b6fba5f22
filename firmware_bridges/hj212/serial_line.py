"""A data logger wired to a serial port of the gateway (RS-232, or RS-485 with one logger).

The port is the transport kit's (:class:`agent.core.transport.SerialTransport`): opened with
pyserial and read from the event loop (no thread, no polling), reopened with backoff when it fails
to open or disappears (a USB adapter unplugged). Answers wait for the agent's commit and are
written without blocking; what the line cannot take at once is dropped and counted (the logger
resends unanswered uploads). A frame still incomplete after ``frame_timeout`` is discarded: a
serial line cannot be "closed" on a stalled peer.
"""

from __future__ import annotations

from typing import Any

from agent.core.clock import SYSTEM, Clock
from agent.core.model import DeviceSink
from agent.core.transport import Limits, SerialTransport
from firmware_bridges.hj212.options import SerialLine
from firmware_bridges.hj212.runner import RETRY, StationsRunner
from firmware_bridges.hj212.station import Station


class SerialReader(StationsRunner):
    def __init__(self, line: SerialLine, stations: list[Station], sink: DeviceSink, clock: Clock = SYSTEM):
        super().__init__(f"hj212 {line.describe()}", stations, sink, clock)
        self.line = line
        self.transport = SerialTransport(line, self, limits=Limits(frame_timeout=line.frame_timeout),
                                         backoff=RETRY, clock=clock, stats=self.router.stats)

    @property
    def dropped_answers(self) -> int:
        return self.transport.dropped_answers

    def listener_stats(self) -> dict[str, Any]:
        return {**super().listener_stats(), "dropped_answers": self.dropped_answers,
                "port_open": self.transport.is_open}

    async def serve(self) -> None:
        await self.transport.run()
