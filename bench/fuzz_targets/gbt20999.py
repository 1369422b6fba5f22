"""GB/T 20999-2017 (the signal-controller bridge's third path): the datagram and stream framers,
what a controller's frames do to the client's session (answers, traps, heartbeat queries, junk),
the values of a poll's answer through the link into readings, and `edge-agent decode gbt20999`.

Seeds: the captured device frames of the regression case, frames of the simulator's own encoder
(every object the bridge reads, error replies, traps), and those with their length and CRC made
right again after a mutation, so a mutation reaches the values instead of dying at the CRC.
"""

from __future__ import annotations

import asyncio
import random
import time
from functools import cache
from pathlib import Path
from typing import Any

from bench.fuzz_targets import seeds
from bench.fuzz_targets.base import Target
from bench.fuzz_targets.hexdecode import HexDecode
from bench.fuzz_targets.hj212 import reads
from bench.fuzz_targets.mutate import mutate_bytes, random_bytes

CASE = seeds.REPO / "firmware_bridges" / "signal_controller" / "testcases" / "gbt20999-captured-device-frames"
IDS = [(3, 3, 2, g) for g in (2, 4, 6, 8, 34, 36)] + [(13, 2, 2, 1), (13, 2, 3, 1), (13, 2, 4, 1), (6, 3, 2, 1),
                                                      (6, 3, 4, 1), (14, 1, 0, 0), (4, 2, 2, 2), (3, 2, 2, 2)]


@cache
def frames() -> tuple[bytes, ...]:
    from tests.hardware_sim import gbt20999_controller as sim

    captured = [bytes.fromhex(line.replace(" ", "")) for line in (CASE / "frames.hex").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    header = (0x0100, 1, 0, 0, 0)
    made = [sim.frame(0x20, header, 2, [(bytes(i), v)]) for i, v in zip(IDS, (
        b"\x20", b"\x10", b"\x30", b"\x01", b"\x21", b"\x10", b"\x23", b"\x01", b"\x02", b"\x20", b"\x00\x05",
        bytes(8), (1 << 1).to_bytes(8, "big"), b"\x01"))]
    made += [sim.frame(0x21, header, 2, [(bytes((17, 2, 1, 1)), b"\x30")]), sim.frame(0x40, header, 3, [(bytes((17, 1, 2, 1)), b"\x00")]),
             sim.frame(0x60, header, 0, [(bytes((15, 2, 2, 1)), b"\x10")]), sim.frame(0x70, header, 9, []),
             sim.frame(0x80, header, 9, [])]
    return tuple(captured + made)


def refit(data: bytes) -> bytes:
    """A mutated frame with its length and CRC right again (the simulator's CRC)."""
    from tests.hardware_sim.gbt20999_controller import crc

    if len(data) < 6:
        return data
    body = bytearray(data[:-3])
    body[0] = 0x7E
    length = len(body) - 1 + 2
    body[1:3] = length.to_bytes(2, "big")
    return bytes(body) + crc(bytes(body[1:])).to_bytes(2, "big") + b"\x7d"


def frame_input(rng: random.Random) -> bytes:
    pool = frames()
    pick = rng.random()
    if pick < 0.1:
        return random_bytes(rng, 600)
    if pick < 0.4:
        return mutate_bytes(rng, rng.choice(pool), pool)
    if pick < 0.85:
        return refit(mutate_bytes(rng, rng.choice(pool), pool))
    return b"".join(refit(mutate_bytes(rng, rng.choice(pool), pool)) if rng.random() < 0.5 else rng.choice(pool)
                    for _ in range(rng.randrange(2, 5)))


def stream_input(rng: random.Random) -> bytes:
    from firmware_bridges.signal_controller.gbt20999.codec import escape

    parts = [frame_input(rng) for _ in range(rng.randrange(1, 4))]
    return b"".join(escape(p) if len(p) > 1 and rng.random() < 0.8 else p for p in parts)


def baseline(ids: tuple[int, ...]) -> bytes:
    """A well-behaved controller's value where the input has none: phase p drives lamp groups p
    (vehicle) and 32 + p (pedestrian), as the simulator lays them out."""
    cls, obj, attr, elem = ids
    if (cls, obj, attr) == (4, 2, 2):
        return ((1 << (elem - 1)) | (1 << (elem + 31))).to_bytes(8, "big") if elem <= 32 else bytes(8)
    if (cls, obj, attr) == (3, 2, 2):
        return b"\x01" if elem <= 32 else b"\x03"
    if (cls, obj) == (14, 1):
        return bytes(8)
    return b"\x10"


class _Delivered(Target):
    """Inputs as the transport kit delivers them: one datagram, or reads of an escaped stream."""

    def generate(self, rng: random.Random) -> tuple[str, tuple[bytes, ...]]:
        if rng.random() < 0.5:
            return ("datagram", (frame_input(rng),))
        return ("stream", reads(rng, stream_input(rng), 8192))

    def to_bytes(self, case: tuple[str, tuple[bytes, ...]]) -> bytes:
        return b"".join(case[1])


class FramerTarget(_Delivered):
    """``DatagramFramer`` and ``StreamFramer``: frames and bad frames, never an exception, a buffer
    of at most one (escaped) maximal frame plus the chunk, and every frame re-encodes to itself."""

    name = "gbt20999.framer"
    share = 12

    def setup(self, workdir: Path) -> None:
        from firmware_bridges.signal_controller.gbt20999 import codec
        self.codec = codec


    def feed(self, case: tuple[str, tuple[bytes, ...]]) -> None:
        codec = self.codec
        mode, chunks = case
        framer = codec.DatagramFramer() if mode == "datagram" else codec.StreamFramer()
        self.items, self.handler_cpu = [], 0.0
        for chunk in chunks:
            started = time.thread_time()
            self.items += [i for i in framer.feed(chunk) if isinstance(i, codec.Frame)]
            self.handler_cpu = max(self.handler_cpu, time.thread_time() - started)
            if framer.pending > 2 * codec.MAX_FRAME + len(chunk):
                self.problem("framer buffer unbounded", f"{framer.pending} bytes after a {len(chunk)}-byte chunk")

    def check(self, case: Any) -> None:
        for item in getattr(self, "items", []):
            if self.codec.parse(self.codec.build(item)) != item:
                self.problem("frame does not re-encode", repr(item)[:200])


class ClientTarget(_Delivered):
    """A controller's bytes into the client's session, as the transport kit hands them over
    (a datagram, or reads of a TCP link), with a query in flight: answers that match or not,
    error replies, traps (alarms become events: the sink checks them), heartbeat queries
    (answered with a frame that must parse), junk. Then the values of a poll answer, taken from
    the same input, through ``Gbt20999Link.read_status`` and the runner into readings."""

    name = "gbt20999.client"
    share = 10

    @classmethod
    def exceptions(cls) -> tuple[type[BaseException], ...]:
        from firmware_bridges.signal_controller.errors import NoAnswer, Refused
        return (NoAnswer, Refused)

    def setup(self, workdir: Path) -> None:
        import yaml

        from agent.core.config import DeviceConfig
        from bench.fuzz_targets.sink import CheckingSink
        from firmware_bridges.signal_controller import DRIVER
        from firmware_bridges.signal_controller.gbt20999 import codec
        from firmware_bridges.signal_controller.runner import SignalRunner

        self.codec = codec
        self.sink = CheckingSink(self.problem)
        sample = yaml.safe_load((seeds.REPO / "firmware_bridges" / "signal_controller" / "sample.yaml").read_text())
        entry = next(d for d in sample["devices"] if d.get("protocol") == "gbt20999")
        device = DeviceConfig.model_validate(entry)
        self.runner = SignalRunner(device, DRIVER.options(device), self.sink)
        self.link = self.runner.link
        self.client = self.link.client
        self.loop = asyncio.new_event_loop()
        self.values: dict[tuple[int, int, int, int], bytes] = {}
        target = self

        async def query(ids: Any) -> dict[tuple[int, int, int, int], bytes]:
            return {tuple(i): target.values.get(tuple(i), baseline(tuple(i))) for i in ids}

        self.link.client.query = query   # the poll's answers come from the input


    def feed(self, case: tuple[str, tuple[bytes, ...]]) -> None:
        from bench.fuzz_targets.links import BufferLink

        codec = self.codec
        mode, chunks = case
        self.connection_transport = mode
        self.client.connection = self.client.connection.model_copy(update={"transport": "udp" if mode == "datagram" else "tcp"})
        link = BufferLink(self.client)
        self.out = link.out
        self.handler_cpu = 0.0
        answer = self.loop.create_future()
        from firmware_bridges.signal_controller.gbt20999.client import _Pending
        self.client._pending = _Pending(frozenset((0x20, 0x21)), frozenset(IDS[:1]), answer)   # noqa: SLF001
        for chunk in chunks:
            started = time.thread_time()
            link.received(chunk)
            if mode == "datagram":
                link.discard_partial("end of datagram")
            self.handler_cpu = max(self.handler_cpu, time.thread_time() - started)
        link.ended()
        self.client._pending = None   # noqa: SLF001
        answer.cancel()
        # the same frames' values as a poll's answers
        self.values = {}
        for chunk in chunks:
            for item in codec.DatagramFramer().feed(chunk):
                if isinstance(item, codec.Frame):
                    self.values.update({v.ids: v.value for v in item.values})
        self.link.layout = None
        self.link.stats.online = None
        status = self.loop.run_until_complete(self.link.read_status())
        self.runner._on_status(status)   # noqa: SLF001 - what the poll loop calls

    def check(self, case: Any) -> None:
        self.sink.check()
        for item in self.codec.StreamFramer().feed(bytes(self.out)) if self.client.connection.transport == "tcp" \
                else self.codec.DatagramFramer().feed(bytes(self.out)):
            if not isinstance(item, self.codec.Frame) or item.frame_type != 0x80:
                self.problem("an answer that is not a heartbeat reply", repr(item)[:200])

    def close(self) -> None:
        self.loop.close()


class Decode(HexDecode):
    """``edge-agent decode gbt20999 HEX`` (:class:`~bench.fuzz_targets.hexdecode.HexDecode`)."""

    name = "gbt20999.decode"
    protocol = "gbt20999"

    def frame_bytes(self, rng: random.Random) -> bytes:
        return stream_input(rng) if rng.random() < 0.3 else frame_input(rng)


class HoldRecordTarget(Target):
    """A hold record file as the next start reads it back (hold_record.py, agent/core/state.py):
    what a disk fault or a hand edit leaves. StateUnreadable (a ValueError) only; a record that
    parses must carry numbers the link can set."""

    name = "gbt20999.hold_record"
    share = 3
    on_loop = False   # read in a worker thread at start
    allowed = (ValueError,)

    def setup(self, workdir: Path) -> None:
        from agent.core.state import StateStore
        from firmware_bridges.signal_controller.gbt20999 import hold_record

        self.hold_record = hold_record
        self.store = StateStore(workdir / "hold-records")
        self.store.put("seed", hold_record.HoldRecord("tsc-gb", "gbt20999 udp 192.0.2.30:4050 road 1", 0x21, 2, 1,
                                                      1_795_283_001_484, 1_795_283_031_484).document())
        self.seeds = [self.store.path("seed").read_bytes(), b'{"format": 1}', b"[]", b"null"]
        self.record: Any = None

    def generate(self, rng: random.Random) -> bytes:
        if rng.random() < 0.1:
            return random_bytes(rng)
        return mutate_bytes(rng, rng.choice(self.seeds), self.seeds)

    def to_bytes(self, case: bytes) -> bytes:
        return case

    def feed(self, case: bytes) -> None:
        self.record = None
        self.store.path("case").write_bytes(case)
        self.record = self.hold_record.read(self.store, "case")

    def check(self, case: bytes) -> None:
        record = self.record
        if record is not None and not (0 <= record.run_mode <= 255 and 0 <= record.plan <= 255
                                       and 1 <= record.stage <= 255):
            self.problem("record out of range", repr(record)[:300])
