"""A data logger wired to a serial port of the gateway (RS-232, or RS-485 with one logger).

The port is opened with pyserial and read from the event loop (``add_reader`` on its
non-blocking descriptor): no thread, no polling. Answers are written the same way; if the
line cannot take them at once they are dropped and counted (the logger resends unanswered
uploads). A port that disappears (USB adapter unplugged) or fails to open is retried with
backoff. A frame that stays incomplete for ``frame_timeout`` is discarded: a serial line cannot
be "closed" on a stalled peer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import serial

from agent.core.model import DeviceSink, Reading
from agent.core.driver import Runner
from firmware_bridges.hj212.options import SerialLine
from firmware_bridges.hj212.router import Router, StreamSession
from firmware_bridges.hj212.station import Station, latest_reading

log = logging.getLogger("firmware_bridges.hj212")

READ_CHUNK = 4096


class SerialReader(Runner):
    def __init__(self, line: SerialLine, stations: list[Station], sink: DeviceSink):
        self.line = line
        self.name = f"hj212 {line.describe()}"
        self.stations = stations
        self.sink = sink
        self.router = Router(self.name, stations)
        self._port: serial.Serial | None = None
        self.dropped_answers = 0

    def stats(self) -> dict[str, dict[str, Any]]:
        listener = {**self.router.stats.as_dict(), "dropped_answers": self.dropped_answers,
                    "port_open": self._port is not None}
        return {s.id: {**s.stats.as_dict(), "listener": listener} for s in self.stations}

    async def read_point(self, device_id: str, point: str) -> Reading:
        """The last value the station uploaded (a logger pushes; it cannot be polled)."""
        return latest_reading(self.stations, device_id, point)

    async def run(self) -> None:
        now = time.monotonic()
        for station in self.stations:
            station.started = now
        failures = 0
        try:
            while True:
                try:
                    self._port = self._open()
                except (serial.SerialException, OSError) as exc:
                    failures += 1
                    error = f"cannot open {self.line.port}: {exc}"
                    self.router.stats.last_error = error
                    (log.warning if failures == 1 else log.debug)("%s: %s; retrying", self.name, error)
                    await self._idle(min(30.0, 0.5 * 2 ** failures))
                    continue
                if failures:
                    log.info("%s: port open", self.name)
                failures = 0
                try:
                    await self._serve(self._port)
                except OSError as exc:   # the device went away under us
                    self.router.stats.last_error = f"{self.line.port}: {exc.strerror or exc}"
                    log.warning("%s: %s; reopening", self.name, self.router.stats.last_error)
                finally:
                    await self.close()
                await self._idle(1.0)
        finally:
            await self.close()

    async def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                asyncio.get_running_loop().remove_reader(port.fileno())
            except (ValueError, OSError, RuntimeError):
                pass
            port.close()

    def _open(self) -> serial.Serial:
        line = self.line
        return serial.Serial(line.port, baudrate=line.baudrate, bytesize=line.bytesize, parity=line.parity,
                             stopbits=line.stopbits, timeout=0, exclusive=True)

    async def _idle(self, seconds: float) -> None:
        """Wait, still ticking the stations (stale detection goes on while the port is down)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            self._tick(time.monotonic())

    def _tick(self, now: float) -> None:
        for station in self.stations:
            station.tick(now)

    async def _serve(self, port: serial.Serial) -> None:
        loop = asyncio.get_running_loop()
        fd = port.fileno()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        session = StreamSession(self.line.port)
        tick = min(1.0, self.line.frame_timeout / 4)
        try:
            while True:
                try:
                    await asyncio.wait_for(readable.wait(), tick)
                except (TimeoutError, asyncio.TimeoutError):
                    pass
                now = time.monotonic()
                if readable.is_set():
                    readable.clear()
                    try:
                        data = os.read(fd, READ_CHUNK)
                    except BlockingIOError:
                        data = b""
                    if data:
                        reply = session.feed(data, self.router, now)
                        if reply:
                            committed = getattr(self.sink, "committed", None)
                            if committed is not None:   # answer data only once it is on disk
                                await committed()
                            self._write(fd, reply)
                if session.stalled(now, self.line.frame_timeout):
                    dropped = session.framer.reset()
                    session.partial_since = None
                    self.router.stats.timed_out += 1
                    log.warning("%s: discarded %d bytes of a frame that did not complete within %gs",
                                self.name, dropped, self.line.frame_timeout)
                self._tick(now)
        finally:
            session.close()

    def _write(self, fd: int, data: bytes) -> None:
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            self.dropped_answers += 1
            log.warning("%s: the line took %d of %d answer bytes; the rest is dropped", self.name,
                        written, len(data))
