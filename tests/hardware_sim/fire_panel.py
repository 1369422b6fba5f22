"""Fire-alarm user information transmission device simulator (GB/T 26875.3-2011).

Plays the box beside a fire panel: it sends status, fire, fault and reset frames (command 2) to a
monitoring centre and behaves as clause 6.5 asks of a real device: a data frame that is not
confirmed within ``confirm_timeout`` (or is denied) is sent again, unchanged, up to ``retries``
times; frames wait in a queue while the link is down and fire frames jump that queue (GB 26875.1
asks the device to give fire alarms priority). It can also put garbage on the line, lose confirms
on purpose, and send heartbeats (empty data frames).

Transports: TCP client (``connect``, the usual: the device dials the centre), TCP server
(``listen``: the agent's ``connect`` mode), UDP, and a serial line (a socat pty pair).

Frames are encoded here with code of its own, not with the bridge's encoder, so a mistake in
one does not hide the same mistake in the other.

    with FirePanel(address=889).connect("127.0.0.1", 9026) as panel:
        serial = panel.fire(0x0002000A, "3楼东侧走廊烟感")
        assert panel.wait_confirmed(serial, 5)

CLI::

    python -m tests.hardware_sim.fire_panel --connect 127.0.0.1:9026 --scenario fire
    python -m tests.hardware_sim.fire_panel --listen 127.0.0.1:9026 --scenario full
    python -m tests.hardware_sim.fire_panel --pty --scenario full    # prints the agent's serial port
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any

CST = timezone(timedelta(hours=8))   # device clocks in China run on local time

# -- encoding, independent of firmware_bridges.gb26875 -------------------------------------------

SEND_DATA, CONFIRM, REQUEST, RESPONSE, DENY, CONTROL = 2, 3, 4, 5, 6, 1
FIRE, FAULT, SHIELDED, SUPERVISORY, RESET = 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 13
NORMAL = 1   # bit 0: normal running (not test)


def time_label(when: datetime | None = None) -> bytes:
    when = when or datetime.now(CST)
    return bytes([when.second, when.minute, when.hour, when.day, when.month, when.year - 2000])


def encode_frame(serial: int, command: int, app: bytes, source: int, destination: int,
                 label: bytes | None = None, version: tuple[int, int] = (1, 1)) -> bytes:
    control = (struct.pack("<HBB", serial & 0xFFFF, *version) + (label or time_label())
               + source.to_bytes(6, "little") + destination.to_bytes(6, "little")
               + struct.pack("<HB", len(app), command))
    body = control + app
    return b"@@" + body + bytes([sum(body) % 256]) + b"##"


def gb18030_field(text: str, size: int = 31) -> bytes:
    raw = text.encode("gb18030")[:size]
    while True:   # do not end in half a character
        try:
            raw.decode("gb18030")
            break
        except UnicodeDecodeError:
            raw = raw[:-1]
    return raw + b"\x00" * (size - len(raw))


def component_status_app(objects: list[tuple[int, int, int, int, int, str]], label: bytes | None = None) -> bytes:
    """Type 2: (system type, system address, component type, component address, status, description)."""
    out = bytes([2, len(objects)])
    for st, sa, ct, ca, status, text in objects:
        out += struct.pack("<BBBIH", st, sa, ct, ca, status) + gb18030_field(text) + (label or time_label())
    return out


def system_status_app(objects: list[tuple[int, int, int]], label: bytes | None = None) -> bytes:
    """Type 1: (system type, system address, status)."""
    out = bytes([1, len(objects)])
    for st, sa, status in objects:
        out += struct.pack("<BBH", st, sa, status) + (label or time_label())
    return out


def analog_app(st: int, sa: int, ct: int, ca: int, kind: int, raw: int, label: bytes | None = None) -> bytes:
    return bytes([3, 1]) + struct.pack("<BBBIBh", st, sa, ct, ca, kind, raw) + (label or time_label())


def operation_app(st: int, sa: int, flags: int, operator: int = 1, label: bytes | None = None) -> bytes:
    return bytes([4, 1, st, sa, flags, operator]) + (label or time_label())


def device_status_app(flags: int, label: bytes | None = None) -> bytes:
    return bytes([21, 1, flags]) + (label or time_label())


def split_frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """(serial, command, app data) of every complete valid frame; consumes what it reads."""
    out = []
    while True:
        start = buffer.find(b"@@")
        if start < 0:
            del buffer[:max(0, len(buffer) - 1)]
            return out
        del buffer[:start]
        if len(buffer) < 27:
            return out
        length = struct.unpack_from("<H", buffer, 24)[0]
        if length > 1024:
            del buffer[:1]
            continue
        if len(buffer) < 30 + length:
            return out
        frame = bytes(buffer[:30 + length])
        if frame[-2:] != b"##" or sum(frame[2:-3]) % 256 != frame[-3]:
            del buffer[:1]
            continue
        del buffer[:30 + length]
        out.append((struct.unpack_from("<H", frame, 2)[0], frame[26], frame[27:-3]))


# -- the device ------------------------------------------------------------------------------------

@dataclass
class Sent:
    """One data frame and what became of it."""

    serial: int
    app: bytes
    frame: bytes = b""
    urgent: bool = False
    queued_at: float = 0.0                 # time.time()
    first_sent_at: float | None = None     # time.time() of the first transmission
    attempts: int = 0
    confirmed_at: float | None = None
    denies: int = 0
    failed: bool = False                   # retries exhausted
    done: threading.Event = field(default_factory=threading.Event)


class FirePanel:
    """See the module docstring. Runs its own event loop in a daemon thread; every public method is
    safe to call from any thread."""

    def __init__(self, address: int = 889, centre: int = 88888, *, confirm_timeout: float = 1.0,
                 retries: int = 3, heartbeat: float | None = None, system: tuple[int, int] = (1, 1),
                 serial_start: int = 1, restamp: bool = False, verbose: bool = False):
        self.address = address
        self.centre = centre
        self.confirm_timeout = confirm_timeout
        self.retries = retries
        self.heartbeat = heartbeat
        self.system = system
        self.restamp = restamp              # re-stamp the header time of a retransmission
        self.verbose = verbose
        self.drop_confirms = 0              # ignore this many coming confirms (a lost confirm)
        self.sent: dict[int, Sent] = {}
        self.confirms: list[int] = []       # serials confirmed, in order (duplicates included)
        self.denies: list[int] = []
        self.transmissions = 0              # frames put on the line, retransmissions included
        self.received: list[tuple[int, int, bytes]] = []   # every valid frame from the centre
        self.connected = threading.Event()
        self.port: int | None = None        # listen(): the bound port
        self._serials = itertools.count(serial_start)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fire-panel", daemon=True)
        self._thread.start()
        self._queue: list[tuple[int, int, Sent]] = []   # heap: (0 urgent / 1 normal, order, message)
        self._order = itertools.count()
        self._wakeup = asyncio.Event()
        self._write: Any = None             # callable(bytes) of the current link, None when down
        self._confirmed: dict[int, asyncio.Event] = {}
        self._tasks: list[asyncio.Future[Any]] = []
        self._closers: list[Any] = []
        self._call(self._start_sender)

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        self._loop.call_soon_threadsafe(fn, *args)

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _start_sender(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._sender()))
        if self.heartbeat:
            self._tasks.append(asyncio.ensure_future(self._heartbeats()))

    def _log(self, text: str) -> None:
        if self.verbose:
            print(f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]} {text}", flush=True)

    def _attach(self, write: Any, peer: str) -> None:
        self._write = write
        self.connected.set()
        self._wakeup.set()
        self._log(f"link up: {peer}")

    def _detach(self, why: str) -> None:
        self._write = None
        self.connected.clear()
        self._log(f"link down: {why}")

    def _received(self, buffer: bytearray) -> None:
        for serial, command, app in split_frames(buffer):
            self.received.append((serial, command, app))
            if command == CONFIRM:
                if self.drop_confirms > 0:
                    self.drop_confirms -= 1
                    self._log(f"confirm of {serial} dropped on purpose")
                    continue
                self.confirms.append(serial)
                event = self._confirmed.get(serial)
                if event is not None:
                    event.set()
            elif command == DENY:
                self.denies.append(serial)
                message = self.sent.get(serial)
                if message is not None:
                    message.denies += 1
                event = self._confirmed.get(serial)
                if event is not None:
                    event.set()   # wakes the sender, which sees no confirm and retransmits
            elif command in (CONTROL, REQUEST) and self._write is not None:
                # the centre's commands: confirmed (control) or answered with our status (request)
                answer = CONFIRM if command == CONTROL else RESPONSE
                payload = device_status_app(NORMAL) if command == REQUEST else b""
                self._write(encode_frame(serial, answer, payload, self.address, self.centre))

    async def _sender(self) -> None:
        while True:
            while not self._queue or self._write is None:
                self._wakeup.clear()
                await self._wakeup.wait()
            _, _, message = heapq.heappop(self._queue)
            await self._transmit(message)

    async def _transmit(self, message: Sent) -> None:
        confirmed = self._confirmed[message.serial] = asyncio.Event()
        for attempt in range(1 + self.retries):
            while self._write is None:   # link down: wait for it, the frame keeps its place
                self._wakeup.clear()
                await self._wakeup.wait()
            if attempt == 0 or self.restamp or not message.frame:
                message.frame = encode_frame(message.serial, SEND_DATA, message.app, self.address, self.centre)
            confirmed.clear()
            message.attempts += 1
            if message.first_sent_at is None:
                message.first_sent_at = time.time()
            self.transmissions += 1
            try:
                self._write(message.frame)
            except OSError as exc:
                self._detach(str(exc))
            self._log(f"-> {message.serial} ({len(message.frame)} bytes){' retry' if attempt else ''}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(confirmed.wait(), self.confirm_timeout)
            if message.serial in self.confirms:
                message.confirmed_at = time.time()
                self._log(f"<- confirm {message.serial} after "
                          f"{1000 * (message.confirmed_at - message.first_sent_at):.0f} ms")
                break
        else:
            message.failed = True
            self._log(f"!! {message.serial}: no confirm after {message.attempts} attempts")
        self._confirmed.pop(message.serial, None)
        message.done.set()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat or 30)
            if self._write is not None and not self._queue:
                self.send_app(b"")

    # -- transports ------------------------------------------------------------------------

    def connect(self, host: str, port: int) -> "FirePanel":
        """TCP client that keeps reconnecting, as a device does."""
        async def run() -> None:
            while True:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    await asyncio.sleep(0.2)
                    continue
                await self._serve_stream(reader, writer, f"{host}:{port}")
                await asyncio.sleep(0.2)
        self._call(lambda: self._tasks.append(asyncio.ensure_future(run())))
        return self

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> "FirePanel":
        """TCP server for an agent in ``connect`` mode; ``self.port`` is the bound port."""
        async def start() -> int:
            server = await asyncio.start_server(
                lambda r, w: self._serve_stream(r, w, str(w.get_extra_info("peername"))), host, port)
            self._closers.append(server.close)
            return server.sockets[0].getsockname()[1]
        self.port = self._run(start())
        return self

    def udp(self, host: str, port: int) -> "FirePanel":
        panel = self

        class Protocol(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                panel._closers.append(transport.close)
                panel._attach(transport.sendto, f"udp {host}:{port}")

            def datagram_received(self, data: bytes, addr: Any) -> None:
                panel._received(bytearray(data))

        async def start() -> None:
            await self._loop.create_datagram_endpoint(Protocol, remote_addr=(host, port))
        self._run(start())
        return self

    def serial(self, path: str) -> "FirePanel":
        """A serial device path; with a socat pty pair, the simulator's end."""
        def start() -> None:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            buffer = bytearray()

            def readable() -> None:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    self._loop.remove_reader(fd)
                    self._detach("serial closed")
                    return
                buffer.extend(data)
                self._received(buffer)

            def write(data: bytes) -> None:
                view = memoryview(data)
                while view:   # a pty buffer is small; frames are at most 1054 bytes
                    try:
                        view = view[os.write(fd, view):]
                    except BlockingIOError:
                        time.sleep(0.001)

            def close() -> None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._loop.add_reader(fd, readable)
            self._closers.append(close)
            self._attach(write, path)
        self._call(start)
        return self

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        self._attach(writer.write, peer)
        self._closers.append(writer.close)
        buffer = bytearray()
        try:
            while data := await reader.read(4096):
                buffer.extend(data)
                self._received(buffer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            if self._write == writer.write:
                self._detach(f"{peer} closed")

    def disconnect(self) -> None:
        """Drop the current link (a TCP client reconnects by itself)."""
        def close() -> None:
            for closer in self._closers:
                with contextlib.suppress(Exception):
                    closer()
        self._call(close)

    def stop(self) -> None:
        def shutdown() -> None:
            for closer in self._closers:
                with contextlib.suppress(Exception):
                    closer()
            for task in self._tasks:
                task.cancel()
            self._loop.call_later(0.05, self._loop.stop)
        if self._loop.is_running():
            self._call(shutdown)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> "FirePanel":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what the device reports -------------------------------------------------------------

    def send_app(self, app: bytes, *, urgent: bool = False) -> int:
        """Queue a data frame (command 2) with this application data; returns its serial number."""
        with self._lock:
            serial = next(self._serials) & 0xFFFF
        message = Sent(serial, app, urgent=urgent, queued_at=time.time())
        self.sent[serial] = message

        def enqueue() -> None:
            heapq.heappush(self._queue, (0 if urgent else 1, next(self._order), message))
            self._wakeup.set()
        self._call(enqueue)
        return serial

    def component(self, address: int, status: int, description: str = "", component_type: int = 40,
                  system: tuple[int, int] | None = None, urgent: bool = False) -> int:
        st, sa = system or self.system
        return self.send_app(component_status_app([(st, sa, component_type, address, status, description)]),
                             urgent=urgent)

    def fire(self, address: int = 0x0002000A, description: str = "3楼东侧走廊烟感", component_type: int = 40,
             system: tuple[int, int] | None = None) -> int:
        return self.component(address, NORMAL | FIRE, description, component_type, system, urgent=True)

    def clear(self, address: int = 0x0002000A, description: str = "3楼东侧走廊烟感", component_type: int = 40,
              system: tuple[int, int] | None = None) -> int:
        return self.component(address, NORMAL, description, component_type, system)

    def fault(self, address: int = 0x00030001, description: str = "2层手报模块", component_type: int = 23,
              system: tuple[int, int] | None = None) -> int:
        return self.component(address, NORMAL | FAULT, description, component_type, system)

    def system_status(self, status: int = NORMAL, system: tuple[int, int] | None = None) -> int:
        st, sa = system or self.system
        return self.send_app(system_status_app([(st, sa, status)]), urgent=bool(status & FIRE))

    def reset(self, system: tuple[int, int] | None = None) -> int:
        """The panel was reset: the system status with the reset bit (8.2.1.1 bit 13)."""
        return self.system_status(NORMAL | RESET, system)

    def device_status(self, flags: int = NORMAL) -> int:
        return self.send_app(device_status_app(flags), urgent=bool(flags & FIRE))

    def analog(self, address: int, kind: int, raw: int, component_type: int = 99) -> int:
        st, sa = self.system
        return self.send_app(analog_app(st, sa, component_type, address, kind, raw))

    def operation(self, flags: int, operator: int = 1) -> int:
        st, sa = self.system
        return self.send_app(operation_app(st, sa, flags, operator), urgent=bool(flags & 1 << 2))

    def garbage(self, data: bytes = b"\x00\xff@#\x13\x37@@\x01\x02line noise##") -> None:
        """Bytes that are no frame, straight onto the line (between two frames)."""
        self.raw(data)

    def raw(self, data: bytes) -> None:
        def write() -> None:
            if self._write is not None:
                self._write(data)
        self._call(write)

    # -- for tests -------------------------------------------------------------------------

    def wait_confirmed(self, serial: int, timeout: float = 5.0) -> bool:
        """True once ``serial`` was confirmed; False if retries ran out or the time did."""
        message = self.sent[serial]
        message.done.wait(timeout)
        return message.confirmed_at is not None

    def wait_connected(self, timeout: float = 5.0) -> bool:
        return self.connected.wait(timeout)

    def scenario(self, name: str, interval: float = 1.0) -> list[int]:
        """Run a named sequence; returns the serials sent. See SCENARIOS."""
        steps = SCENARIOS[name]
        serials = []
        for index, step in enumerate(steps):
            if index:
                time.sleep(interval)
            result = step(self)
            if isinstance(result, int):
                serials.append(result)
                self.wait_confirmed(result, self.confirm_timeout * (self.retries + 1) + 1)
        return serials


def _retry_fire(panel: FirePanel) -> int:
    panel.drop_confirms = 1   # the first confirm is "lost": the device sends the frame again
    return panel.fire()


SCENARIOS: dict[str, list[Any]] = {
    "normal": [lambda p: p.device_status(NORMAL), lambda p: p.system_status(NORMAL)],
    "fire": [lambda p: p.system_status(NORMAL), lambda p: p.fire()],
    "fault": [lambda p: p.system_status(NORMAL), lambda p: p.fault()],
    "reset": [lambda p: p.fire(), lambda p: p.reset()],
    "full": [lambda p: p.device_status(NORMAL), lambda p: p.system_status(NORMAL), lambda p: p.fire(),
             lambda p: p.fault(), lambda p: p.reset()],
    "garbage": [lambda p: p.system_status(NORMAL), lambda p: p.garbage(), lambda p: p.fire()],
    "retry": [_retry_fire],
}


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--connect", metavar="HOST:PORT", help="dial the agent (agent config: listen)")
    link.add_argument("--listen", metavar="HOST:PORT", help="wait for the agent (agent config: connect)")
    link.add_argument("--udp", metavar="HOST:PORT", help="send datagrams to the agent (agent config: udp)")
    link.add_argument("--serial", metavar="PATH", help="a serial port (or a pty's simulator end)")
    link.add_argument("--pty", action="store_true", help="make a socat pty pair and print the agent's end")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="full")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between steps")
    parser.add_argument("--repeat", type=int, default=1, help="run the scenario this many times (0: forever)")
    parser.add_argument("--address", type=int, default=889, help="this device's address (frames' source)")
    parser.add_argument("--centre", type=int, default=88888, help="the centre's address (frames' destination)")
    parser.add_argument("--confirm-timeout", type=float, default=3.0)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats (0: none)")
    parser.add_argument("--hold", action="store_true", help="keep the link up after the scenario (Ctrl-C ends)")
    args = parser.parse_args(argv)

    panel = FirePanel(args.address, args.centre, confirm_timeout=args.confirm_timeout, retries=args.retries,
                      heartbeat=args.heartbeat or None, verbose=True)
    pty = None
    try:
        if args.connect:
            panel.connect(*_host_port(args.connect))
        elif args.listen:
            panel.listen(*_host_port(args.listen))
            print(f"listening on port {panel.port}", flush=True)
        elif args.udp:
            panel.udp(*_host_port(args.udp))
        else:
            if args.pty:
                from tests.hardware_sim.modbus_sim import PtyPair
                pty = PtyPair().start()
                print(f"agent's serial port: {pty.agent_port}", flush=True)
                args.serial = pty.sim_port
            panel.serial(args.serial)
        print("waiting for the link ...", flush=True)
        panel.wait_connected(timeout=3600)
        rounds = itertools.count() if args.repeat == 0 else range(args.repeat)
        for _ in rounds:
            serials = panel.scenario(args.scenario, args.interval)
            failed = [s for s in serials if panel.sent[s].confirmed_at is None]
            print(f"scenario {args.scenario}: {len(serials)} frames, {len(serials) - len(failed)} confirmed, "
                  f"{panel.transmissions} transmissions", flush=True)
        while args.hold:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        panel.stop()
        if pty is not None:
            pty.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
