"""GB/T 20999-2017 frames (交通信号控制机与上位机间的数据通信协议): layout, CRC, escaping, building,
strict parsing, and cutting frames out of datagrams and byte streams.

The standard's text is not public. Every fact here agrees across these sources and was checked
byte for byte against frames captured from a real controller (东土正创, 354 frames in
``673879047-dev/20999-test-first``, ``protocol_catalog.json``); where sources disagree the
captured frames decide (see ``/work/shared/PROTOCOLS.md``, section "GB/T 20999-2017"):

- Kedacom OpenATC (``OpenATCManager/comctl/OpenATCComDef.h``: frame types, error codes, lamp and
  mode values, the centre control table);
- the conventions quoted in ``lining1111/RVDataFusionServer`` (``signalControl/signalControlCom.h``);
- AITON ``traffic-signal-system/tsc32_20999_2017`` (``ComDefGb20999-2017.h``).

Layout, big-endian, unescaped::

    offset  size  field
    0       1     start 0x7E
    1       2     length L: bytes from the version through the CRC (the whole frame minus 4)
    3       2     protocol version (0x0100 on the captured device, 0x0101 in OpenATC)
    5       1     centre (上位机) id
    6       4     controller (信号机) id
    10      1     road (路口) id
    11      1     sequence number (流水号)
    12      1     frame type (:class:`FrameType`)
    13      1     count N of data values
    14      ...   N data values: index (1, from 1), length (1, = 4 + value bytes), class, object,
                  attribute, element, value bytes (none in a query)
    L+1     2     CRC-16, high byte first, over the length field through the last data value
    L+3     1     end 0x7D

CRC-16: polynomial 0x1005 (x^16+x^12+x^2+1), initial 0, not reflected, no final xor; check
value for ``123456789`` is 0x5BB8 (the captured device's frames all verify with it; one Java
SDK's 0x1021/0xFFFF fails on them).

Escaping: on TCP and RS-232 only, never on UDP, a 0x5C is put before every 0x7E, 0x7D or 0x5C
between the start and end bytes (length and CRC included), after length and CRC are computed.
So a UDP frame may carry a raw 0x7D inside (the captured ``... 01 01 7d c1 7d`` has 0x7D as the
CRC's high byte): a datagram is cut by its length field (:class:`DatagramFramer`), a stream by
its unescaped end byte (:class:`StreamFramer`).

The device answers with sequence + 1 instead of echoing the sequence (captured run-mode query
seq 0x01 answered with seq 0x02), so a client matches answers by frame type and object ids.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from agent.core.transport.contract import BufferedFramer

START, END, ESCAPE = 0x7E, 0x7D, 0x5C
HEADER_LEN = 14            # start .. count
TRAILER_LEN = 3            # CRC, end
MIN_FRAME = HEADER_LEN + TRAILER_LEN
# The length field allows 65535; no object this agent reads comes near. A frame longer than this
# is refused, which bounds every buffer (a datagram, a stream framer) to one such frame.
MAX_LENGTH = 4096
MAX_FRAME = MAX_LENGTH + 4
VERSION = 0x0100           # what the captured device sends and answers

_HEADER = struct.Struct(">BHHBIBBBB")   # start, length, version, centre, controller, road, seq, type, count


class FrameType(IntEnum):
    """Frame types (OpenATC EFrameType_GB20999; the captured device uses 0x10/0x20/0x21)."""

    QUERY = 0x10
    QUERY_REPLY = 0x20
    QUERY_ERROR = 0x21
    SET = 0x30
    SET_REPLY = 0x40
    SET_ERROR = 0x41
    BROADCAST = 0x50
    TRAP = 0x60              # the controller's own report (主动上报)
    HEARTBEAT = 0x70
    HEARTBEAT_REPLY = 0x80


# Heartbeat reply: 0x80 in OpenATC and in RVDataFusionServer's conventions (a reply is the
# request's type + 0x10, an error reply + 0x11); the tool written against the captured device
# (20999-test-first, protocol.py) uses 0x71, with no captured heartbeat to settle it. A client
# accepts both; the simulator answers 0x80.
HEARTBEAT_REPLY_ALT = 0x71
HEARTBEAT_REPLIES = frozenset((FrameType.HEARTBEAT_REPLY, HEARTBEAT_REPLY_ALT))
ERROR_TYPES = frozenset((FrameType.QUERY_ERROR, FrameType.SET_ERROR))

TYPE_NAMES = {t.value: t.name.lower() for t in FrameType} | {HEARTBEAT_REPLY_ALT: "heartbeat_reply"}

# The error byte after a value's four ids in a 0x21/0x41 reply (OpenATC EBadValue_GB20999; the
# captured device answers 0x30 to the centre-control objects it does not have).
ERRORS = {
    0x10: "bad value", 0x11: "wrong length", 0x12: "value out of range", 0x20: "read-only",
    0x30: "does not exist", 0x40: "general error", 0x50: "control failed",
}


class FrameError(ValueError):
    """A frame that is not right: what is wrong and at which byte offset (of the unescaped frame)."""

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
        self.reason = message
        self.offset = offset


# -- CRC ---------------------------------------------------------------------------------------

def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        reg = byte << 8
        for _ in range(8):
            reg = ((reg << 1) ^ 0x1005) if reg & 0x8000 else reg << 1
        table.append(reg & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/poly 0x1005, init 0, MSB first, no final xor (check value 0x5BB8 for b"123456789")."""
    reg = 0
    table = _CRC_TABLE
    for byte in bytes(data):
        reg = ((reg << 8) & 0xFFFF) ^ table[(reg >> 8) ^ byte]
    return reg


# -- escaping (TCP, RS-232) --------------------------------------------------------------------

_SPECIAL = frozenset((START, END, ESCAPE))


def escape(frame: bytes) -> bytes:
    """The frame as sent on TCP or RS-232: 0x5C before each 0x7E/0x7D/0x5C between start and end."""
    body = bytearray()
    for byte in frame[1:-1]:
        if byte in _SPECIAL:
            body.append(ESCAPE)
        body.append(byte)
    return bytes((frame[0],)) + bytes(body) + bytes((frame[-1],))


def unescape(frame: bytes) -> bytes:
    """The inverse of :func:`escape` for one whole frame. Raises FrameError for a 0x5C that
    escapes nothing (the offset is of the escaped frame)."""
    out = bytearray((frame[0],))
    i, end = 1, len(frame) - 1
    while i < end:
        byte = frame[i]
        if byte == ESCAPE:
            if i + 1 >= end or frame[i + 1] not in _SPECIAL:
                raise FrameError("escape byte 0x5c not followed by 0x7e, 0x7d or 0x5c", i)
            i += 1
            byte = frame[i]
        out.append(byte)
        i += 1
    out.append(frame[-1])
    return bytes(out)


# -- frames ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DataValue:
    """One data value: ids, and the value bytes (empty in a query; the status or error byte in a
    set reply or an error reply)."""

    cls: int
    obj: int
    attribute: int
    element: int
    value: bytes = b""
    index: int = 0           # as sent (1..N); 0: numbered when the frame is built

    @property
    def ids(self) -> tuple[int, int, int, int]:
        return (self.cls, self.obj, self.attribute, self.element)

    def ids_text(self) -> str:
        return ".".join(f"{i:02X}" for i in self.ids)


@dataclass(frozen=True, slots=True)
class Frame:
    frame_type: int
    values: tuple[DataValue, ...] = ()
    seq: int = 0
    centre: int = 1
    controller: int = 0
    road: int = 1
    version: int = VERSION
    crc: int | None = field(default=None, compare=False)   # as received

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.frame_type, f"unknown_{self.frame_type:#04x}")

    @property
    def is_error(self) -> bool:
        return self.frame_type in ERROR_TYPES

    def errors(self) -> list[tuple[DataValue, int]]:
        """An error reply's values and their error bytes."""
        return [(v, v.value[0] if v.value else 0x40) for v in self.values]


def build(frame: Frame, *, escaped: bool = False) -> bytes:
    """The frame's bytes, unescaped (UDP) or ``escaped`` (TCP, RS-232)."""
    if len(frame.values) > 255:
        raise ValueError("at most 255 data values in one frame")
    body = bytearray()
    for number, value in enumerate(frame.values, 1):
        if len(value.value) > 251:
            raise ValueError(f"value {value.ids_text()} is {len(value.value)} bytes; at most 251 fit its length byte")
        body += bytes((value.index or number, 4 + len(value.value), *value.ids)) + value.value
    length = HEADER_LEN - 3 + len(body) + 2     # version .. data, plus the CRC
    if length > MAX_LENGTH:
        raise ValueError(f"frame of {length + 4} bytes is longer than {MAX_FRAME}")
    head = _HEADER.pack(START, length, frame.version, frame.centre, frame.controller, frame.road,
                        frame.seq & 0xFF, frame.frame_type, len(frame.values))
    unit = head + bytes(body)
    raw = unit + crc16(unit[1:]).to_bytes(2, "big") + bytes((END,))
    return escape(raw) if escaped else raw


def frame_length(data: bytes | bytearray, start: int = 0) -> int | None:
    """The whole (unescaped) frame's size its length field announces, or None while fewer than 3 bytes."""
    if len(data) - start < 3:
        return None
    return ((data[start + 1] << 8) | data[start + 2]) + 4


def parse(data: bytes) -> Frame:
    """One whole unescaped frame, strictly: every field, the length, the values' lengths and the
    CRC. Raises FrameError saying what is wrong and at which offset."""
    size = len(data)
    if size == 0:
        raise FrameError("no bytes", 0)
    if data[0] != START:
        raise FrameError(f"a frame starts with 0x7e, not {data[0]:#04x}", 0)
    if size < 3:
        raise FrameError(f"cut short: {size} bytes, the length field is not complete", size)
    announced = frame_length(data)
    assert announced is not None
    if announced - 4 > MAX_LENGTH:
        raise FrameError(f"length field says {announced - 4}: more than the {MAX_LENGTH} this agent accepts", 1)
    if announced < MIN_FRAME:
        raise FrameError(f"length field says {announced - 4}: a frame has at least {MIN_FRAME - 4} "
                         "(version to count, and the CRC)", 1)
    if size < announced:
        raise FrameError(f"cut short: the length field says {announced} bytes in all, {size} arrived", size)
    if size > announced:
        raise FrameError(f"the length field says {announced} bytes in all but {size} were given: the length "
                         f"disagrees (or the frame is escaped: it is {size - announced} bytes longer)", announced)
    if data[-1] != END:
        raise FrameError(f"a frame ends with 0x7d, not {data[-1]:#04x}", size - 1)
    _, _, version, centre, controller, road, seq, frame_type, count = _HEADER.unpack_from(data)
    crc_at = size - TRAILER_LEN
    received = (data[crc_at] << 8) | data[crc_at + 1]
    computed = crc16(data[1:crc_at])
    if received != computed:
        raise FrameError(f"CRC mismatch: the frame carries {received:#06x}, its bytes give {computed:#06x}", crc_at)
    values = []
    at = HEADER_LEN
    for number in range(1, count + 1):
        if at + 2 > crc_at:
            raise FrameError(f"count says {count} data values but the data ends after {number - 1}", at)
        index, length = data[at], data[at + 1]
        if length < 4:
            raise FrameError(f"data value {number}: length {length} is less than its 4 id bytes", at + 1)
        if at + 2 + length > crc_at:
            raise FrameError(f"data value {number}: length {length} runs past the end of the data "
                             f"({crc_at - at - 2} bytes left)", at + 1)
        ids = data[at + 2:at + 6]
        values.append(DataValue(ids[0], ids[1], ids[2], ids[3], bytes(data[at + 6:at + 2 + length]), index))
        at += 2 + length
    if at != crc_at:
        raise FrameError(f"{crc_at - at} bytes after the {count} data value(s) the count announces", at)
    return Frame(frame_type, tuple(values), seq, centre, controller, road, version, received)


def parse_any(data: bytes) -> tuple[Frame, bool]:
    """A frame as a technician captured it, escaped (TCP, RS-232) or not (UDP): (frame, escaped).
    The unescaped reading is tried first (a UDP frame may hold a raw 0x5C); the error reported is
    that of the reading that got further."""
    try:
        return parse(data), False
    except FrameError as plain:
        if ESCAPE not in data[1:-1] or len(data) < 2:
            raise
        try:
            unescaped = unescape(data)
        except FrameError:
            raise plain from None
        try:
            return parse(unescaped), True
        except FrameError as escaped:
            raise FrameError(f"{plain.reason}; read as an escaped (TCP/RS-232) frame: {escaped.reason}",
                             plain.offset) from None


# -- framers (the transport kit's Framer) ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class BadFrame:
    """Bytes that were not a valid frame, and why (for counters and the log)."""

    data: bytes
    why: str


class DatagramFramer(BufferedFramer):
    """Unescaped frames in datagrams (UDP), cut by their length field. Bytes before a start byte
    are garbage; a datagram that ends inside a frame leaves it pending for the transport to drop."""

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        buffer = self._buf
        buffer += data
        items: list[Frame | BadFrame] = []
        while buffer:
            if buffer[0] != START:
                cut = buffer.find(START)
                junk = bytes(buffer if cut < 0 else buffer[:cut])
                del buffer[:len(junk)]
                items.append(BadFrame(junk, f"{len(junk)} bytes outside a frame"))
                continue
            size = frame_length(buffer)
            if size is None:
                break
            if not MIN_FRAME <= size <= MAX_FRAME:
                del buffer[:1]
                items.append(BadFrame(b"\x7e", f"length field {size - 4} is impossible"))
                continue
            if len(buffer) < size:
                break
            raw = bytes(buffer[:size])
            try:
                frame = parse(raw)
            except FrameError as exc:
                del buffer[:1]    # resynchronise on the next start byte: a frame may hide behind a bad one
                items.append(BadFrame(raw, str(exc)))
                continue
            del buffer[:size]
            self.frames += 1
            items.append(frame)
        return items


class StreamFramer(BufferedFramer):
    """Escaped frames in a byte stream (TCP, RS-232): from 0x7E to the next unescaped 0x7D. A 0x7E
    inside a frame starts a new one (the old one was cut); the buffer holds at most one escaped
    maximal frame."""

    def __init__(self) -> None:
        super().__init__()
        self._escaped = False

    def reset(self) -> int:
        self._escaped = False
        return super().reset()

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        items: list[Frame | BadFrame] = []
        buffer = self._buf
        junk = 0
        for byte in data:
            if not buffer:
                if byte == START:
                    buffer.append(byte)
                else:
                    junk += 1
                continue
            if self._escaped:
                self._escaped = False
                buffer.append(byte)
                continue
            if byte == ESCAPE:
                self._escaped = True
                buffer.append(byte)
            elif byte == START:
                items.append(BadFrame(bytes(buffer), "a new frame began before this one ended"))
                buffer.clear()
                buffer.append(byte)
            elif byte == END:
                buffer.append(byte)
                items.append(self._cut(bytes(buffer)))
                buffer.clear()
            else:
                buffer.append(byte)
                if len(buffer) > 2 * MAX_FRAME:
                    items.append(BadFrame(bytes(buffer[:16]), f"no end byte within {2 * MAX_FRAME} bytes"))
                    buffer.clear()
                    self._escaped = False
        if junk:
            items.insert(0, BadFrame(b"", f"{junk} bytes outside a frame"))
        return items

    def _cut(self, raw: bytes) -> Frame | BadFrame:
        try:
            frame = parse(unescape(raw))
        except FrameError as exc:
            return BadFrame(raw, str(exc))
        self.frames += 1
        return frame


def query(values: Iterable[Sequence[int]], *, seq: int, centre: int, controller: int, road: int,
          version: int = VERSION) -> Frame:
    """A query frame for objects given as (class, object, attribute, element)."""
    return Frame(FrameType.QUERY, tuple(DataValue(*ids) for ids in values), seq, centre, controller, road, version)
