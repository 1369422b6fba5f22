"""GB/T 26875.3-2011 packets: layout, checksum, building, strict parsing and stream resynchronisation.

Layout (clause 6.6, "数据包结构"), multi-byte fields low byte first::

    offset  size  field
    0       2     start '@@' (0x40 0x40)
    2       2     serial number (业务流水号): the sender numbers its frames; the answer echoes it
    4       1     main protocol version (fixed 1)
    5       1     user protocol version
    6       6     time label: s, min, h, day, month, year-2000 (clause 8.2.2)
    12      6     source address
    18      6     destination address
    24      2     application data length, at most 1024
    26      1     command byte: 1 control, 2 send data, 3 confirm, 4 request, 5 response, 6 deny
    27      L     application data (empty for confirm/deny and for heartbeats)
    27+L    1     checksum: low 8 bits of the sum of bytes 2 .. 26+L
    28+L    2     end '##' (0x23 0x23)

So a frame is 30 + L bytes, 30 .. 1054.

:func:`parse` checks one frame strictly and says what is wrong at which offset (the decode CLI).
:class:`Deframer` cuts frames out of a byte stream (TCP, serial) with garbage, partial and
corrupted frames in it: it never holds more than one maximum frame plus one read, and it never
lets a bogus start marker hide a valid frame that follows (see :meth:`Deframer.feed`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import IntEnum

from agent.core.transport.contract import BufferedFramer

START = b"@@"
END = b"##"
HEADER_LEN = 27            # start marker + control unit (clause 6.6)
TRAILER_LEN = 3            # checksum + end marker
OVERHEAD = HEADER_LEN + TRAILER_LEN
MAX_APP_LEN = 1024         # clause 6.6: "应用数据单元长度 ... 不应大于1024"
MAX_FRAME = OVERHEAD + MAX_APP_LEN
MAX_ADDRESS = (1 << 48) - 1

_HEADER = struct.Struct("<2sHBB6s6s6sHB")   # start, serial, main, user, time, src, dst, length, command


class Command(IntEnum):
    """Command byte (clause 6.6, table of 命令字节). 7..127 reserved, 128..255 user-defined."""

    CONTROL = 1      # 控制命令: centre -> device (e.g. clock sync, initialise, duty check)
    SEND_DATA = 2    # 发送数据: device -> centre, answered with CONFIRM
    CONFIRM = 3      # 确认
    REQUEST = 4      # 请求: centre -> device, answered with RESPONSE
    RESPONSE = 5     # 应答
    DENY = 6         # 否认


COMMAND_NAMES = {c.value: c.name.lower() for c in Command}


def checksum(data: bytes | bytearray | memoryview) -> int:
    """Clause 6.6: the arithmetic sum of the bytes, carries above 8 bits dropped."""
    return sum(data) & 0xFF


# -- time labels (clause 8.2.2) ------------------------------------------------------------------

def encode_time(when: datetime) -> bytes:
    """A time label as the device's clock would write it: the wall-clock fields of ``when``."""
    return bytes((when.second, when.minute, when.hour, when.day, when.month, when.year % 100))


def decode_time(label: bytes, utc_offset_h: float = 8.0) -> datetime | None:
    """The time a label names, in the device's zone (China Standard Time unless configured).
    None for an impossible date (an all-zero label is what clockless devices send)."""
    if len(label) != 6:
        return None
    s, mi, h, d, mo, y = label
    try:
        return datetime(2000 + y, mo, d, h, mi, s, tzinfo=timezone(timedelta(hours=utc_offset_h)))
    except ValueError:
        return None


def time_label_text(label: bytes, utc_offset_h: float = 8.0) -> str | None:
    when = decode_time(label, utc_offset_h)
    return when.isoformat() if when else None


def now_label(utc_offset_h: float = 8.0) -> bytes:
    return encode_time(datetime.now(timezone(timedelta(hours=utc_offset_h))))


# -- addresses --------------------------------------------------------------------------------

def address_bytes(value: int) -> bytes:
    return value.to_bytes(6, "little")


def address_wire(value: int) -> str:
    """The address as its six bytes appear in a capture, low byte first: '79 03 00 00 00 00'."""
    return address_bytes(value).hex(" ")


# -- frames -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Frame:
    """One checked frame. Addresses are the 48-bit values of the little-endian fields."""

    serial: int
    version: tuple[int, int]     # (main, user)
    time_label: bytes            # 6 raw bytes, see decode_time
    source: int
    destination: int
    command: int
    app_data: bytes

    @property
    def command_name(self) -> str:
        return COMMAND_NAMES.get(self.command, "user-defined" if self.command >= 128 else "reserved")

    def encode(self) -> bytes:
        return build(self.serial, self.command, self.app_data, source=self.source,
                     destination=self.destination, time_label=self.time_label, version=self.version)

    def answer(self, command: int, app_data: bytes = b"", *, time_label: bytes | None = None) -> bytes:
        """A confirm/deny/response to this frame: the same serial number, source and destination
        swapped (clause 6.6: the answering side returns the serial number of the frame it answers)."""
        return build(self.serial, command, app_data, source=self.destination, destination=self.source,
                     time_label=time_label, version=self.version)


def build(serial: int, command: int, app_data: bytes = b"", *, source: int, destination: int,
          time_label: bytes | None = None, version: tuple[int, int] = (1, 1)) -> bytes:
    """Encode a frame. Raises ValueError for a field out of range."""
    if not 0 <= serial <= 0xFFFF:
        raise ValueError(f"serial number {serial} is not 0..65535")
    if len(app_data) > MAX_APP_LEN:
        raise ValueError(f"application data of {len(app_data)} bytes exceeds {MAX_APP_LEN}")
    for name, value in (("source", source), ("destination", destination)):
        if not 0 <= value <= MAX_ADDRESS:
            raise ValueError(f"{name} address {value} does not fit in 6 bytes")
    label = now_label() if time_label is None else time_label
    if len(label) != 6:
        raise ValueError("a time label is 6 bytes")
    body = _HEADER.pack(START, serial, version[0], version[1], label, address_bytes(source),
                        address_bytes(destination), len(app_data), command)[2:] + bytes(app_data)
    return START + body + bytes((checksum(body),)) + END


class FrameError(ValueError):
    """A frame that is not valid; ``offset`` is the byte (from the first '@') where it went wrong."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"at byte {offset}: {message}")
        self.offset = offset
        self.reason = message


def _header(data: bytes | bytearray) -> Frame:
    """The control unit of a frame whose length, end marker and checksum were checked."""
    _, serial, main, user, label, src, dst, length, command = _HEADER.unpack_from(data, 0)
    return Frame(serial=serial, version=(main, user), time_label=bytes(label),
                 source=int.from_bytes(src, "little"), destination=int.from_bytes(dst, "little"),
                 command=command, app_data=bytes(data[HEADER_LEN:HEADER_LEN + length]))


def parse(data: bytes) -> Frame:
    """Exactly one frame, checked field by field. Raises FrameError naming the offset."""
    if len(data) < 2 or data[:2] != START:
        raise FrameError(f"expected the start marker '@@' (40 40), found {data[:2].hex(' ') or 'nothing'}", 0)
    if len(data) < HEADER_LEN:
        raise FrameError(f"the frame ends after {len(data)} bytes; the header alone is {HEADER_LEN} "
                         f"and the shortest frame {OVERHEAD}", len(data))
    length = int.from_bytes(data[24:26], "little")
    if length > MAX_APP_LEN:
        raise FrameError(f"bad length: application data length {length} exceeds {MAX_APP_LEN}", 24)
    total = OVERHEAD + length
    if len(data) < total:
        raise FrameError(f"bad length: the length field (byte 24) says {length} bytes of application data, "
                         f"so the frame is {total} bytes, but only {len(data)} were given "
                         f"(missing '##' or a truncated frame)", len(data))
    end = data[total - 2:total]
    if end != END:
        raise FrameError(f"missing '##': expected the end marker 23 23 after {length} bytes of application "
                         f"data, found {end.hex(' ')} (is the length field right?)", total - 2)
    expected = checksum(data[2:total - 3])
    found = data[total - 3]
    if expected != found:
        raise FrameError(f"bad checksum: expected {expected:#04x} (sum of bytes 2..{total - 4}), "
                         f"found {found:#04x}", total - 3)
    if len(data) > total:
        raise FrameError(f"{len(data) - total} bytes after the end marker (a second frame? decode one at a time)",
                         total)
    return _header(data)


# -- stream -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BadFrame:
    """A candidate that failed a check. ``frame`` is set when only the checksum was wrong: the
    header is then readable and the sender can be denied (clause 6.3: a check error is answered
    with 否认) so it retransmits at once instead of waiting for its timeout."""

    reason: str
    frame: Frame | None = None


class Deframer(BufferedFramer):
    """Frames out of a byte stream, resynchronising on the next '@@' after anything invalid.

    On a failed candidate it advances ONE byte, not past the marker: in '@@@<frame>' the first
    candidate is the stray '@' plus the frame's first '@', and skipping two bytes would lose the
    frame. Counters: ``frames`` (valid frames), ``garbage_bytes`` (bytes dropped outside any frame)
    and ``bad`` (failed candidates). It is the framer of the transport kit's sessions
    (:class:`agent.core.transport.Framer`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.garbage_bytes = 0
        self.bad = 0

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        buf = self._buf
        buf += data
        out: list[Frame | BadFrame] = []
        while True:
            start = buf.find(START)
            if start < 0:
                keep = 1 if buf.endswith(b"@") else 0   # may be the first half of a marker
                self.garbage_bytes += len(buf) - keep
                del buf[:len(buf) - keep]
                return out
            if start:
                self.garbage_bytes += start
                del buf[:start]
            result = self._candidate(buf, 0)
            if result is None:
                # Incomplete. A garbage '@@' with a large length would make us wait for bytes that
                # may come only minutes later (heartbeats), holding up a valid frame already here:
                # a fire alarm behind line noise. So look for a complete valid frame further on;
                # if one is there, the head candidate was garbage.
                later = self._next_complete(buf)
                if later is None:
                    return out
                self.bad += 1
                self.garbage_bytes += later
                out.append(BadFrame(f"incomplete frame followed by a valid one ({later} bytes dropped)"))
                del buf[:later]
                continue
            if isinstance(result, BadFrame):
                self.bad += 1
                out.append(result)
                self.garbage_bytes += 1
                del buf[:1]
                continue
            self.frames += 1
            out.append(result)
            del buf[:HEADER_LEN + len(result.app_data) + TRAILER_LEN]

    def _candidate(self, buf: bytearray, at: int) -> Frame | BadFrame | None:
        """The candidate starting at ``at``: a Frame, a BadFrame, or None when incomplete."""
        if len(buf) - at < HEADER_LEN:
            return None
        length = buf[at + 24] | buf[at + 25] << 8
        if length > MAX_APP_LEN:
            return BadFrame(f"bad length {length} > {MAX_APP_LEN}")
        total = OVERHEAD + length
        if len(buf) - at < total:
            return None
        if buf[at + total - 2:at + total] != END:
            return BadFrame(f"missing '##' at byte {total - 2} of a {total}-byte frame")
        expected = checksum(memoryview(buf)[at + 2:at + total - 3])
        found = buf[at + total - 3]
        frame = _header(buf[at:at + total])
        if expected != found:
            return BadFrame(f"bad checksum: expected {expected:#04x}, found {found:#04x}", frame)
        return frame

    def _next_complete(self, buf: bytearray) -> int | None:
        """Offset of the first later '@@' that starts a complete, valid frame."""
        at = buf.find(START, 1)
        while at >= 0:
            if isinstance(self._candidate(buf, at), Frame):
                return at
            at = buf.find(START, at + 1)
        return None
