"""Byte transports for the bridge: TCP server, TCP client, UDP and serial, all on the event loop.

Each one cuts its bytes into frames with a :class:`Deframer` per link and hands them to the
:class:`Channel`. Rules that keep one peer from hurting another:

- every TCP connection has its own task; a peer that sends nothing for ``idle_timeout`` is closed,
  and one that does not read our answers (its window full) is closed after WRITE_TIMEOUT;
- reads are at most READ_SIZE bytes and the deframer never keeps more than one maximum frame
  besides, so a peer streaming garbage costs bounded memory (and bounded time on the event loop:
  the deframer spends ~3 µs on each byte of '@' noise);
- a UDP datagram longer than MAX_DATAGRAM is dropped unread and counted: a device sends a frame
  (at most 1054 bytes) a datagram, a few at most, and a 64 KiB datagram of '@@@@' held the event
  loop for 200 ms in the deframer (found by bench/fuzz.py);
- at most MAX_CONNECTIONS connections per listening port; more are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from typing import Any

from firmware_bridges.gb26875.frame import MAX_FRAME, Deframer
from firmware_bridges.gb26875.options import Backoff, ConnectEndpoint, Endpoint, SerialPort
from firmware_bridges.gb26875.session import Channel, Link

log = logging.getLogger("firmware_bridges.gb26875")

READ_SIZE = 4096
MAX_DATAGRAM = 4 * MAX_FRAME
WRITE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
MAX_CONNECTIONS = 64


class BackoffTimer:
    """Exponential backoff with jitter (DESIGN.md: a device that keeps failing is not hammered)."""

    def __init__(self, policy: Backoff):
        self.policy = policy
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        delay = min(self.policy.max, self.policy.initial * 2 ** (self.failures - 1))
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


def _set_error(channel: Channel, message: str | None) -> None:
    """The channel's last transport error on each device (None once it works again)."""
    for device in channel.devices:
        device.stats.last_error = message


async def _stream(channel: Channel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  idle_timeout: float) -> None:
    """Serve one TCP connection until it closes, goes silent, or stops reading."""
    peer_info = writer.get_extra_info("peername")
    peer = f"{peer_info[0]}:{peer_info[1]}" if isinstance(peer_info, tuple) else str(peer_info)
    link = Link(peer, writer.write)
    deframer = Deframer()
    channel.stats.links.add(link)
    channel.stats.connections += 1
    log.info("%s: %s connected", channel.name, peer)
    reason = "closed by the peer"
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), idle_timeout)
            except TimeoutError:
                reason = f"silent for {idle_timeout:g}s"
                break
            if not data:
                break
            channel.receive(deframer, data, link)
            if writer.transport.get_write_buffer_size():
                try:
                    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                except TimeoutError:
                    reason = f"not reading our answers for {WRITE_TIMEOUT:g}s"
                    break
    except (ConnectionError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
    finally:
        channel.stats.links.discard(link)
        if deframer.buffered:
            log.debug("%s: %s left %d bytes of an unfinished frame", channel.name, peer, deframer.buffered)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        log.info("%s: %s disconnected (%s)", channel.name, peer, reason)


async def serve_tcp(channel: Channel, endpoint: Endpoint, idle_timeout: float, backoff: Backoff) -> None:
    """Listen for devices (the usual arrangement: the device dials the centre)."""
    timer = BackoffTimer(backoff)
    tasks: set[asyncio.Task[None]] = set()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(channel.stats.links) >= MAX_CONNECTIONS:
            log.warning("%s: %d connections already; refusing %s", channel.name, MAX_CONNECTIONS,
                        writer.get_extra_info("peername"))
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        try:
            await _stream(channel, reader, writer, idle_timeout)
        except asyncio.CancelledError:
            pass   # the listener is closing (agent stopping); Python 3.11's start_server logs a handler
                   # that ends cancelled as an error, with a traceback
        finally:
            if task is not None:
                tasks.discard(task)

    while True:
        try:
            server = await asyncio.start_server(on_connection, endpoint.host, endpoint.port, reuse_address=True)
        except OSError as exc:
            delay = timer.next_delay()
            _set_error(channel, f"cannot listen on {endpoint.host}:{endpoint.port}: {exc.strerror or exc}")
            log.error("%s: cannot listen on %s:%d (%s); retrying in %.1fs", channel.name, endpoint.host,
                      endpoint.port, exc.strerror or exc, delay)
            await asyncio.sleep(delay)
            continue
        timer.reset()
        _set_error(channel, None)
        log.info("%s: listening", channel.name)
        try:
            async with server:
                await server.serve_forever()
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def connect_tcp(channel: Channel, endpoint: ConnectEndpoint, idle_timeout: float, backoff: Backoff) -> None:
    """Dial the device (or a serial server in front of it) and keep the connection up."""
    timer = BackoffTimer(backoff)
    while True:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(endpoint.host, endpoint.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            delay = timer.next_delay()
            message = f"cannot connect to {endpoint.host}:{endpoint.port}: {getattr(exc, 'strerror', None) or exc or 'timeout'}"
            _set_error(channel, message)
            log.warning("%s: %s; retrying in %.1fs", channel.name, message, delay)
            await asyncio.sleep(delay)
            continue
        _set_error(channel, None)
        before = sum(d.stats.frames for d in channel.devices)
        await _stream(channel, reader, writer, idle_timeout)
        if sum(d.stats.frames for d in channel.devices) > before:
            timer.reset()   # it worked for a while: come back quickly
        await asyncio.sleep(timer.next_delay())


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, channel: Channel):
        self.channel = channel
        self.transport: asyncio.DatagramTransport | None = None
        self.links: dict[Any, Link] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        link = self.links.get(addr)
        if link is None:
            if len(self.links) >= 256:   # bounded: forget the oldest peer
                self.links.pop(next(iter(self.links)))
            transport = self.transport
            assert transport is not None
            link = self.links[addr] = Link(f"{addr[0]}:{addr[1]}", lambda b, a=addr: transport.sendto(b, a))
        if len(data) > MAX_DATAGRAM:
            self._bad(link, f"a datagram of {len(data)} bytes (more than {MAX_DATAGRAM}) was dropped unread")
            return
        # one datagram carries whole frames (maybe several); a fragment left over is garbage
        deframer = Deframer()
        self.channel.receive(deframer, data, link)
        if deframer.buffered:
            self._bad(link, "a datagram ended inside a frame")

    def _bad(self, link: Link, what: str) -> None:
        device = link.device or (self.channel.devices[0] if len(self.channel.devices) == 1 else None)
        if device is not None:
            device.stats.bad_frames += 1
            device.stats.last_error = f"{link.peer}: {what}"

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self.channel.name, exc)


async def serve_udp(channel: Channel, endpoint: Endpoint, backoff: Backoff) -> None:
    timer = BackoffTimer(backoff)
    loop = asyncio.get_running_loop()
    while True:
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(channel), local_addr=(endpoint.host, endpoint.port))
        except OSError as exc:
            delay = timer.next_delay()
            _set_error(channel, f"cannot bind udp {endpoint.host}:{endpoint.port}: {exc.strerror or exc}")
            log.error("%s: cannot bind (%s); retrying in %.1fs", channel.name, exc.strerror or exc, delay)
            await asyncio.sleep(delay)
            continue
        _set_error(channel, None)
        log.info("%s: listening", channel.name)
        try:
            await asyncio.Future()   # until cancelled
        finally:
            transport.close()


async def serve_serial(channel: Channel, port: SerialPort, backoff: Backoff) -> None:
    """Read a serial port without a thread: pyserial sets the line up, the loop watches its fd."""
    import serial   # late: only serial devices need it

    timer = BackoffTimer(backoff)
    loop = asyncio.get_running_loop()
    while True:
        try:
            ser = serial.Serial(port.port, baudrate=port.baudrate, bytesize=port.bytesize,
                                parity=port.parity, stopbits=port.stopbits, timeout=0, write_timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            delay = timer.next_delay()
            _set_error(channel, f"cannot open {port.port}: {exc}")
            log.warning("%s: cannot open %s (%s); retrying in %.1fs", channel.name, port.port, exc, delay)
            await asyncio.sleep(delay)
            continue
        timer.reset()
        _set_error(channel, None)
        fd = ser.fileno()
        closed: asyncio.Future[str] = loop.create_future()
        deframer = Deframer()

        def write(data: bytes, ser: Any = ser) -> None:
            ser.write(data)

        link = Link(port.port, write)
        channel.stats.links.add(link)

        def readable() -> None:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:   # EIO: the adapter was unplugged, or the pty's other end closed
                if not closed.done():
                    closed.set_result(str(exc))
                return
            if not data:
                if not closed.done():
                    closed.set_result("end of file")
                return
            channel.receive(deframer, data, link)

        loop.add_reader(fd, readable)
        log.info("%s: open", channel.name)
        try:
            reason = await closed
            log.warning("%s: port lost (%s); reopening", channel.name, reason)
            _set_error(channel, f"{port.port}: {reason}")
        finally:
            loop.remove_reader(fd)
            channel.stats.links.discard(link)
            with contextlib.suppress(Exception):
                ser.close()
        await asyncio.sleep(timer.next_delay())
