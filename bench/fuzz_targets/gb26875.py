"""GB/T 26875.3: the stream deframer, application data units, a channel with its device handler
(FireState behind it), and the `edge-agent decode gb26875` path.

Application data is mutated two ways: bytes anywhere, and object fields replaced (status words,
addresses, analog raw values, time labels with impossible dates, descriptions that are not
GB 18030) with the object count kept consistent; frames around it get the right length and
checksum, so a mutation reaches FireState instead of dying at the checksum.
"""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path
from typing import Any

from bench.fuzz_targets import seeds
from bench.fuzz_targets.base import Target
from bench.fuzz_targets.hexdecode import HexDecode
from bench.fuzz_targets.hj212 import check_printable
from bench.fuzz_targets.mutate import mutate_bytes, random_bytes

LABELS = (bytes(6), b"\xff" * 6, bytes((59, 59, 23, 31, 12, 99)), bytes((0, 0, 0, 29, 2, 23)),
          bytes((60, 60, 24, 32, 13, 255)), bytes((1, 2, 3, 4, 5, 0)))
WORDS = (0, 1, 0xFFFF, 0x8000, 0x0002, 0x0004, 0x2000, 0x2002, 0x7FFF)
TEXTS = (b"\x00" * 31, b"\xff" * 31, b"\x81" * 31, "烟感".encode("gb18030") + b"\x81", b"A" * 31,
         b"\x84\x31\xa4\x39" * 7 + b"\x84\x31\xa4", b"\xa1\xa1" * 15 + b"\x81")


def _field_mutation(rng: random.Random, app: bytes) -> bytes:
    """Object fields of a unit replaced, keeping the layout (see the module docstring)."""
    if len(app) < 2:
        return app
    out = bytearray(app)
    kind = out[0]
    sizes = {1: 10, 2: 46, 3: 16, 4: 10, 21: 7, 24: 8, 28: 6, 8: 8}
    size = sizes.get(kind)
    if size is None:
        return mutate_bytes(rng, app)
    objects = (len(out) - 2) // size
    if objects == 0:
        return app
    for _ in range(rng.randrange(1, 4)):
        at = 2 + rng.randrange(objects) * size
        what = rng.random()
        if what < 0.3:   # the time label (the last 6 bytes of most objects)
            out[at + size - 6:at + size] = rng.choice(LABELS)
        elif what < 0.55 and kind in (1, 2):
            offset = 2 if kind == 1 else 7
            out[at + offset:at + offset + 2] = struct.pack("<H", rng.choice(WORDS))
        elif what < 0.7 and kind == 2:
            out[at + 9:at + 40] = rng.choice(TEXTS)[:31].ljust(31, b"\x00")
        elif what < 0.8 and kind == 3:
            out[at + 7] = rng.randrange(256)   # analog type
            out[at + 8:at + 10] = struct.pack("<h", rng.choice((-32768, 32767, 0, -1)))
        else:
            out[at + rng.randrange(size)] = rng.randrange(256)
    if rng.random() < 0.3:   # more objects than the standard allows, or the count lying
        if rng.random() < 0.5:
            out += bytes(out[2:2 + size]) * rng.choice((2, 30, 110))
            out[1] = min(255, (len(out) - 2) // size)
        else:
            out[1] = rng.randrange(256)
    return bytes(out)


def app_input(rng: random.Random) -> bytes:
    units = seeds.gb26875_app_data()
    pick = rng.random()
    if pick < 0.1:
        return random_bytes(rng, 1100)
    if pick < 0.45:
        return mutate_bytes(rng, rng.choice(units), units, max_len=1024)
    return _field_mutation(rng, rng.choice(units))[:1024]


def frame_around(rng: random.Random, app: bytes) -> bytes:
    """A frame with the length and checksum right (the fire panel simulator's own encoder)."""
    from tests.hardware_sim import fire_panel as panel
    command = rng.choice((2, 2, 2, 2, 5, 3, 6, 1, 4, 200))
    source = rng.choice((889, 889, 889, 890, 0, (1 << 48) - 1))
    return panel.encode_frame(rng.randrange(65536) if rng.random() < 0.3 else rng.randrange(8), command, app,
                              source, 88888, rng.choice(LABELS + (bytes((1, 2, 3, 6, 5, 24)),)))


def stream_input(rng: random.Random) -> bytes:
    pick = rng.random()
    frames = seeds.gb26875_frames()
    if pick < 0.003:   # a peer streaming one pattern: up to the largest UDP datagram
        pattern = rng.choice((b"@@", b"@", b"@@" + bytes(28), rng.choice(frames), mutate_bytes(rng, rng.choice(frames))))
        size = rng.choice((4096, 16384, 65507))
        return (pattern * (size // max(1, len(pattern)) + 1))[:size]
    if pick < 0.1:
        return random_bytes(rng, 1100)
    if pick < 0.35:
        return mutate_bytes(rng, rng.choice(frames), frames)
    if pick < 0.8:
        return frame_around(rng, app_input(rng))
    parts = [frame_around(rng, app_input(rng)) if rng.random() < 0.5 else rng.choice(frames)
             for _ in range(rng.randrange(2, 5))]
    for i in range(len(parts)):
        if rng.random() < 0.25:
            parts[i] = parts[i][: rng.randrange(len(parts[i]) + 1)]
        if rng.random() < 0.2:
            parts[i] = rng.choice((b"@", b"@@", b"##", rng.randbytes(rng.randrange(1, 30)))) + parts[i]
    return b"".join(parts)


class DeframerTarget(Target):
    """``Deframer.feed``: frames and bad frames out of a byte stream, never an exception, never
    holding more than one maximal frame plus the last chunk; fed reads as large as a transport
    hands over at once (a TCP or serial read, a UDP datagram), each one callback on the loop."""

    name = "gb26875.deframer"
    share = 16

    def setup(self, workdir: Path) -> None:
        from bench.fuzz_targets.links import TCP_READ
        from firmware_bridges.gb26875 import frame
        self.frame = frame
        self.read_size = max(TCP_READ, 4 * frame.MAX_FRAME)   # a TCP read, or the largest datagram taken

    def generate(self, rng: random.Random) -> tuple[bytes, ...]:
        from bench.fuzz_targets.hj212 import reads
        return reads(rng, stream_input(rng), self.read_size)

    def to_bytes(self, case: tuple[bytes, ...]) -> bytes:
        return b"".join(case)

    def feed(self, case: tuple[bytes, ...]) -> None:
        deframer = self.frame.Deframer()
        self.items = []
        self.handler_cpu = 0.0
        for chunk in case:
            started = time.thread_time()
            items = deframer.feed(chunk)
            self.handler_cpu = max(self.handler_cpu, time.thread_time() - started)
            self.items += [item for item in items if isinstance(item, self.frame.Frame)]
            if deframer.pending > self.frame.MAX_FRAME + len(chunk):
                self.problem("deframer buffer unbounded", f"{deframer.pending} bytes after a {len(chunk)}-byte chunk")

    def check(self, case: tuple[bytes, ...]) -> None:
        items, self.items = getattr(self, "items", []), []
        for item in items:
            if isinstance(item, self.frame.Frame) and self.frame.parse(item.encode()) != item:
                self.problem("frame does not re-encode", repr(item)[:200])


class AppDataTarget(Target):
    """``appdata.parse`` (lenient, then strict) and its JSON view ``unit_dict``: AppDataError only."""

    name = "gb26875.appdata"
    share = 12

    @classmethod
    def exceptions(cls) -> tuple[type[BaseException], ...]:
        from firmware_bridges.gb26875.appdata import AppDataError
        return (AppDataError,)

    def setup(self, workdir: Path) -> None:
        from firmware_bridges.gb26875 import appdata
        self.appdata = appdata

    def generate(self, rng: random.Random) -> bytes:
        return app_input(rng)

    def feed(self, case: bytes) -> None:
        self.unit = None
        unit = self.appdata.parse(case)
        self.unit = self.appdata.unit_dict(unit)
        self.appdata.parse(case, strict=True)

    def check(self, case: bytes) -> None:
        if self.unit is not None:
            check_printable(self, self.unit)




class _DatagramTransport:
    """What the UDP port sends with: the answers are kept for the check."""

    def __init__(self, sent: list[bytes]):
        self.sent = sent

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)


class ChannelTarget(Target):
    """The GB/T 26875 runner's channel with two devices (address 889 with named systems, 890),
    their FireState kept across inputs, fed as the transport kit feeds it: reads of at most a
    TCP link's read buffer through a link's reading path (framer and session under the
    boundary; a new connection for each input: a finding's bytes hold its frames), or whole
    datagrams through the kit's UDP port with the runner's limits. Readings and events are
    checked by the sink; answers must be frames that parse (confirm or deny). Each read or
    datagram is one callback on the event loop."""

    name = "gb26875.channel"
    share = 15

    def setup(self, workdir: Path) -> None:
        from agent.core.config import DeviceConfig
        from agent.core.transport import UdpPort
        from bench.fuzz_targets.links import TCP_READ
        from bench.fuzz_targets.sink import CheckingSink
        from firmware_bridges.gb26875 import frame
        from firmware_bridges.gb26875.options import Options
        from firmware_bridges.gb26875.runner import Gb26875Runner

        self.frame = frame
        self.sink = CheckingSink(self.problem)
        members = []
        for device_id, address, extra in (("fire-889", 889, {"systems": {1: "fire alarm system", "10-1": "linkage"}}),
                                          ("fire-890", 890, {"max_component_points": 4})):
            config = DeviceConfig.model_validate({"id": device_id, "driver": "gb26875"})
            members.append((config, Options.model_validate({"udp": {"port": 9026}, "address": address, **extra})))
        self.runner = Gb26875Runner(members, self.sink)   # the kit's Bridge; its transport is not started
        self.channel = self.runner.channel
        self.sent: list[bytes] = []
        self.read_size = TCP_READ
        udp = self.runner.transport
        assert isinstance(udp, UdpPort)
        self.udp = udp
        self.udp.connection_made(_DatagramTransport(self.sent))
        self.forget_seen = False

    def generate(self, rng: random.Random) -> tuple[str, tuple[bytes, ...]]:
        data = stream_input(rng)
        if rng.random() < 0.2:
            return ("datagram", (data,))
        size = self.read_size
        return ("stream", tuple(data[i:i + size] for i in range(0, max(1, len(data)), size)))

    def to_bytes(self, case: tuple[str, tuple[bytes, ...]]) -> bytes:
        return b"".join(case[1])

    def again(self, case: tuple[str, tuple[bytes, ...]]) -> tuple[str, tuple[bytes, ...]]:
        """The same bytes, with the devices' memory of recent frames cleared: the second time a
        frame would be a duplicate, which skips the work being confirmed (operations, clears)."""
        self.forget_seen = True
        return case

    def feed(self, case: tuple[str, tuple[bytes, ...]]) -> None:
        from bench.fuzz_targets.links import BufferLink

        self.sent.clear()
        self.handler_cpu = 0.0
        if self.forget_seen:
            self.forget_seen = False
            for device in self.channel.devices:
                device.state._seen.clear()   # noqa: SLF001 - as if dedupe_window had passed
        mode, chunks = case
        link = BufferLink(self.runner) if mode == "stream" else None
        for chunk in chunks:
            started = time.thread_time()
            if link is None:
                self.udp.datagram_received(chunk, ("192.0.2.9", 4000))
            else:
                link.received(chunk)
            self.handler_cpu = max(self.handler_cpu, time.thread_time() - started)
        if link is not None:
            link.ended()
            if link.out:
                self.sent += list(_frames_in(bytes(link.out)))

    def check(self, case: tuple[str, tuple[bytes, ...]]) -> None:
        self.sink.check()
        for answer in self.sent:
            try:
                parsed = self.frame.parse(answer)
            except self.frame.FrameError as exc:
                self.problem("answer is not a valid frame", f"{exc}: {answer.hex()}")
                continue
            if parsed.command not in (3, 6):
                self.problem("answer is neither confirm nor deny", answer.hex())


def _frames_in(data: bytes):
    """The answers a link wrote, one frame each (a stream link writes them back to back)."""
    from firmware_bridges.gb26875.frame import Deframer, Frame
    for item in Deframer().feed(data):
        yield item.encode() if isinstance(item, Frame) else b"(not a frame)"


class Decode(HexDecode):
    """``edge-agent decode gb26875 HEX`` (:class:`~bench.fuzz_targets.hexdecode.HexDecode`)."""

    name = "gb26875.decode"
    protocol = "gb26875"

    def frame_bytes(self, rng: random.Random) -> bytes:
        return stream_input(rng) if rng.random() < 0.5 else frame_around(rng, app_input(rng))
