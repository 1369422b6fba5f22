"""HJ 212 data logger simulator: what an air/water/noise station's logger does on the wire.

It connects to the agent's server (or writes to a serial port), uploads real-time data (2011)
every ``interval`` seconds and minute (2051) / hour (2061) data on their own timers, waits for
the answer when it sets Flag A (resending up to ``retries`` times, as the standard's
OverTime/ReCount describe), and can misbehave on command: bad CRC, truncated, oversize and
garbage frames, split uploads, a slow-loris trickle.

Its framing is written here independently of the agent's (table CRC, simple parser), so a bug
in the agent's parser is not mirrored by the simulator.

    logger = Hj212Logger("010000A8900016F000169DC0", values={"a34004": 35.2})
    await logger.connect("127.0.0.1", 9212)
    answer = await logger.send_realtime()       # the 9014 frame's fields, or None on timeout
    await logger.close()

From the command line::

    python -m tests.hardware_sim.hj212_logger --host 127.0.0.1 --port 9212 --mn 010000A8900016F000169DC0
    python -m tests.hardware_sim.hj212_logger --port 9212 --mn BENCH --loggers 100 --flood --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

# ambient-air station defaults: code -> value
AIR_VALUES: dict[str, float] = {
    "a34004": 35.2, "a34002": 61.0, "a21026": 12.0, "a21004": 33.5, "a21005": 0.8, "a05024": 80.4,
    "a01001": 21.5, "a01002": 55.0, "a01006": 101.3, "a01007": 2.1, "a01008": 120.0,
}
CST = timezone(timedelta(hours=8))     # loggers send China Standard Time


def _table() -> list[int]:
    table = []
    for x in range(256):
        for _ in range(8):
            x = (x >> 1) ^ 0xA001 if x & 1 else x >> 1
        table.append(x)
    return table


_CRC_TABLE = _table()


def crc(data: bytes) -> int:
    """HJ 212-2017 Appendix A: reg = (reg >> 8) ^ byte, then 8 shifts with 0xA001."""
    reg = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        reg = table[(reg >> 8) ^ byte]
    return reg


def frame(segment: str, *, crc_override: str | None = None, length: int | None = None) -> bytes:
    data = segment.encode("utf-8")
    crc_text = crc_override if crc_override is not None else f"{crc(data):04X}"
    return b"##%04d%s%s\r\n" % (len(data) if length is None else length, data, crc_text.encode())


def parse(raw: bytes) -> dict[str, str] | None:
    """A received frame's header fields plus 'CP' (None when its CRC or layout is wrong)."""
    if not raw.startswith(b"##") or not raw.endswith(b"\r\n") or len(raw) < 12 or not raw[2:6].isdigit():
        return None
    segment, crc_text = raw[6:-6], raw[-6:-2]
    if int(raw[2:6]) != len(segment) or f"{crc(segment):04X}" != crc_text.decode().upper():
        return None
    text = segment.decode()
    head, _, cp = text.partition("CP=&&")
    fields = dict(part.split("=", 1) for part in head.split(";") if "=" in part)
    fields["CP"] = cp[:-2]
    return fields


@dataclass
class LoggerStats:
    sent: int = 0
    answered: int = 0
    timeouts: int = 0
    retries: int = 0
    bytes_sent: int = 0
    answers: list[dict[str, str]] = field(default_factory=list)


class Hj212Logger:
    """One data logger. Use from one event loop; see the module docstring."""

    def __init__(self, mn: str, pw: str = "123456", st: int = 22, *,
                 values: Mapping[str, float] | None = None, flags: Mapping[str, str] | None = None,
                 ack: bool = True, timeout: float = 5.0, retries: int = 2, version: int = 2017,
                 keep_answers: int = 1000):
        self.mn = mn
        self.pw = pw
        self.st = st
        self.values = dict(AIR_VALUES if values is None else values)
        self.flags = dict(flags or {})
        self.ack = ack
        self.timeout = timeout
        self.retries = retries
        self.version = version
        self.keep_answers = keep_answers
        self.stats = LoggerStats()
        self._writer: asyncio.StreamWriter | None = None
        self._serial_fd: int | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, str]]] = {}
        self._qn_ms = 0
        self.connected = asyncio.Event()

    # -- transport --------------------------------------------------------------------------

    async def connect(self, host: str, port: int) -> None:
        reader, self._writer = await asyncio.open_connection(host, port)
        self._reader_task = asyncio.create_task(self._read_tcp(reader))
        self.connected.set()

    async def open_serial(self, path: str) -> None:
        import serial   # a pty or a real port
        port = serial.Serial(path, timeout=0)
        self._serial = port
        self._serial_fd = port.fileno()
        loop = asyncio.get_running_loop()
        self._serial_buffer = bytearray()
        loop.add_reader(self._serial_fd, self._read_serial)
        self.connected.set()

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None
        if self._serial_fd is not None:
            asyncio.get_running_loop().remove_reader(self._serial_fd)
            self._serial.close()
            self._serial_fd = None
        for future in self._waiting.values():
            future.cancel()
        self.connected.clear()

    @property
    def closed_by_peer(self) -> bool:
        return self._reader_task is not None and self._reader_task.done()

    async def send_raw(self, data: bytes) -> None:
        self.stats.bytes_sent += len(data)
        if self._serial_fd is not None:
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._serial_fd, view)
                except BlockingIOError:
                    written = 0
                view = view[written:]
                if view:
                    await asyncio.sleep(0.001)
            return
        assert self._writer is not None, "connect() first"
        self._writer.write(data)
        await self._writer.drain()

    async def _read_tcp(self, reader: asyncio.StreamReader) -> None:
        buffer = bytearray()
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                return
            buffer += chunk
            self._take_answers(buffer)

    def _read_serial(self) -> None:
        try:
            chunk = os.read(self._serial_fd, 4096)   # type: ignore[arg-type]
        except (BlockingIOError, OSError):
            return
        self._serial_buffer += chunk
        self._take_answers(self._serial_buffer)

    def _take_answers(self, buffer: bytearray) -> None:
        while True:
            start = buffer.find(b"##")
            if start < 0:
                del buffer[:-1]          # nothing that could start a frame (keep a lone '#')
                return
            end = buffer.find(b"\r\n", start)
            if end < 0:
                return
            try:
                fields = parse(bytes(buffer[start:end + 2]))
            except (ValueError, UnicodeDecodeError):
                fields = None
            del buffer[:end + 2]
            if fields is None:
                continue
            self.stats.answered += 1
            if len(self.stats.answers) < self.keep_answers:
                self.stats.answers.append(fields)
            qn = fields.get("QN") or _inner(fields.get("CP", ""), "QN")
            future = self._waiting.pop(qn or "", None)
            if future is not None and not future.done():
                future.set_result(fields)

    # -- frames -----------------------------------------------------------------------------

    def qn(self, now: datetime | None = None) -> str:
        """A QN that never repeats, even for frames built in the same millisecond."""
        moment = now or datetime.now(CST)
        ms = int(moment.timestamp() * 1000)
        self._qn_ms = max(ms, self._qn_ms + 1)
        moment = datetime.fromtimestamp(self._qn_ms / 1000, CST)
        return moment.strftime("%Y%m%d%H%M%S") + f"{self._qn_ms % 1000:03d}"

    def segment(self, cn: int, cp: str, *, ack: bool | None = None, qn: str | None = None,
                split: tuple[int, int] | None = None) -> str:
        ack = self.ack if ack is None else ack
        if self.version == 2005:
            return f"ST={self.st};CN={cn};PW={self.pw};MN={self.mn};CP=&&{cp}&&"
        flag = 4 | (1 if ack else 0) | (2 if split else 0)
        packet = f"PNUM={split[0]};PNO={split[1]};" if split else ""
        return (f"QN={qn or self.qn()};ST={self.st};CN={cn};PW={self.pw};MN={self.mn};Flag={flag};"
                f"{packet}CP=&&{cp}&&")

    def realtime_cp(self, at: datetime | None = None, values: Mapping[str, Any] | None = None) -> str:
        at = at or datetime.now(CST)
        values = self.values if values is None else values
        items = [f"DataTime={at:%Y%m%d%H%M%S}"]
        for code, value in values.items():
            items.append(f"{code}-Rtd={value},{code}-Flag={self.flags.get(code, 'N')}")
        return ";".join(items)

    def aggregate_cp(self, at: datetime, values: Mapping[str, Any] | None = None, cou: bool = False) -> str:
        values = self.values if values is None else values
        items = [f"DataTime={at:%Y%m%d%H%M%S}"]
        for code, value in values.items():
            v = float(value)
            text = f"{code}-Min={round(v * 0.9, 3)},{code}-Avg={v},{code}-Max={round(v * 1.1, 3)}"
            if cou:
                text += f",{code}-Cou={round(v * 60, 3)}"
            items.append(f"{text},{code}-Flag={self.flags.get(code, 'N')}")
        return ";".join(items)

    async def send_segment(self, segment: str, *, ack: bool | None = None) -> dict[str, str] | None:
        """Send one frame; with ack, wait for the answer (resending on timeout). Returns the
        answer's fields, or None (no ack, or no answer after the retries)."""
        ack = self.ack if ack is None else ack
        data = frame(segment)
        if not ack or self.version == 2005:
            self.stats.sent += 1
            await self.send_raw(data)
            return None
        qn = segment.split(";", 1)[0].removeprefix("QN=")
        for attempt in range(self.retries + 1):
            future = asyncio.get_running_loop().create_future()
            self._waiting[qn] = future
            self.stats.sent += 1
            if attempt:
                self.stats.retries += 1
            await self.send_raw(data)
            try:
                return await asyncio.wait_for(future, self.timeout)
            except (TimeoutError, asyncio.TimeoutError):
                self._waiting.pop(qn, None)
        self.stats.timeouts += 1
        return None

    async def send_realtime(self, values: Mapping[str, Any] | None = None, *, ack: bool | None = None,
                            at: datetime | None = None) -> dict[str, str] | None:
        return await self.send_segment(self.segment(2011, self.realtime_cp(at, values), ack=ack), ack=ack)

    async def send_minute(self, at: datetime | None = None, values: Mapping[str, Any] | None = None,
                          *, ack: bool | None = None) -> dict[str, str] | None:
        at = (at or datetime.now(CST)).replace(second=0, microsecond=0)
        return await self.send_segment(self.segment(2051, self.aggregate_cp(at, values), ack=ack), ack=ack)

    async def send_hour(self, at: datetime | None = None, values: Mapping[str, Any] | None = None,
                        *, ack: bool | None = None) -> dict[str, str] | None:
        at = (at or datetime.now(CST)).replace(minute=0, second=0, microsecond=0)
        return await self.send_segment(self.segment(2061, self.aggregate_cp(at, values), ack=ack), ack=ack)

    async def send_split(self, cn: int, cp: str, parts: int, *, cut_anywhere: bool = False,
                         order: Iterable[int] | None = None, ack: bool | None = None) -> list[dict[str, str] | None]:
        """Upload ``cp`` in ``parts`` frames sharing one QN: cut between items, or every
        len/parts characters (as some loggers do); sent in ``order`` (PNO numbers)."""
        if cut_anywhere:
            size = -(-len(cp) // parts)
            chunks = [cp[i * size:(i + 1) * size] for i in range(parts)]
        else:
            items = cp.split(";")
            per = -(-len(items) // parts)
            chunks = [";".join(items[i * per:(i + 1) * per]) for i in range(parts)]
        qn = self.qn()
        answers = []
        for pno in (order or range(1, parts + 1)):
            segment = self.segment(cn, chunks[pno - 1], ack=ack, qn=qn, split=(parts, pno))
            answers.append(await self.send_segment(segment, ack=ack))
        return answers

    # -- faults -------------------------------------------------------------------------------

    def bad_crc_frame(self, ack: bool = True) -> bytes:
        segment = self.segment(2011, self.realtime_cp(), ack=ack)
        good = f"{crc(segment.encode()):04X}"
        return frame(segment, crc_override=f"{(int(good, 16) ^ 0x00FF):04X}")

    def truncated_frame(self) -> bytes:
        data = frame(self.segment(2011, self.realtime_cp(), ack=False))
        return data[:len(data) // 2]

    def oversize_frame(self, size: int = 1500) -> bytes:
        cp = "DataTime=20240101000000;" + ";".join(f"a{i:05d}-Rtd=1.0" for i in range(size // 12))
        data = f"QN={self.qn()};ST={self.st};CN=2011;PW={self.pw};MN={self.mn};Flag=4;CP=&&{cp}&&".encode()
        return b"##%04d%s%04X\r\n" % (min(len(data), 9999), data, crc(data))

    @staticmethod
    def garbage(size: int = 200, seed: int | None = None) -> bytes:
        rng = random.Random(seed)
        return bytes(rng.choice(b"abcdefXYZ0123456789;=,&\x00\xff\r\n ") for _ in range(size))

    async def send_fault(self, kind: str) -> None:
        data = {"bad_crc": self.bad_crc_frame, "truncated": self.truncated_frame,
                "oversize": self.oversize_frame, "garbage": self.garbage}[kind]()
        await self.send_raw(data)

    async def slow_loris(self, data: bytes, delay: float) -> None:
        """Send ``data`` one byte every ``delay`` seconds (until done or the peer closes)."""
        for i in range(len(data)):
            if self.closed_by_peer:
                return
            try:
                await self.send_raw(data[i:i + 1])
            except (ConnectionError, OSError):
                return
            await asyncio.sleep(delay)

    # -- a logger's day -------------------------------------------------------------------------

    async def run(self, interval: float = 30.0, minute_interval: float = 0.0, hour_interval: float = 0.0,
                  count: int | None = None, duration: float | None = None, drift: float = 0.02,
                  fault: str | None = None, fault_every: int = 0) -> None:
        """Upload until ``count`` real-time frames or ``duration`` seconds; values drift a little."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_minute = start + minute_interval if minute_interval else None
        next_hour = start + hour_interval if hour_interval else None
        sent = 0
        base = dict(self.values)
        while (count is None or sent < count) and (duration is None or loop.time() - start < duration):
            values = {k: round(v * (1 + random.uniform(-drift, drift)), 2) for k, v in base.items()}
            self.values = values
            await self.send_realtime()
            sent += 1
            if fault and fault_every and sent % fault_every == 0:
                await self.send_fault(fault)
            now = loop.time()
            if next_minute is not None and now >= next_minute:
                await self.send_minute()
                next_minute += minute_interval
            if next_hour is not None and now >= next_hour:
                await self.send_hour()
                next_hour += hour_interval
            await asyncio.sleep(max(0.0, interval - (loop.time() - now)))


def _inner(cp: str, key: str) -> str | None:
    for part in cp.split(";"):
        k, _, v = part.partition("=")
        if k == key:
            return v
    return None


# -- many loggers at once (bench) ---------------------------------------------------------------

async def flood(host: str, port: int, mn_prefix: str, loggers: int, duration: float, *, ack: bool,
                rate: float = 0.0, batch: int = 64) -> dict[str, Any]:
    """``loggers`` connections uploading real-time frames as fast as the agent takes them (or at
    ``rate`` frames/s each). Without ack, each sends pre-built frames in batches of ``batch``;
    with ack, one frame at a time, waiting for each 9014."""
    fleet = [Hj212Logger(f"{mn_prefix}{i:04d}", ack=ack, timeout=10.0, retries=0) for i in range(loggers)]
    for logger in fleet:
        await logger.connect(host, port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration

    async def one(logger: Hj212Logger) -> None:
        if ack:
            while loop.time() < deadline:
                await logger.send_realtime()
                if rate:
                    await asyncio.sleep(1 / rate)
            return
        # distinct frames (QN and values), more of them than the agent remembers to spot resends
        frames = [frame(logger.segment(2011, logger.realtime_cp(values={k: round(v + i * 0.1, 1) for k, v in AIR_VALUES.items()})))
                  for i in range(4 * batch)]
        blobs = [b"".join(frames[i:i + batch]) for i in range(0, len(frames), batch)]
        turn = 0
        while loop.time() < deadline:
            await logger.send_raw(blobs[turn % len(blobs)])
            turn += 1
            logger.stats.sent += batch
            await asyncio.sleep(batch / rate if rate else 0)

    started = time.perf_counter()
    await asyncio.gather(*(one(logger) for logger in fleet))
    elapsed = time.perf_counter() - started
    for logger in fleet:
        await logger.close()
    sent = sum(logger.stats.sent for logger in fleet)
    return {"loggers": loggers, "sent": sent, "answered": sum(logger.stats.answered for logger in fleet),
            "timeouts": sum(logger.stats.timeouts for logger in fleet), "seconds": round(elapsed, 2)}


class ThreadedLogger:
    """A Hj212Logger on its own event loop thread, for synchronous (end-to-end) tests."""

    def __init__(self, logger: Hj212Logger):
        self.logger = logger
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hj212-logger", daemon=True)
        self._thread.start()

    def call(self, coro: Any, timeout: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.logger.close(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def __enter__(self) -> "ThreadedLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- command line -----------------------------------------------------------------------------

def _values(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    return {code: float(value) for code, value in (pair.split("=", 1) for pair in text.split(","))}


async def _main(args: argparse.Namespace) -> int:
    if args.loggers > 1 or args.flood:
        result = await flood(args.host, args.port, args.mn, args.loggers, args.duration or 10.0,
                             ack=args.ack, rate=args.rate)
        print(result)
        return 0
    logger = Hj212Logger(args.mn, args.pw, args.st, values=_values(args.values), ack=args.ack,
                         timeout=args.timeout, version=args.version)
    if args.serial:
        await logger.open_serial(args.serial)
    else:
        await logger.connect(args.host, args.port)
    try:
        await logger.run(args.interval, args.minute_interval, args.hour_interval, args.count, args.duration,
                         fault=args.fault, fault_every=args.fault_every)
    finally:
        await logger.close()
    stats = logger.stats
    print(f"sent {stats.sent}, answered {stats.answered}, retries {stats.retries}, timeouts {stats.timeouts}")
    return 0 if not stats.timeouts else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hardware_sim.hj212_logger", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9212)
    parser.add_argument("--serial", help="write to this serial port (or pty) instead of TCP")
    parser.add_argument("--mn", default="010000A8900016F000169DC0",
                        help="the station's MN; with --loggers N the prefix of MN{0000..N-1}")
    parser.add_argument("--pw", default="123456")
    parser.add_argument("--st", type=int, default=22)
    parser.add_argument("--version", type=int, choices=(2017, 2005), default=2017)
    parser.add_argument("--values", help="code=value,... (default: an ambient air station)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between real-time (2011) frames")
    parser.add_argument("--minute-interval", type=float, default=0.0, help="seconds between minute (2051) frames")
    parser.add_argument("--hour-interval", type=float, default=0.0, help="seconds between hour (2061) frames")
    parser.add_argument("--count", type=int, help="stop after this many real-time frames")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--no-ack", dest="ack", action="store_false", help="Flag=4: do not ask for answers")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    parser.add_argument("--fault", choices=("bad_crc", "truncated", "oversize", "garbage"))
    parser.add_argument("--fault-every", type=int, default=0, help="send the fault after every N frames")
    parser.add_argument("--loggers", type=int, default=1, help="bench: this many loggers at once")
    parser.add_argument("--flood", action="store_true", help="bench: send as fast as the agent takes it")
    parser.add_argument("--rate", type=float, default=0.0, help="bench: frames/s per logger (0: as fast as possible)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
