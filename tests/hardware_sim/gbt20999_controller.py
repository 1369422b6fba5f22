"""Hardware-in-the-loop GB/T 20999-2017 signal controller on UDP and/or TCP.

It runs the NTCIP simulator's controller (:class:`tests.hardware_sim.signal_controller.Controller`:
the same fixed-time plan, so it stays in step with the camera simulator) and serves it the way a
Chinese controller does: lamp-group states, phases, stages, run mode, plan, detectors; a centre
may hold a stage (11.01.02.r), set the run mode (11.01.04.r) and the plan (11.01.03.r).

On RS-232 (``serial=``, the simulator's end of a :class:`tests.hardware_sim.pty.PtyPair`) it
answers escaped frames, as on TCP.

Its frame code is written here on its own, from the frame layout (not imported from the bridge),
so a bug in the bridge's codec cannot hide behind the same bug here. Like the captured device
(东土正创) it answers with seq + 1 by default, and 11.02/11.03/11.04 "does not exist".

Layout it serves: vehicle phase p drives lamp group p (type 1), a pedestrian head p lamp group
32 + p (type 3); stage s is the plan's s-th stage; detector d sits on phase d (present while the
phase is not green, one vehicle counted per green). Run mode starts at 0x21 (local fixed time),
plan at 1. Holding stage s serves it like the NTCIP simulator's preempt s: all its phases turn
green after a yellow and an all-red (or keep the green they have) and stay green until the hold ends; the run mode then shows
0x15 (centre manual). Setting a run mode other than 0x15 ends the hold.

Faults (:attr:`Gbt20999Sim.fault`): ``None``; ``"silent"`` (no answer); ``"error"`` (every query
answered 0x21 "general error", every set 0x41 "control failed"); ``"garbage"`` (bytes that are not
a frame instead of the answer); ``"bad_crc"``; and :meth:`Gbt20999Sim.cut` / :meth:`restore` for a
link lost and back (UDP: nothing in or out; TCP: connections closed and refused). ``echo_seq``
False (default) answers seq + 1 as the captured device does.

Usage::

    sim = Gbt20999Sim(FAST_PLAN, udp=("127.0.0.1", 0), tcp=("127.0.0.1", 0))
    await sim.start(); sim.udp_address, sim.tcp_address
    with Gbt20999Sim(...).run_in_thread() as sim: ...

From the command line: ``python -m tests.hardware_sim.gbt20999_controller --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from tests.hardware_sim.signal_controller import (
    DEFAULT_PLAN, PLANS, Controller, Plan, ThreadedSignalSim, _hostport, serve_until_interrupted,
)

RUN_MODES = set(range(0x11, 0x16)) | set(range(0x21, 0x26)) | {0x31, 0x32, 0x33}
PED_GROUP = 32
QUERY, QUERY_REPLY, QUERY_ERROR, SET, SET_REPLY, SET_ERROR, TRAP, HEARTBEAT, HEARTBEAT_REPLY = (
    0x10, 0x20, 0x21, 0x30, 0x40, 0x41, 0x60, 0x70, 0x80)
NOT_EXIST, BAD_VALUE, READ_ONLY, GENERAL, CONTROL_FAILED = 0x30, 0x10, 0x20, 0x40, 0x50


def crc(data: bytes) -> int:
    """CRC-16, polynomial 0x1005, initial 0, MSB first, written bit by bit from its definition."""
    reg = 0
    for byte in data:
        for bit in range(7, -1, -1):
            top = (reg >> 15) ^ (byte >> bit & 1)
            reg = (reg << 1) & 0xFFFF
            if top:
                reg ^= 0x1005
    return reg


def frame(kind: int, header: tuple[int, int, int, int, int], seq: int, values: list[tuple[bytes, bytes]]) -> bytes:
    """header: (version, centre, controller, road, unused); values: (4 id bytes, value bytes)."""
    version, centre, controller, road, _ = header
    data = b"".join(bytes((i, 4 + len(v))) + ids + v for i, (ids, v) in enumerate(values, 1))
    body = struct.pack(">HBIBBBB", version, centre, controller, road, seq & 0xFF, kind, len(values)) + data
    length = len(body) + 2
    unit = struct.pack(">H", length) + body
    return b"\x7e" + unit + struct.pack(">H", crc(unit)) + b"\x7d"


def unframe(raw: bytes) -> tuple[int, tuple[int, int, int, int, int], int, list[tuple[bytes, bytes]]] | None:
    """(type, header, seq, values) of a valid unescaped frame, else None."""
    if len(raw) < 17 or raw[0] != 0x7E or raw[-1] != 0x7D or struct.unpack(">H", raw[1:3])[0] + 4 != len(raw):
        return None
    if crc(raw[1:-3]) != struct.unpack(">H", raw[-3:-1])[0]:
        return None
    version, centre, controller, road, seq, kind, count = struct.unpack(">HBIBBBB", raw[3:14])
    values, at = [], 14
    for _ in range(count):
        if at + 6 > len(raw) - 3:
            return None
        size = raw[at + 1]
        values.append((raw[at + 2:at + 6], raw[at + 6:at + 2 + size]))
        at += 2 + size
    return kind, (version, centre, controller, road, 0), seq, values


def escape(raw: bytes) -> bytes:
    inner = raw[1:-1].replace(b"\x5c", b"\x5c\x5c").replace(b"\x7e", b"\x5c\x7e").replace(b"\x7d", b"\x5c\x7d")
    return raw[:1] + inner + raw[-1:]


def unescape_stream(buffer: bytearray) -> list[bytes]:
    """Whole escaped frames cut from ``buffer`` (consumed), unescaped."""
    out = []
    while True:
        start = buffer.find(b"\x7e")
        if start < 0:
            buffer.clear()
            return out
        del buffer[:start]
        i, body = 1, bytearray(b"\x7e")
        while i < len(buffer):
            byte = buffer[i]
            if byte == 0x5C and i + 1 < len(buffer):
                body.append(buffer[i + 1])
                i += 2
                continue
            if byte == 0x5C:
                return out          # wait for the escaped byte
            body.append(byte)
            i += 1
            if byte == 0x7D:
                break
        else:
            return out
        del buffer[:i]
        out.append(bytes(body))


class Gbt20999Sim:
    def __init__(self, plan: Plan = DEFAULT_PLAN, *, udp: tuple[str, int] | None = ("127.0.0.1", 0),
                 tcp: tuple[str, int] | None = None, serial: str | None = None,
                 clock: Callable[[], float] = time.time,
                 echo_seq: bool = False, plans: tuple[int, ...] = (1, 2)):
        stages = {s: tuple(stage.phases) for s, stage in enumerate(plan.stages, 1)}   # a held stage: all its phases green
        self.controller = Controller(plan, stages, clock)
        self.udp_bind, self.tcp_bind = udp, tcp
        self.serial_path = serial          # the simulator's end of a pty pair (RS-232: escaped frames)
        self._serial_fd: int | None = None
        self._serial_buffer = bytearray()
        self.echo_seq = echo_seq
        self.plans = plans
        self.fault: str | None = None
        self.run_mode = 0x21
        self.plan_number = 1
        self.held_stage: int | None = None
        self.log: list[tuple[float, str, Any]] = []     # (time, what, value): sets as they landed
        self.requests = 0
        self.kinds: dict[int, int] = {}                 # frame type -> how many were received
        self._cut = False
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._centres: set[Any] = set()
        self.udp_address: tuple[str, int] | None = None
        self.tcp_address: tuple[str, int] | None = None
        self._greens: dict[int, int] = {}
        self._last_colours: dict[int, str] = {}

    @property
    def plan(self) -> Plan:
        return self.controller.plan

    def view(self) -> Any:
        return self.controller.view()

    # -- the objects --------------------------------------------------------------------------------

    def _stage_now(self) -> tuple[int, int, int]:
        """(current stage, stage state, remaining s)."""
        c = self.controller
        view = c.view()
        if view.mode != "plan" and c.active is not None:
            return c.active, 0x20 if view.mode == "dwell" else 0x30, 0
        index, offset = c.plan.locate(c.plan_time())
        stage = c.plan.stages[index]
        return index + 1, 0x20 if offset < stage.green else 0x30, max(0, round(stage.duration - offset))

    def _count_greens(self, vehicles: dict[int, str]) -> None:
        for p, colour in vehicles.items():
            if colour == "green" and self._last_colours.get(p) != "green":
                self._greens[p] = self._greens.get(p, 0) + 1
        self._last_colours = dict(vehicles)

    def read(self, ids: bytes) -> bytes | int:
        """A value's bytes, or an error code."""
        cls, obj, attr, elem = ids
        view = self.controller.view()
        plan = self.plan
        self._count_greens(view.vehicles)
        lamp = {"green": 0x20, "yellow": 0x30, "red": 0x10}
        ped = {"walk": 0x20, "flashing": 0x21, "dont_walk": 0x10}
        if (cls, obj, attr) == (3, 1, 0):
            return bytes((PED_GROUP + max(plan.peds or (0,)),))
        if (cls, obj, attr) == (3, 2, 2):
            if elem in plan.phases:
                return b"\x01"
            if elem - PED_GROUP in plan.peds:
                return b"\x03"
            return NOT_EXIST
        if (cls, obj, attr) == (3, 3, 2):
            if elem in plan.phases:
                return bytes((lamp[view.vehicles[elem]],))
            if elem - PED_GROUP in plan.peds:
                return bytes((ped[view.peds[elem - PED_GROUP]],))
            return NOT_EXIST
        if (cls, obj, attr) == (4, 2, 2):
            if elem not in plan.phases and elem not in plan.peds:
                return NOT_EXIST
            groups = (1 << (elem - 1) if elem in plan.phases else 0) | (
                1 << (PED_GROUP + elem - 1) if elem in plan.peds else 0)
            return groups.to_bytes(8, "big")
        if (cls, obj, attr) == (6, 2, 2):
            if not 1 <= elem <= len(plan.stages):
                return NOT_EXIST
            return sum(1 << (p - 1) for p in plan.stages[elem - 1].phases).to_bytes(8, "big")
        if cls == 6 and obj == 3 and attr in (2, 3, 4):
            if not 1 <= elem <= len(plan.stages):
                return NOT_EXIST
            current, state, remaining = self._stage_now()
            if attr == 2:
                return bytes((state if elem == current else 0x10,))
            return (remaining if elem == current else 0).to_bytes(2, "big") if attr == 4 else b"\x00\x00"
        if cls == 13 and obj == 2 and elem == 1:
            if attr == 2:
                return bytes((self.run_mode,))
            if attr == 3:
                return bytes((self.plan_number,))
            if attr == 4:
                return bytes((self._stage_now()[0],))
        if (cls, obj, attr, elem) == (14, 1, 0, 0):
            return sum(1 << (p - 1) for p, c in view.vehicles.items() if c != "green").to_bytes(8, "big")
        if (cls, obj, attr) == (14, 2, 2) and elem in plan.phases:
            return self._greens.get(elem, 0).to_bytes(2, "big")
        return NOT_EXIST

    def write(self, ids: bytes, value: bytes) -> int:
        """Set an object; 0 when done, else an error code."""
        cls, obj, attr, elem = ids
        if (cls, obj) != (17, 1) or elem != 1:
            return NOT_EXIST if cls == 17 else READ_ONLY
        if len(value) != 1:
            return 0x11
        number = value[0]
        c = self.controller
        if attr == 2:                                   # specified stage
            if not 1 <= number <= len(self.plan.stages):
                return BAD_VALUE
            for s in c.preempts:
                c.set_input(s, s == number)
            self.held_stage, self.run_mode = number, 0x15
        elif attr == 3:                                 # specified plan
            if number not in self.plans:
                return BAD_VALUE
            self.plan_number = number
        elif attr == 4:                                 # specified run mode
            if number not in RUN_MODES:
                return BAD_VALUE
            if number != 0x15:
                for s in c.preempts:
                    c.set_input(s, False)
                self.held_stage = None
            self.run_mode = number
        else:
            return READ_ONLY
        self.log.append((time.time(), {2: "stage", 3: "plan", 4: "run_mode"}[attr], number))
        return 0

    def answer(self, raw: bytes) -> bytes | None:
        """The answer to one unescaped frame (None: no answer)."""
        parsed = unframe(raw)
        if parsed is None:
            return None
        kind, header, seq, values = parsed
        self.requests += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        out_seq = seq if self.echo_seq else seq + 1
        if self.fault == "silent":
            return None
        if self.fault == "garbage":
            return b"\x7e\x00\x03garbage\x7d\x00\x7e\x7e"
        if kind == HEARTBEAT:
            return frame(HEARTBEAT_REPLY, header, out_seq, [])
        if kind not in (QUERY, SET):
            return None
        if self.fault == "error":
            code = GENERAL if kind == QUERY else CONTROL_FAILED
            return frame(kind + 0x11, header, out_seq, [(ids, bytes((code,))) for ids, _ in values[:1]])
        errors, answers = [], []
        with self.controller.lock:
            for ids, value in values:
                if kind == QUERY:
                    got = self.read(ids)
                    (errors.append((ids, bytes((got,)))) if isinstance(got, int) else answers.append((ids, got)))
                else:
                    status = self.write(ids, value)
                    (errors.append((ids, bytes((status,)))) if status else answers.append((ids, b"\x00")))
        reply = (frame(kind + 0x11, header, out_seq, errors) if errors
                 else frame(kind + 0x10, header, out_seq, answers))
        if self.fault == "bad_crc":
            reply = reply[:-3] + bytes((reply[-3] ^ 0xFF,)) + reply[-2:]
        return reply

    def send_trap(self, values: list[tuple[bytes, bytes]]) -> int:
        """A 0x60 report to every centre heard from; how many it went to."""
        raw = frame(TRAP, (0x0100, 1, 0, 0, 0), 0, values)
        sent = 0
        if self._udp is not None:
            for address in self._centres:
                self._udp.sendto(raw, address)
                sent += 1
        for writer in list(self._writers):
            writer.write(escape(raw))
            sent += 1
        if self._serial_fd is not None:
            os.write(self._serial_fd, escape(raw))
            sent += 1
        return sent

    # -- link faults ----------------------------------------------------------------------------

    def cut(self) -> None:
        """The link is lost: UDP drops everything, TCP closes its connections and refuses new ones."""
        self._cut = True
        if self._loop is not None:   # callable from any thread: the sockets are the sim loop's
            self._loop.call_soon_threadsafe(self._abort_all)

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self._cut = False

    # -- serving --------------------------------------------------------------------------------

    async def start(self) -> "Gbt20999Sim":
        loop = self._loop = asyncio.get_running_loop()
        if self.udp_bind:
            sim = self

            class Udp(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    if sim._cut:
                        return
                    sim._centres.add(addr)
                    reply = sim.answer(data)
                    if reply and sim._udp is not None:
                        sim._udp.sendto(reply, addr)

            self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=self.udp_bind)
            self.udp_address = self._udp.get_extra_info("sockname")[:2]
        if self.tcp_bind:
            self._tcp = await asyncio.start_server(self._serve_tcp, *self.tcp_bind)
            self.tcp_address = self._tcp.sockets[0].getsockname()[:2]
        if self.serial_path:
            self._serial_fd = os.open(self.serial_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            loop.add_reader(self._serial_fd, self._serial_readable)
        return self

    def _serial_readable(self) -> None:
        assert self._serial_fd is not None
        try:
            data = os.read(self._serial_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            return          # the other end closed: keep the port, it may come back
        self._serial_buffer += data
        for raw in unescape_stream(self._serial_buffer):
            reply = None if self._cut else self.answer(raw)
            if reply:
                os.write(self._serial_fd, reply if self.fault == "garbage" else escape(reply))

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        self._writers.add(writer)
        buffer = bytearray()
        try:
            while not self._cut:
                data = await reader.read(4096)
                if not data:
                    break
                buffer += data
                for raw in unescape_stream(buffer):
                    reply = None if self._cut else self.answer(raw)
                    if reply:
                        writer.write(reply if self.fault == "garbage" else escape(reply))
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def stop(self) -> None:
        if self._serial_fd is not None:
            asyncio.get_running_loop().remove_reader(self._serial_fd)
            os.close(self._serial_fd)
            self._serial_fd = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
            self._tcp = None

    def run_in_thread(self, timeout: float = 10.0) -> ThreadedSignalSim:
        return ThreadedSignalSim(self).start(timeout)   # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.hardware_sim.gbt20999_controller",
        description="GB/T 20999-2017 signal controller simulator: the NTCIP simulator's fixed-time plan, "
                    "lamp groups, stages, run mode and plan over UDP and TCP; a centre may hold a stage.")
    parser.add_argument("--udp", default="127.0.0.1:4050", help="UDP host:port, or 'off' (default %(default)s)")
    parser.add_argument("--tcp", default="127.0.0.1:8881", help="TCP host:port, or 'off' (default %(default)s)")
    parser.add_argument("--serial", metavar="PATH", help="also serve RS-232 on this serial port (or a pty's end)")
    parser.add_argument("--plan", choices=sorted(PLANS), default="default", help="timing plan (default %(default)s)")
    parser.add_argument("--echo-seq", action="store_true", help="echo the sequence number (default: seq + 1, "
                        "as the captured device answers)")
    parser.add_argument("--fault", choices=("silent", "error", "garbage", "bad_crc"), help="start with this fault")
    args = parser.parse_args(argv)
    sim = Gbt20999Sim(PLANS[args.plan], udp=None if args.udp == "off" else _hostport(args.udp),
                      tcp=None if args.tcp == "off" else _hostport(args.tcp), serial=args.serial,
                      echo_seq=args.echo_seq)
    sim.fault = args.fault

    def started() -> None:
        if sim.udp_address:
            print(f"GB/T 20999 udp {sim.udp_address[0]}:{sim.udp_address[1]} (unescaped frames)", flush=True)
        if sim.tcp_address:
            print(f"GB/T 20999 tcp {sim.tcp_address[0]}:{sim.tcp_address[1]} (escaped frames)", flush=True)
        if sim.serial_path:
            print(f"GB/T 20999 serial {sim.serial_path} (escaped frames)", flush=True)
        stages = ", ".join(f"stage {s}: phases {'+'.join(map(str, st.phases))}" for s, st in enumerate(sim.plan.stages, 1))
        print(f"plan {args.plan}: cycle {sim.plan.cycle:g}s; {stages}; road 1", flush=True)

    def shown() -> str:
        view = sim.view()
        lights = " ".join(f"{p}:{c}" for p, c in view.vehicles.items())
        return (f"mode {sim.run_mode:#04x} {view.mode:5} {lights}"
                + (f"  held stage {sim.held_stage}" if sim.held_stage else ""))

    return serve_until_interrupted(sim, started, shown)


if __name__ == "__main__":
    sys.exit(main())
