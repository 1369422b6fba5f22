"""A serial port for a bridge (RS-232, or RS-485 with one talker), through pyserial.

pyserial sets the line up (speed, parity, exclusive use); the event loop then watches the port's
non-blocking descriptor (``add_reader``): no thread, no polling. Answers are written the same way;
what the line cannot take at once is dropped and counted (a device resends what was not
answered). A port that fails to open or goes away (a USB adapter unplugged, EIO) is reopened with
backoff. A serial line cannot be closed on a stalled peer, so a frame still incomplete after
``frame_timeout`` is thrown away instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from agent.core.backoff import Backoff, Retry
from agent.core.clock import SYSTEM, Clock
from agent.core.transport.contract import Bridge
from agent.core.transport.limits import Limits, TransportStats
from agent.core.transport.link import LinkBase, until_lost
from agent.core.transport.retry import keep_trying
from agent.core.transport.serial_line import SerialLine

if TYPE_CHECKING:
    import serial

log = logging.getLogger("agent.core.transport")


class SerialLink(LinkBase):
    def __init__(self, owner: "SerialTransport", fd: int):
        super().__init__(owner.bridge, owner.line.port, owner.limits, owner.clock)
        self.owner = owner
        self.fd = fd
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def readable(self) -> None:
        try:
            data = os.read(self.fd, self.limits.read_chunk)
        except BlockingIOError:
            return
        except OSError as exc:   # EIO: the adapter was unplugged, or a pty's other end closed
            self._lose(exc.strerror or str(exc))
            return
        if not data:
            self._lose("end of file")
            return
        self.received(data)

    def _write(self, data: bytes) -> None:
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            self.owner.dropped_answers += 1
            log.warning("%s: the line took %d of %d answer bytes; the rest is dropped", self.bridge.name,
                        written, len(data))

    def close(self, why: str) -> None:
        if not self.closing:
            log.warning("%s: reopening %s: %s", self.bridge.name, self.peer, why)
            self._lose(why)

    def _drop(self) -> None:
        self._lose("closed")

    def _lose(self, why: str) -> None:
        self.closing = True
        if not self.lost.done():
            self.lost.set_result(why)


class SerialTransport:
    def __init__(self, line: SerialLine, bridge: Bridge, *, limits: Limits = Limits(),
                 backoff: Backoff = Backoff(initial=0.5), clock: Clock = SYSTEM,
                 stats: TransportStats | None = None):
        self.line = line
        self.bridge = bridge
        self.limits = limits
        self.backoff = backoff
        self.clock = clock
        self.stats = stats if stats is not None else TransportStats()
        self.link: SerialLink | None = None
        self.dropped_answers = 0     # answers the line could not take whole

    @property
    def is_open(self) -> bool:
        return self.link is not None

    @property
    def links(self) -> list[SerialLink]:
        return [self.link] if self.link is not None else []

    async def run(self) -> None:
        import serial   # late: only serial devices need pyserial

        retry = Retry(self.backoff)

        async def open_port() -> serial.Serial:
            return self.line.open()

        while True:
            port = await keep_trying(open_port, bridge=self.bridge, what=f"cannot open {self.line.port}",
                                     retry=retry, clock=self.clock,
                                     errors=(serial.SerialException, OSError, ValueError))
            try:
                link = await self._serve(port)
            finally:
                with contextlib.suppress(Exception):
                    port.close()
            if link.valid_frames or self.clock.monotonic() - link.opened >= self.backoff.max:
                retry.reset()   # it worked for a while: reopen quickly
            await self.clock.sleep(retry.next_delay())

    async def _serve(self, port: "serial.Serial") -> SerialLink:
        loop = asyncio.get_running_loop()
        link = SerialLink(self, port.fileno())
        if not link.open_session():
            await self.clock.sleep(self.limits.tick)
            return link
        self.link = link
        self.stats.accepted += 1
        self.stats.connections = 1
        loop.add_reader(link.fd, link.readable)
        log.info("%s: %s open", self.bridge.name, self.line.port)
        try:
            await until_lost(link.lost, self.clock, self.limits.tick, lambda: self._sweep(link))
            why = link.lost.result()
            self.bridge.transport_problem(f"{self.line.port}: {why}")
            log.warning("%s: %s lost (%s); reopening", self.bridge.name, self.line.port, why)
        finally:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                loop.remove_reader(link.fd)
            link.ended()
            self.link = None
            self.stats.connections = 0
        return link

    def _sweep(self, link: SerialLink) -> None:
        now = self.clock.monotonic()
        if link.stalled(now):
            dropped = link.discard_partial(f"a frame did not complete within {self.limits.frame_timeout:g}s")
            self.stats.timed_out += 1
            log.warning("%s: discarded %d bytes of a frame that did not complete within %gs",
                        self.bridge.name, dropped, self.limits.frame_timeout)
