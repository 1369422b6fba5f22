"""HJ 212: the stream framer, a station behind its router, and the `edge-agent decode` path.

Inputs are frames of the seeds (regression cases, logger simulator) mutated two ways: bytes
anywhere (the length and CRC then mostly fail, which tests the framer), and fields of the data
segment replaced (header values, CP codes and values: boundary numbers, non-ASCII, long text,
fields dropped or repeated) with the length and CRC-16 fixed up afterwards, so the mutation
reaches the header checks, the reassembly and the mapping to readings.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson

from bench.fuzz_targets import seeds
from bench.fuzz_targets.base import Target
from bench.fuzz_targets.mutate import NUMBER_TEXTS, STRINGS, mutate_bytes, random_bytes

HEADER_KEYS = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")
CNS = ("2011", "2051", "2061", "2031", "2021", "2041", "2081", "1013", "9011", "9014", "1062", "0000", "99999")
SUFFIXES = ("Rtd", "ZsRtd", "Avg", "Min", "Max", "Cou", "ZsAvg", "Flag", "ZsFlag", "SampleTime", "RS", "RT", "EFlag")
TIMES = ("20240506070809", "20240230120000", "99991231235959", "00000000000000", "20240506", "2024050607080912345",
         "19700101000000", "20241301000000", "2024050607086x")


def _field_value(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.45:
        return rng.choice(NUMBER_TEXTS)
    if pick < 0.7:
        return rng.choice(STRINGS).replace(";", "").replace("&&", "&")
    if pick < 0.85:
        return rng.choice(TIMES)
    return rng.choice(("N", "F", "M", "S", "D", "C", "T", "B", "", "n", "NN"))


def mutate_segment(rng: random.Random, segment: str) -> str:
    """The segment with its header fields and CP fields changed (see the module docstring)."""
    head, sep, cp = segment.partition("CP=&&")
    fields = [f for f in head.split(";") if f]
    items = [i.split(",") for i in cp.removesuffix("&&").split(";")] if sep else []
    for _ in range(rng.choice((1, 1, 2, 3, 6))):
        what = rng.random()
        if what < 0.25 and fields:
            i = rng.randrange(len(fields))
            key = fields[i].partition("=")[0]
            value = (rng.choice(CNS) if key == "CN" and rng.random() < 0.6 else
                     rng.choice(("0", "1", "3", "4", "5", "6", "7", "255", "256", "-1")) if key == "Flag" else
                     _field_value(rng))
            fields[i] = f"{key}={value}"
        elif what < 0.3 and fields:
            fields.insert(rng.randrange(len(fields) + 1), f"{rng.choice(HEADER_KEYS)}={_field_value(rng)}")
        elif what < 0.35 and fields:
            del fields[rng.randrange(len(fields))]
        elif what < 0.42:
            fields.append(f"PNUM={rng.choice(('1', '2', '3', '0', '9999', '10000'))}")
            fields.append(f"PNO={rng.choice(('1', '2', '3', '0', '9999', '10000'))}")
            fields = [f if not f.startswith("Flag=") else f"Flag={rng.choice(('7', '6', '3'))}" for f in fields]
        elif what < 0.75 and items:
            item = rng.choice(items)
            j = rng.randrange(len(item))
            key = item[j].partition("=")[0] or "a34004-Rtd"
            item[j] = f"{key}={_field_value(rng)}"
        elif what < 0.85:
            code = rng.choice(("a34004", "a21026", "SB1", "w00000", "LA", "a" * 40, "x y", "中", "", "-", "a34004-x"))
            items.append([f"{code}-{rng.choice(SUFFIXES)}={_field_value(rng)}"])
        elif what < 0.9 and items:
            items.extend(items[: rng.randrange(len(items) + 1)] * rng.choice((1, 10)))
        elif what < 0.95:
            items.insert(0, [f"DataTime={rng.choice(TIMES)}"])
        elif items:
            del items[rng.randrange(len(items))]
    cp_text = ";".join(",".join(i) for i in items)
    return ";".join(fields) + ";CP=&&" + cp_text + "&&" if sep or rng.random() < 0.8 else ";".join(fields)




def transport_read() -> int:
    """The most bytes one callback of an HJ 212 transport hands to the framer: a TCP link's read
    buffer or the serial line's read, whichever is larger."""
    from agent.core.transport.limits import Limits
    return max(Limits().tcp_read, Limits().read_chunk)


TRANSPORT_READ = 256 * 1024   # the largest burst a flood input sends (asyncio's own read size)


def flood(rng: random.Random, pieces: tuple[bytes, ...]) -> bytes:
    """A peer streaming one pattern as fast as it can: 8 KiB to a whole read of it."""
    pattern = rng.choice(pieces)
    size = rng.choice((8192, 65536, TRANSPORT_READ))
    return (pattern * (size // max(1, len(pattern)) + 1))[:size]


def frame_input(rng: random.Random) -> bytes:
    """One input for the HJ 212 targets: a frame, a few frames, or noise."""
    segments = seeds.hj212_segments()
    pick = rng.random()
    if pick < 0.003:
        return flood(rng, (b"##1000", b"##0001x", b"##", b"#", rng.choice(seeds.hj212_frames()),
                           mutate_bytes(rng, rng.choice(seeds.hj212_frames()))))
    if pick < 0.08:
        return random_bytes(rng, 1500)
    if pick < 0.35:
        return mutate_bytes(rng, rng.choice(seeds.hj212_frames()), seeds.hj212_frames())
    if pick < 0.85:
        segment = mutate_segment(rng, rng.choice(segments)).encode("utf-8", "surrogatepass")
        frame = seeds.hj212_frame(segment)
        return mutate_bytes(rng, frame, rounds=1) if rng.random() < 0.1 else frame
    # a stream: frames with noise and cut frames between them
    parts = []
    for _ in range(rng.randrange(2, 5)):
        segment = mutate_segment(rng, rng.choice(segments)) if rng.random() < 0.5 else rng.choice(segments)
        frame = seeds.hj212_frame(segment.encode("utf-8", "surrogatepass"))
        if rng.random() < 0.2:
            frame = frame[: rng.randrange(len(frame))]
        parts.append(frame)
        if rng.random() < 0.3:
            parts.append(rng.choice((b"##", b"#", b"##0", b"\r\n", rng.randbytes(rng.randrange(20)))))
    return b"".join(parts)


def reads(rng: random.Random, data: bytes, limit: int) -> tuple[bytes, ...]:
    """The bytes as a transport might deliver them: whole, or cut at random places, and never
    more than ``limit`` bytes in one read."""
    if len(data) < 2 or rng.random() < 0.5:
        chunks: tuple[bytes, ...] = (data,)
    else:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 5))))
        chunks = tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]))
    return tuple(c[i:i + limit] for c in chunks for i in range(0, max(1, len(c)), limit))


class Framer(Target):
    """``StreamFramer.feed``: frames and frame errors out of a byte stream, never an exception,
    never holding more than one maximal frame plus the last chunk; fed reads as large as the
    transports read (one read is one callback on the event loop)."""

    name = "hj212.framer"
    share = 16

    def setup(self, workdir: Path) -> None:
        from firmware_bridges.hj212 import frame
        self.frame = frame
        self.read_size = transport_read()

    def generate(self, rng: random.Random) -> tuple[bytes, ...]:
        return reads(rng, frame_input(rng), self.read_size)

    def to_bytes(self, case: tuple[bytes, ...]) -> bytes:
        return b"".join(case)

    def feed(self, case: tuple[bytes, ...]) -> None:
        framer = self.frame.StreamFramer()
        items = 0
        self.handler_cpu = 0.0
        for chunk in case:
            started = time.thread_time()
            out = framer.feed(chunk)
            self.handler_cpu = max(self.handler_cpu, time.thread_time() - started)
            items += len(out)
            if framer.pending > self.frame.MAX_FRAME_BYTES + len(chunk):
                self.problem("framer buffer unbounded", f"{framer.pending} bytes held after a {len(chunk)}-byte chunk")
        if framer.frames + framer.errors != items:
            self.problem("framer counters", f"{framer.frames} frames + {framer.errors} errors for {items} items")


class StationTarget(Target):
    """Bytes of one connection through the transport kit's reading path (framer, the stations'
    session and router, stations configured like the regression cases, split reassembly,
    mapping) into a sink that checks every reading and event; every answer written back must be
    a valid frame with a valid header."""

    name = "hj212.station"
    share = 15

    def setup(self, workdir: Path) -> None:
        import yaml

        from bench.fuzz_targets.sink import CheckingSink
        from firmware_bridges.hj212 import frame
        from firmware_bridges.hj212.options import Options
        from firmware_bridges.hj212.runner import StationsRunner
        from firmware_bridges.hj212.station import Station

        self.frame = frame
        self.read_size = transport_read()
        self.sink = CheckingSink(self.problem)
        stations = []
        for i, case in enumerate(sorted(p for p in seeds.HJ212_CASES.iterdir() if p.is_dir())):
            options = yaml.safe_load((case / "options.yaml").read_text()) or {}
            options.setdefault("listen", {"port": 9212})
            if any(s.mn == str(options["mn"]) for s in stations):
                continue
            options.update(flag_points=True, time_sync=True)
            stations.append(Station(f"station-{i}", Options.model_validate(options), self.sink,
                                    "123456" if i % 2 else None))
        # the runner is the kit's Bridge: a link's session is the stations' StreamSession
        self.bridge = StationsRunner("fuzz", stations, self.sink)
        self.router = self.bridge.router
        self.recover()

    def generate(self, rng: random.Random) -> tuple[bytes, ...]:
        return reads(rng, frame_input(rng), self.read_size)

    def to_bytes(self, case: tuple[bytes, ...]) -> bytes:
        return b"".join(case)

    def feed(self, case: tuple[bytes, ...]) -> None:
        self.handler_cpu = 0.0
        for chunk in case:   # one read, one callback of the transport
            started = time.thread_time()
            self.link.received(chunk)
            self.handler_cpu = max(self.handler_cpu, time.thread_time() - started)
        self.answers, self.link.out = bytes(self.link.out), bytearray()
        now = time.monotonic()
        for station in self.router.stations.values():
            station.tick(now)

    def check(self, case: tuple[bytes, ...]) -> None:
        self.sink.check()
        answers, self.answers = self.answers, b""
        if answers:
            for item in self.frame.StreamFramer().feed(answers):
                problem = self.frame.check_header(item) if isinstance(item, self.frame.Frame) else item
                if problem is not None:
                    self.problem("answer is not a valid frame", f"{problem}: {answers[:200]!r}")

    def recover(self) -> None:
        from bench.fuzz_targets.links import BufferLink
        self.link = BufferLink(self.bridge)


class Decode(Target):
    """``drivers.get_driver('hj212').decode(text)``, the `edge-agent decode hj212 FRAME` path:
    a frame as text (argv: non-UTF-8 bytes arrive surrogate-escaped), with or without a typed
    ``\\r\\n``, or as hex. ValueError only; what it returns must print as the CLI prints it."""

    name = "hj212.decode"
    share = 5
    allowed = (ValueError,)
    on_loop = False

    def setup(self, workdir: Path) -> None:
        from agent.core.registry import get_driver
        self.driver = get_driver("hj212")

    def generate(self, rng: random.Random) -> str:
        data = frame_input(rng)
        style = rng.random()
        if style < 0.2:
            sep = rng.choice(("", " ", ":"))
            return data.hex(sep) if sep else data.hex()
        text = data.decode("utf-8", "surrogateescape")
        if style < 0.5:
            text = text.replace("\r\n", "\\r\\n")
        elif style < 0.6:
            text = text.rstrip("\r\n") + "\n"
        return text

    def to_bytes(self, case: str) -> bytes:
        return case.encode("utf-8", "surrogateescape")

    def feed(self, case: str) -> None:
        self.decoded = self.driver.decode(case)

    def check(self, case: str) -> None:
        decoded, self.decoded = getattr(self, "decoded", None), None
        if decoded is not None:
            check_printable(self, decoded)


def check_printable(target: Target, decoded: Any) -> None:
    """What agent/cli.py cmd_decode does with a decoded frame: orjson, or the wire's safe copy."""
    from agent.wire import safe_data
    try:
        orjson.dumps(decoded, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        try:
            orjson.dumps(safe_data(decoded), option=orjson.OPT_INDENT_2)
        except TypeError as exc:
            target.problem("decoded output the CLI cannot print", str(exc))
