"""The TCP server data loggers connect to: one runner per listen address, shared by the stations
configured on it; frames are routed by MN (:mod:`.router`).

Protection against misbehaving peers (each bounded per connection, so one cannot hurt the others):

- a connection silent for ``idle_timeout`` is closed (the logger reconnects when it has data);
- a frame must complete within ``frame_timeout`` of its first bytes: a slow-loris peer trickling
  a byte a minute is closed then, whatever its idle timer says;
- the buffer holds at most one maximal frame (:class:`~.frame.StreamFramer`); a peer that sends
  FLOOD_LIMIT bytes without one valid frame is closed;
- at most ``max_connections`` at once: when full, the oldest connection that has not delivered a
  valid frame yet makes room; if every connection has, the newcomer is turned away;
- a peer that does not read our answers (write buffer above WRITE_LIMIT) is closed;
- one callback handles at most READ_SIZE bytes: asyncio would otherwise hand a Protocol up to
  256 KiB of one read, and a peer streaming ``##1000`` patterns costs ~1.3 µs of framing a byte
  (330 ms on the event loop, found by bench/fuzz.py); the rest of a burst waits in the kernel for
  the next turn of the loop.

A peer closing its connection is normal (many loggers connect per upload) and is only counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agent.model import DeviceSink, Reading
from drivers.base import Runner
from firmware_bridges.hj212.options import Listen
from firmware_bridges.hj212.router import Router, StreamSession
from firmware_bridges.hj212.station import FRAMES, Station, latest_reading

log = logging.getLogger("firmware_bridges.hj212")

FLOOD_LIMIT = 256 * 1024
WRITE_LIMIT = 64 * 1024
READ_SIZE = 8 * 1024   # bytes per callback: ~10 ms of CPU at worst (see the module docstring)


class _Connection(asyncio.BufferedProtocol, StreamSession):
    def __init__(self, listener: "TcpListener"):
        StreamSession.__init__(self, "?")
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.opened = time.monotonic()
        self.last_rx = self.opened
        self.closing = False
        self._buffer = bytearray(READ_SIZE)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)   # the transport reads at most this much at once

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._buffer[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        self.listener._opened(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        now = time.monotonic()
        self.last_rx = now
        listener = self.listener
        try:   # the router isolates each frame already; this is the net under the connection's own code
            reply = self.feed(data, listener.router, now)
        except Exception as exc:   # noqa: BLE001 - see agent/boundary.py
            FRAMES.failed(exc, data, where=self.name)
            reply = b""
        transport = self.transport
        if transport is None:
            return
        if reply:
            self._answer_when_committed(reply)
        if self.bytes_since_frame > FLOOD_LIMIT:
            listener.router.stats.flooded += 1
            self.drop(f"{self.bytes_since_frame} bytes without a valid frame")
        elif transport.get_write_buffer_size() > WRITE_LIMIT:
            self.drop("it does not read our answers")

    def _answer_when_committed(self, reply: bytes) -> None:
        """A 9014 tells the logger its data arrived: send it only once the readings are on disk
        (the agent's next group commit), so a power cut never loses data the logger dropped.
        Answers keep their order: commit waiters resolve in the order they were taken."""
        committed = getattr(self.listener.sink, "committed", None)
        if committed is None:
            if self.transport is not None:
                self.transport.write(reply)
            return
        committed().add_done_callback(lambda done: self._write_answer(reply, done))

    def _write_answer(self, reply: bytes, done: "asyncio.Future[None]") -> None:
        if done.cancelled() or done.exception() is not None or self.closing or self.transport is None:
            return   # not committed, or the logger went: it sends again and is answered then
        self.transport.write(reply)
        if self.transport.get_write_buffer_size() > WRITE_LIMIT:
            self.drop("it does not read our answers")

    def eof_received(self) -> bool | None:
        return None     # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.close()
        self.listener._closed(self)
        self.transport = None

    def drop(self, why: str) -> None:
        """Close this connection (from our side), saying why once in the log."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        log.warning("hj212 %s: closing the connection from %s: %s", self.listener.name, self.name, why)
        self.transport.abort()


class TcpListener(Runner):
    """One TCP server (a host:port) for the stations configured on it."""

    def __init__(self, listen: Listen, stations: list[Station], sink: DeviceSink):
        self.listen = listen
        self.name = f"hj212 {listen.describe()}"
        self.stations = stations
        self.sink = sink
        self.router = Router(self.name, stations)
        self.connections: dict[_Connection, None] = {}   # in order of opening
        self._server: asyncio.base_events.Server | None = None
        self._reported_bind_error = False

    # -- Runner -------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        listener = self.router.stats.as_dict()
        return {s.id: {**s.stats.as_dict(), "listener": listener} for s in self.stations}

    async def read_point(self, device_id: str, point: str) -> Reading:
        """The last value the station uploaded (a logger pushes; it cannot be polled)."""
        return latest_reading(self.stations, device_id, point)

    @property
    def port(self) -> int | None:
        """The bound port (useful with port 0 in tests)."""
        if self._server is None or not self._server.sockets:
            return None
        return self._server.sockets[0].getsockname()[1]

    async def run(self) -> None:
        await self.start()
        tick = min(1.0, self.listen.frame_timeout / 4, self.listen.idle_timeout / 4)
        try:
            while True:
                await asyncio.sleep(tick)
                self.sweep(time.monotonic())
        finally:
            await self.close()

    async def start(self) -> None:
        """Bind, retrying with backoff while the address is taken (another program, a restart)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for station in self.stations:
            station.started = now
        failures = 0
        while self._server is None:
            try:
                self._server = await loop.create_server(lambda: _Connection(self), self.listen.host,
                                                        self.listen.port, reuse_address=True, backlog=128)
            except OSError as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** failures)
                error = f"cannot listen on {self.listen.host}:{self.listen.port}: {exc.strerror or exc}"
                self.router.stats.last_error = error
                if not self._reported_bind_error:
                    self._reported_bind_error = True
                    log.error("%s: %s; retrying", self.name, error)
                    for station in self.stations:
                        station.stats.last_error = error
                await asyncio.sleep(delay)
        log.info("%s: listening for %d station(s): %s", self.name, len(self.stations),
                 ", ".join(f"{s.id} (MN {s.mn})" for s in self.stations))

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if server is not None:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except (TimeoutError, asyncio.TimeoutError):
                pass

    # -- connections ----------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close idle and stalled connections; let the stations check staleness."""
        idle, frame_timeout = self.listen.idle_timeout, self.listen.frame_timeout
        for connection in list(self.connections):
            if connection.stalled(now, frame_timeout):
                self.router.stats.timed_out += 1
                connection.drop(f"a frame started {now - connection.partial_since:.0f}s ago and is "   # type: ignore[operator]
                                f"still incomplete (frame_timeout {frame_timeout:g}s)")
            elif now - connection.last_rx > idle:
                self.router.stats.timed_out += 1
                connection.drop(f"silent for {idle:g}s (idle_timeout)")
        for station in self.stations:
            station.tick(now)

    def _opened(self, connection: _Connection) -> None:
        stats = self.router.stats
        if len(self.connections) >= self.listen.max_connections:
            victim = next((c for c in self.connections if c.valid_frames == 0 and not c.closing), None)
            stats.refused_connections += 1
            if victim is None:
                log.warning("%s: %d connections open, all carrying data: turning %s away", self.name,
                            len(self.connections), connection.name)
                connection.closing = True
                assert connection.transport is not None
                connection.transport.abort()
                return
            victim.drop(f"max_connections ({self.listen.max_connections}) reached and it has sent no valid frame")
            self._closed(victim)
        self.connections[connection] = None
        stats.accepted += 1
        stats.connections = len(self.connections)

    def _closed(self, connection: _Connection) -> None:
        if connection in self.connections:     # an evicted connection is removed at once, not twice
            del self.connections[connection]
            self.router.stats.connections = len(self.connections)
