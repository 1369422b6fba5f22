"""The Modbus runtime: one runner per bus (a TCP host:port or a serial port).

Every device on a bus shares one pymodbus client and one lock, so the bus carries one request at
a time (RS-485 is half-duplex; most TCP-to-serial gateways also serialise). A scheduler polls each
device at its own rate; a unit that stops answering backs off on its own (see
:mod:`drivers.modbus.device`) so the others keep their rate. Commands (``read_point``,
``write_point``) take the same lock and so slot in between two poll requests.

What a poll reports, once per device per poll, through ``sink.readings``:

- every answered point, quality ``good`` (``bad`` when outside the profile's min/max, or a float
  that is NaN/infinite: then the value is None);
- the points of a request the unit refused with a Modbus exception: value None, quality ``bad``
  (the unit is alive, so this is not a failure of the device and does not back it off);
- when the unit stops answering mid-poll, the points already read, and nothing for the rest:
  the failure is the device's state (``sink.device_state``), not a fake value.

pymodbus does the framing, CRC and transaction matching; its own retries and reconnects are
switched off (``retries=0``, ``reconnect_delay=0``) because they would stall the whole bus for
one unit: retry policy lives here, per unit and per link.

Time: the schedule, the units' backoff and the link's retry run on the runner's ``clock``
(:mod:`agent.core.clock`; tests give a virtual one). What guards the wire stays on real time: the
request timeouts (pymodbus's and the outer limit) and RS-485's silence between frames.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import struct
import time
from collections.abc import Sequence
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from agent.core.backoff import Backoff, Retry
from agent.core.boundary import boundary
from agent.core.clock import SYSTEM, Clock
from agent.core.config import DeviceConfig
from agent.core.model import DeviceSink, Reading, Value
from agent.core.driver import DeviceError, Runner
from drivers.modbus import codec
from drivers.modbus.device import Device
from drivers.modbus.options import Options, RtuConnection, TcpConnection
from drivers.modbus.plan import Request

log = logging.getLogger("drivers.modbus")
ANSWERS = boundary("modbus")   # answers of every bus, and the poll loop around them
_next_due = operator.attrgetter("next_due")   # the scheduler's key: C, not a lambda, for 200-unit buses

ILLEGAL_ADDRESS = 0x02
# A gateway's way of saying "the unit behind me did not answer": a dead unit, not a refusal.
GATEWAY_NO_ANSWER = {0x0A: "gateway path unavailable", 0x0B: "gateway target did not respond"}
EXCEPTION_NAMES = {
    0x01: "illegal function", 0x02: "illegal data address", 0x03: "illegal data value",
    0x04: "device failure", 0x05: "acknowledge", 0x06: "device busy", 0x08: "memory parity error",
    **GATEWAY_NO_ANSWER,
}


class _DropPerRequestTimeouts(logging.Filter):
    """pymodbus logs every unanswered request at ERROR with a dump of recent frames. A silent unit
    is a device state this driver reports (once, when it goes offline), not an error per retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No response received")


_PYMODBUS_LOG = logging.getLogger("pymodbus.logging")
if not any(isinstance(f, _DropPerRequestTimeouts) for f in _PYMODBUS_LOG.filters):
    _PYMODBUS_LOG.addFilter(_DropPerRequestTimeouts())


class CommandError(DeviceError):
    """A request could not be completed; the message is for a technician."""


class NoAnswer(CommandError, TimeoutError):
    """The unit did not answer in time, or answered garbage (bad CRC, wrong length)."""


class LinkDown(CommandError, ConnectionError):
    """The TCP connection or serial port is not open."""


class Refused(CommandError):
    """The unit answered with a Modbus exception."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def describe_exception(code: int) -> str:
    return f"exception {code:#04x} ({EXCEPTION_NAMES.get(code, 'unknown')})"


class BusRunner(Runner):
    """Polls every device of one bus; see the module docstring."""

    def __init__(self, connection: TcpConnection | RtuConnection,
                 devices: Sequence[tuple[DeviceConfig, Options]], sink: DeviceSink, *, clock: Clock = SYSTEM):
        self.connection = connection
        self.clock = clock
        self.name = f"modbus {connection.describe()}"
        self.devices: dict[str, Device] = {
            config.id: Device(config.id, options, config.poll, sink) for config, options in devices}
        # one client, one timeout: the most patient device on the bus sets it
        self.timeout = max(options.connection.timeout for _, options in devices)
        first = devices[0][1]
        self._link_backoff = Retry(Backoff(initial=min(first.backoff.initial, 1.0),
                                           max=max(o.backoff.max for _, o in devices)))
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock: asyncio.Lock | None = None
        self._link_failures = 0
        self._link_retry_at = 0.0
        self._link_error = "not connected yet"
        self._connected_once = False
        self._last_io = 0.0
        self._rx_bytes = 0   # bytes received during the current request (see _trace_packet)
        self._gap = _rtu_gap(connection) if isinstance(connection, RtuConnection) else 0.0
        # frame overhead each way: MBAP header (7) for TCP; unit id + CRC (3) for RTU
        self._overhead = 7 if isinstance(connection, TcpConnection) else 3

    # -- public -------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per device counters (see ``DeviceStats``), keyed by device id."""
        return {device_id: device.stats.as_dict() for device_id, device in self.devices.items()}

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def run(self) -> None:
        clock = self.clock
        now = clock.monotonic()
        for device in self.devices.values():
            device.start(now)
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # Python 3.11's asyncio.wait_for (inside pymodbus) returns the response instead of
                # raising when a cancel arrives as the response completes: honour the cancel here,
                # or the agent's shutdown would wait for this bus forever.
                raise asyncio.CancelledError
            device = min(self.devices.values(), key=_next_due)
            delay = device.next_due - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
                continue   # choose again: a reconnect may have moved every device
            try:
                await self._poll(device)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # noqa: BLE001 - a bug must not end the bus; counted, logged once, polling goes on
                ANSWERS.failed(exc, where=f"{self.name} polling {device.id}")
                device.failed("internal error (see the agent log)", clock.monotonic(), backoff=True)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read_point(self, device_id: str, point: str) -> Reading:
        """Read one point now. Raises KeyError, NoAnswer, LinkDown or Refused."""
        device = self._device(device_id)
        reader = device.single_request(point)
        response = await self._request(device, reader.request)
        if response.isError():
            raise Refused(response.exception_code,
                          f"{device_id}.{point}: unit {device.unit} answered {describe_exception(response.exception_code)}")
        return reader.good(self._decode(device, reader.request, response), self.clock.now_ms())[0]

    async def write_point(self, device_id: str, point: str, value: Value) -> None:
        """Write one writable point. Raises KeyError, PermissionError, ValueError, NoAnswer, LinkDown, Refused."""
        device = self._device(device_id)
        p = device.point(point)
        if not p.writable:
            raise PermissionError(f"{device_id}.{point} is read-only (the profile does not mark it writable)")
        if p.type in codec.NUMERIC_TYPES:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{device_id}.{point} takes a number, got {value!r}")
            if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
                raise ValueError(f"{device_id}.{point}: {value!r} is outside {p.min}..{p.max}")
            if (p.type in codec.INTEGER_TYPES and p.scale == 1.0 and p.offset == 0.0
                    and isinstance(value, float) and not value.is_integer()):
                # with a scale, rounding to the nearest step is expected; without one it would hide a mistake
                raise ValueError(f"{device_id}.{point} is a whole number ({p.type}), got {value!r}")
        try:
            registers = codec.encode(value, p.type, p.order, p.scale, p.offset, p.length)
        except codec.CodecError as exc:
            raise ValueError(f"{device_id}.{point}: {exc}") from None
        if p.table == "coil":
            response = await self._call(device, "write_coil", p.address, bool(registers[0]),
                                        pdu_bytes=(5, 5))
        else:
            response = await self._call(device, "write_registers", p.address, registers,
                                        pdu_bytes=(6 + 2 * len(registers), 5))
        if response.isError():
            raise Refused(response.exception_code,
                          f"{device_id}.{point}: unit {device.unit} refused the write: "
                          f"{describe_exception(response.exception_code)}")
        log.info("%s: wrote %s.%s = %r", self.name, device_id, point, value)

    # -- polling ------------------------------------------------------------------------------

    async def _poll(self, device: Device) -> None:
        clock = self.clock
        linked = await self._ensure_link()
        # after the link: a (re)connect makes every device due at once (poll_now), this one too,
        # and its schedule must then move on from that, or it would be polled twice in a row
        device.begin_poll(clock.monotonic())
        if not linked:
            device.stats.errors += 1
            device.failed(f"link down: {self._link_error}", clock.monotonic(), backoff=False)
            return
        readings: list[Reading] = []
        t = 0
        index = 0
        while index < len(device.requests):
            reader = device.requests[index]
            request = reader.request
            try:
                response = await self._request(device, request)
                t = clock.now_ms()
                if response.isError():
                    code = response.exception_code
                    if code in GATEWAY_NO_ANSWER:
                        device.stats.timeouts += 1
                        device.stats.errors += 1
                        raise NoAnswer(f"unit {device.unit}: {describe_exception(code)}")
                    device.stats.exceptions += 1
                    device.stats.errors += 1
                    if code == ILLEGAL_ADDRESS and device.split_request(index):
                        continue   # read the same points again, one request each
                    device.stats.last_error = (f"{request.table} {request.address}..{request.address + request.count - 1}: "
                                               f"{describe_exception(code)}")
                    readings += reader.bad(t)
                else:
                    readings += reader.good(self._decode(device, request, response), t)
            except LinkDown as exc:
                device.deliver(readings)
                device.failed(str(exc), clock.monotonic(), backoff=False)
                return
            except NoAnswer as exc:
                device.deliver(readings)
                device.failed(str(exc), clock.monotonic(), backoff=True)
                return
            index += 1
        device.succeeded(t, clock.monotonic())
        device.deliver(readings)

    def _decode(self, device: Device, request: Request, response: ModbusPDU) -> list[Value]:
        try:
            return request.decode(response.bits if request.bits else response.registers)
        except (struct.error, IndexError, TypeError) as exc:
            device.stats.garbage += 1
            device.stats.errors += 1
            raise NoAnswer(f"unit {device.unit}: malformed answer to {request.table} {request.address} "
                           f"x{request.count} ({exc})") from None
        except Exception as exc:   # noqa: BLE001 - a decoder bug meeting this answer: see agent/core/boundary.py
            ANSWERS.failed(exc, where=f"{self.name} unit {device.unit}")
            device.stats.garbage += 1
            device.stats.errors += 1
            raise NoAnswer(f"unit {device.unit}: the answer to {request.table} {request.address} "
                           f"x{request.count} could not be decoded ({type(exc).__name__})") from None

    # -- the wire -----------------------------------------------------------------------------

    async def _request(self, device: Device, request: Request) -> ModbusPDU:
        method = _READ_METHODS[request.table]
        data = (request.count + 7) // 8 if request.bits else 2 * request.count
        return await self._call(device, method, request.address, count=request.count, pdu_bytes=(5, 2 + data))

    async def _call(self, device: Device, method: str, *args: Any, pdu_bytes: tuple[int, int],
                    **kwargs: Any) -> ModbusPDU:
        """One request under the bus lock; pymodbus errors become NoAnswer/LinkDown."""
        stats = device.stats
        async with self._bus_lock():
            client = self._client
            if client is None or not client.connected:
                stats.errors += 1
                raise LinkDown(f"link down: {self._link_error}")
            if self._gap:
                # real time: the line's silence is physics, not schedule
                wait = self._last_io + self._gap - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)   # RS-485: 3.5 characters of silence between frames
            stats.requests += 1
            stats.bytes += self._overhead + pdu_bytes[0]
            self._rx_bytes = 0
            try:
                # pymodbus enforces `timeout`; this outer limit only guards against a stuck transport
                async with asyncio.timeout(2 * self.timeout + 1.0):
                    response = await getattr(client, method)(*args, device_id=device.unit, **kwargs)
            except ConnectionException as exc:
                stats.errors += 1
                raise LinkDown(f"link down: {exc}") from None
            except (ModbusIOException, TimeoutError) as exc:
                stats.errors += 1
                if not client.connected:
                    raise LinkDown(f"link lost during a request to unit {device.unit}") from None
                if self._rx_bytes:
                    # bytes came back but no valid frame (pymodbus's framer drops bad CRCs silently):
                    # noise, a wrong baud rate/parity, or two units with one address
                    stats.garbage += 1
                    raise NoAnswer(f"unit {device.unit}: unreadable answer ({self._rx_bytes} bytes, bad CRC "
                                   "or framing: check baudrate, parity, termination and duplicate unit ids)") from None
                stats.timeouts += 1
                raise NoAnswer(f"unit {device.unit}: no answer within {self.timeout * 1000:g}ms") from exc
            except ModbusException as exc:   # a frame pymodbus could not make sense of
                stats.errors += 1
                stats.garbage += 1
                raise NoAnswer(f"unit {device.unit}: bad answer ({exc})") from None
            finally:
                self._last_io = time.monotonic()
            stats.bytes += self._overhead + (2 if response.isError() else pdu_bytes[1])
            return response

    def _bus_lock(self) -> asyncio.Lock:
        if self._lock is None:   # created on the loop that uses it
            self._lock = asyncio.Lock()
        return self._lock

    async def _ensure_link(self) -> bool:
        """Connected, or one connection attempt if the link's backoff allows it now."""
        if self.connected:
            return True
        clock = self.clock
        if clock.monotonic() < self._link_retry_at:
            return False
        async with self._bus_lock():
            if self.connected:
                return True
            if self._client is not None:
                self._client.close()
            self._client = self._make_client()
            if await self._client.connect():
                if self._connected_once:
                    log.info("%s: reconnected", self.name)
                self._connected_once = True
                self._link_failures = 0
                self._link_error = "connection lost"
                now = clock.monotonic()
                for device in self.devices.values():
                    device.poll_now(now)   # whatever backed off while the link was down goes now
                return True
            self._client.close()
            self._client = None
            self._link_failures += 1
            self._link_error = f"cannot open {self.connection.describe()}"
            delay = self._link_backoff.delay(self._link_failures)
            self._link_retry_at = clock.monotonic() + delay
            (log.warning if self._link_failures == 1 else log.debug)(
                "%s: %s; retrying in %.1fs", self.name, self._link_error, delay)
            return False

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook on raw bytes: notes that something arrived, to tell garbage from silence."""
        if not sending:
            self._rx_bytes += len(data)
        return data

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        c = self.connection
        if isinstance(c, TcpConnection):
            return AsyncModbusTcpClient(c.host, port=c.port, timeout=self.timeout, retries=0,
                                        reconnect_delay=0, name=self.name, trace_packet=self._trace_packet)
        return AsyncModbusSerialClient(c.port, framer=FramerType.RTU, baudrate=c.baudrate,
                                       bytesize=c.bytesize, parity=c.parity, stopbits=c.stopbits,
                                       timeout=self.timeout, retries=0, reconnect_delay=0, name=self.name,
                                       trace_packet=self._trace_packet)

    def _device(self, device_id: str) -> Device:
        try:
            return self.devices[device_id]
        except KeyError:
            raise KeyError(f"no modbus device {device_id!r} on {self.name}") from None


_READ_METHODS = {
    "coil": "read_coils",
    "discrete_input": "read_discrete_inputs",
    "holding_register": "read_holding_registers",
    "input_register": "read_input_registers",
}


def _rtu_gap(connection: RtuConnection) -> float:
    """Modbus RTU's inter-frame silence: 3.5 character times, fixed at 1.75 ms above 19200 baud."""
    if connection.baudrate > 19200:
        return 0.00175
    bits_per_char = 1 + connection.bytesize + (0 if connection.parity == "N" else 1) + connection.stopbits
    return 3.5 * bits_per_char / connection.baudrate
