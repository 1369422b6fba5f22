"""What the HJ 212 runners share: the stations of one listen address or serial port, their router,
and the bridge's side of the transport kit (:class:`agent.core.transport.Bridge`): a
:class:`~.router.StreamSession` per link, transport problems shown on the stations, and a tick a
second for their online state. :mod:`.server` (TCP) and :mod:`.serial_line` pick the transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.core.backoff import Backoff
from agent.core.clock import SYSTEM, Clock
from agent.core.driver import Runner
from agent.core.model import DeviceSink, Reading
from agent.core.transport import Link
from firmware_bridges.hj212.router import Router, StreamSession
from firmware_bridges.hj212.station import FRAMES, Station, latest_reading

TICK_S = 1.0                                  # stale detection and split-upload expiry
RETRY = Backoff(initial=0.5, max=30.0)        # binding a taken port, reopening a lost serial port


class StationsRunner(Runner):
    guard = FRAMES

    def __init__(self, name: str, stations: list[Station], sink: DeviceSink, clock: Clock = SYSTEM):
        self.name = name
        self.stations = stations
        self.sink = sink
        self.clock = clock
        self.router = Router(name, stations)
        self.committed = getattr(sink, "committed", None)   # answers wait for it (commit-before-acknowledge)

    # -- the transport kit's Bridge -------------------------------------------------------------

    def open_session(self, link: Link) -> StreamSession:
        return StreamSession(link, self.router)

    def transport_problem(self, error: str | None) -> None:
        if error is None:
            return   # the last error stays on show: it says what happened
        self.router.stats.last_error = error
        for station in self.stations:
            station.stats.last_error = error

    # -- Runner ---------------------------------------------------------------------------------

    async def serve(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        now = self.clock.monotonic()
        for station in self.stations:
            station.started = now
        async with asyncio.TaskGroup() as group:
            group.create_task(self.serve(), name=f"{self.name} transport")
            group.create_task(self._tick(), name=f"{self.name} stations")

    def listener_stats(self) -> dict[str, Any]:
        return self.router.stats.as_dict()

    def stats(self) -> dict[str, dict[str, Any]]:
        listener = self.listener_stats()
        return {s.id: {**s.stats.as_dict(), "listener": listener} for s in self.stations}

    async def read_point(self, device_id: str, point: str) -> Reading:
        """The last value the station uploaded (a logger pushes; it cannot be polled)."""
        return latest_reading(self.stations, device_id, point)

    async def _tick(self) -> None:
        """Stations go stale while nothing arrives, also while the port is down."""
        while True:
            await self.clock.sleep(TICK_S)
            now = self.clock.monotonic()
            for station in self.stations:
                station.tick(now)
