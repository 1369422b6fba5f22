"""HJ 212 frames: delimiting, CRC check, data-segment parsing, building, stream resynchronisation.

Frame layout (HJ 212-2017 §6.3; the same in HJ/T 212-2005)::

    ## | 4-digit decimal length of the data segment | data segment | 4 hex digits CRC | CR LF

The data segment is ``QN=..;ST=..;CN=..;PW=..;MN=..;Flag=..;[PNUM=..;PNO=..;]CP=&&...&&`` (2005
frames may lack QN and Flag), at most 1024 characters, ASCII with Chinese text in UTF-8. The CRC
(:mod:`.crc`) covers the data segment only.

Nothing here knows about stations or readings: :func:`parse_segment` turns text into a
:class:`Frame` of raw strings, :class:`StreamFramer` turns a byte stream into frames and
:class:`FrameError`\\ s, and :func:`check_header` says which header value is malformed (with the
HJ 212 refusal code a receiver answers with). Every error says what is wrong and at which
character of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.core.transport.contract import BufferedFramer
from firmware_bridges.hj212.crc import crc16, crc16_hex

HEADER = b"##"
CRLF = b"\r\n"
MAX_DATA_LENGTH = 1024          # the standard's limit on the length field
# Loggers that count characters instead of bytes put up to 3 UTF-8 bytes behind each character
# of Chinese text; a frame can never be longer than this on the wire.
MAX_SEGMENT_BYTES = 3 * MAX_DATA_LENGTH
MAX_FRAME_BYTES = 6 + MAX_SEGMENT_BYTES + 4 + 2
_HEX_DIGITS = b"0123456789abcdefABCDEF"

# Request-answer codes (QnRtn, HJ 212-2017 table "请求命令返回表"):
QNRTN_READY = 1          # 准备执行请求: accepted
QNRTN_REFUSED = 2        # 请求被拒绝
QNRTN_PW = 3             # PW 错误
QNRTN_MN = 4             # MN 错误
QNRTN_ST = 5             # ST 错误
QNRTN_FLAG = 6           # Flag 错误
QNRTN_QN = 7             # QN 错误
QNRTN_CN = 8             # CN 错误
QNRTN_CRC = 9            # CRC 校验错误
QNRTN_UNKNOWN = 100      # 未知错误
QNRTN_NAMES = {1: "ready (accepted)", 2: "refused", 3: "PW error", 4: "MN error", 5: "ST error",
               6: "Flag error", 7: "QN error", 8: "CN error", 9: "CRC error", 100: "unknown error"}


def digits(text: str | None, max_len: int = 64) -> bool:
    """ASCII digits only (str.isdigit also accepts '²', which int() refuses), 1..max_len of them."""
    return text is not None and 0 < len(text) <= max_len and text.isascii() and text.isdigit()


class FrameError(ValueError):
    """A frame (or what looked like the start of one) that cannot be accepted.

    ``reason`` is a short tag for counters (``crc``, ``length``, ``crlf``, ``oversize``,
    ``truncated``, ``segment``, ``header`` ...); ``position`` the 0-based character of the frame
    where the problem is; ``segment`` the data segment when the frame was delimited well enough
    that its header can be read (to address a refusal), else None; ``qnrtn`` the refusal code.
    """

    def __init__(self, reason: str, message: str, position: int | None = None, *,
                 segment: bytes | None = None, qnrtn: int = QNRTN_UNKNOWN):
        super().__init__(message if position is None else f"{message} (at character {position})")
        self.reason = reason
        self.message = message
        self.position = position
        self.segment = segment
        self.qnrtn = qnrtn


@dataclass(slots=True)
class Frame:
    """A delimited, CRC-checked frame whose data segment was split into its fields (raw strings)."""

    segment: str                      # the data segment as text
    header: dict[str, str]            # QN, ST, CN, PW, MN, Flag, PNUM, PNO (and anything else before CP)
    cp: str                           # the CP content between "CP=&&" and the closing "&&"
    crc: str = ""                     # the CRC as received (case kept)
    warnings: list[str] = field(default_factory=list)

    @property
    def qn(self) -> str | None:
        return self.header.get("QN")

    @property
    def st(self) -> str | None:
        return self.header.get("ST")

    @property
    def cn(self) -> str | None:
        return self.header.get("CN")

    @property
    def pw(self) -> str | None:
        return self.header.get("PW")

    @property
    def mn(self) -> str | None:
        return self.header.get("MN")

    @property
    def flag(self) -> int | None:
        """Flag as a number; None when absent (2005 frames) or not a number (see check_header)."""
        flag = self.header.get("Flag")
        return int(flag) if digits(flag, 3) else None

    @property
    def version(self) -> int:
        """Flag bits V5..V0: 1 = HJ 212-2017, 0 = HJ/T 212-2005 (a frame without Flag is 2005)."""
        flag = self.flag
        return 0 if flag is None else flag >> 2

    @property
    def wants_answer(self) -> bool:
        """Flag bit A: the sender waits for an answer."""
        flag = self.flag
        return flag is not None and bool(flag & 1)

    @property
    def is_split(self) -> bool:
        """Flag bit D with PNUM and PNO present. (The standard's own example sets D without them:
        such a frame is read as a whole frame.)"""
        flag = self.flag
        return flag is not None and bool(flag & 2) and "PNUM" in self.header and "PNO" in self.header


# -- parsing one data segment ---------------------------------------------------------------------

def parse_segment(segment: str, offset: int = 6) -> Frame:
    """Split a data segment into header fields and the CP content.

    Raises FrameError (reason ``segment``) when the structure is wrong; positions count from the
    frame's first ``#`` (the segment starts at ``offset``). Values are not judged here (see
    :func:`check_header`).
    """
    cp_at = segment.find("CP=&&")
    if cp_at < 0:
        raise FrameError("segment", "the data segment has no 'CP=&&'", offset + len(segment))
    if cp_at and segment[cp_at - 1] != ";":
        raise FrameError("segment", "'CP=&&' must follow a ';'", offset + cp_at)
    if len(segment) < cp_at + 7 or not segment.endswith("&&"):
        raise FrameError("segment", "the CP field must end with '&&' at the end of the data segment",
                         offset + len(segment))
    header: dict[str, str] = {}
    if cp_at:
        position = offset
        for part in segment[:cp_at - 1].split(";"):
            key, eq, value = part.partition("=")
            if not eq or not key:
                raise FrameError("segment", f"header field {part[:20]!r} is not KEY=VALUE", position)
            if key in header:
                raise FrameError("segment", f"header field {key} appears twice", position)
            header[key] = value
            position += len(part) + 1
    return Frame(segment, header, segment[cp_at + 5:-2])


def check_header(frame: Frame, offset: int = 6) -> FrameError | None:
    """The first malformed header value, as the error a receiver refuses the frame with.

    2017 frames (Flag version 1+) need a 17-digit QN (YYYYMMDDhhmmsszzz); every frame needs a
    2-digit ST, a 4-digit CN and an MN; Flag, PNUM and PNO must be numbers when present.
    """
    header = frame.header

    def at(key: str) -> int:
        found = frame.segment.find(key + "=")
        return offset + max(found, 0)

    flag = header.get("Flag")
    if flag is not None and not (digits(flag, 3) and int(flag) <= 255):
        return FrameError("header", f"Flag {flag[:12]!r} is not a number 0..255", at("Flag"), qnrtn=QNRTN_FLAG)
    qn = header.get("QN")
    if qn is not None:
        if not (digits(qn) and len(qn) in (14, 17)):
            return FrameError("header", f"QN {qn[:24]!r} is not YYYYMMDDhhmmsszzz", at("QN"), qnrtn=QNRTN_QN)
    elif frame.version >= 1:
        return FrameError("header", "a 2017 frame (Flag version 1) needs a QN", offset, qnrtn=QNRTN_QN)
    st = header.get("ST")
    if not (digits(st) and len(st) == 2):
        return FrameError("header", f"ST {st!r} is not a 2-digit system code", at("ST"), qnrtn=QNRTN_ST)
    cn = header.get("CN")
    if not (digits(cn) and len(cn) == 4):
        return FrameError("header", f"CN {cn!r} is not a 4-digit command code", at("CN"), qnrtn=QNRTN_CN)
    mn = header.get("MN")
    if not mn:
        return FrameError("header", "MN is missing or empty", at("MN"), qnrtn=QNRTN_MN)
    for key in ("PNUM", "PNO"):
        value = header.get(key)
        if value is not None and not digits(value, 4):
            return FrameError("header", f"{key} {value[:12]!r} is not a number", at(key), qnrtn=QNRTN_FLAG)
    if frame.is_split:
        pnum, pno = int(header["PNUM"]), int(header["PNO"])
        if not 1 <= pno <= pnum:
            return FrameError("header", f"PNO {pno} is outside 1..PNUM ({pnum})", at("PNO"), qnrtn=QNRTN_FLAG)
    return None


def parse_cp(cp: str) -> list[list[tuple[str, str]]]:
    """CP content as items (``;``) of fields (``,``), each ``(key, value)``; empty items are
    skipped (loggers often end the CP with ``;``). A field without ``=`` has value ''."""
    items = []
    for item in cp.split(";"):
        if item:
            items.append([(key, value) for key, _, value in (f.partition("=") for f in item.split(",") if f)])
    return items


# -- whole frames -----------------------------------------------------------------------------------

def _is_hex4(text: bytes) -> bool:
    return len(text) == 4 and not text.translate(None, _HEX_DIGITS)


def _decode_text(segment: bytes, position: int) -> str:
    try:
        return segment.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("encoding", "the data segment is not UTF-8 text", position + exc.start,
                         segment=segment) from None


def _char_length_matches(segment: bytes, declared: int) -> bool:
    """Some loggers count characters, not bytes, of a segment with Chinese text: accept that."""
    if segment.isascii():
        return False
    try:
        return len(segment.decode("utf-8")) == declared
    except UnicodeDecodeError:
        return False


def decode_frame(data: bytes, *, require_crlf: bool = True) -> Frame:
    """One complete frame (``##`` through CRLF) to a :class:`Frame`; raises FrameError.

    With ``require_crlf=False`` a frame without its CRLF is accepted with a warning (a frame
    pasted from a log loses it); other characters after the CRC are still an error.
    """
    if not data.startswith(HEADER):
        raise FrameError("header", f"a frame starts with '##', found {data[:2]!r}", 0)
    length_field = data[2:6]
    if len(length_field) < 4 or not length_field.isdigit():
        raise FrameError("length", f"the length field must be 4 decimal digits, found {length_field!r}", 2)
    declared = int(length_field)
    if declared > MAX_DATA_LENGTH:
        raise FrameError("oversize", f"length {declared} exceeds the standard's {MAX_DATA_LENGTH}", 2)
    crc_end = 6 + declared + 4              # where CR LF belongs when the length counts bytes
    if (len(data) > crc_end and _is_hex4(data[crc_end - 4:crc_end])
            and crc16(data[6:crc_end - 4]) == int(data[crc_end - 4:crc_end], 16)
            and data[crc_end:] != CRLF):
        # a good frame followed by something else than exactly CR LF
        if data[crc_end:crc_end + 2] == CRLF:
            raise FrameError("crlf", f"{len(data) - crc_end - 2} extra characters after the frame's CR LF: "
                             f"{data[crc_end + 2:crc_end + 10]!r}", crc_end + 2)
        raise FrameError("crlf", f"expected CR LF after the CRC, found {data[crc_end:crc_end + 8]!r}",
                         crc_end, segment=data[6:crc_end - 4])
    warnings: list[str] = []
    body = data[6:]
    if body.endswith(CRLF):
        body = body[:-2]
    elif require_crlf:
        raise FrameError("crlf", "the frame does not end with CR LF", len(data))
    elif body.endswith(b"\r") or body.endswith(b"\n"):
        raise FrameError("crlf", "the frame ends with a lone CR or LF instead of CR LF", len(data) - 1)
    else:
        warnings.append("no CR LF at the end: required on the wire (normal for a frame copied from a log)")
    if len(body) < 4:
        raise FrameError("truncated", "the frame is too short to hold a CRC", len(data))
    segment, crc_text = body[:-4], body[-4:]
    crc_at = 6 + len(segment)
    if len(segment) != declared:
        if _char_length_matches(segment, declared):
            warnings.append(f"the length field counts characters ({declared}), not bytes ({len(segment)})")
        else:
            raise FrameError("length", f"the length field says {declared} but the data segment has "
                             f"{len(segment)} bytes", 2, segment=segment, qnrtn=QNRTN_REFUSED)
    if not _is_hex4(crc_text):
        raise FrameError("crc", f"the CRC must be 4 hex digits, found {crc_text!r}", crc_at,
                         segment=segment, qnrtn=QNRTN_CRC)
    computed = crc16(segment)
    if computed != int(crc_text, 16):
        raise FrameError("crc", f"bad CRC: expected {computed:04X}, found {crc_text.decode('ascii')}",
                         crc_at, segment=segment, qnrtn=QNRTN_CRC)
    frame = parse_segment(_decode_text(segment, 6))
    frame.crc = crc_text.decode("ascii")
    frame.warnings = warnings
    return frame


def build_frame(segment: str) -> bytes:
    """A complete frame around a data segment: header, byte length, CRC (upper case), CR LF."""
    data = segment.encode("utf-8")
    if len(data) > MAX_DATA_LENGTH:
        raise ValueError(f"data segment of {len(data)} bytes exceeds {MAX_DATA_LENGTH}")
    return b"##%04d%s%s\r\n" % (len(data), data, crc16_hex(data).encode("ascii"))


def lenient_header(segment: bytes) -> dict[str, str]:
    """Header fields of a segment that failed its CRC or length check, to address a refusal.
    Best effort: whatever ``KEY=VALUE`` pairs precede ``CP=&&``; never raises."""
    text = segment.decode("utf-8", "replace")
    head = text.split("CP=&&", 1)[0]
    header: dict[str, str] = {}
    for part in head.split(";"):
        key, eq, value = part.partition("=")
        if eq and key and key not in header and len(key) <= 8:
            header[key] = value
    return header


# -- a byte stream ------------------------------------------------------------------------------

class StreamFramer(BufferedFramer):
    """Cuts a byte stream (a TCP connection, a serial line) into frames and errors.

    ``feed(data)`` returns what completed: :class:`Frame`\\ s and :class:`FrameError`\\ s, in
    stream order. Garbage between frames is skipped up to the next ``##`` and counted in
    ``garbage_bytes``. After any error the search restarts one byte after the failed ``##``, so a
    valid frame hidden behind a truncated or corrupt one is never lost. The buffer never holds
    more than one maximal frame plus the last chunk: a candidate that cannot end within
    MAX_FRAME_BYTES is dropped as oversize.
    """

    __slots__ = ("garbage_bytes", "errors")

    def __init__(self) -> None:
        super().__init__()
        self.garbage_bytes = 0
        self.errors = 0

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        buf = self._buf
        buf += data
        out: list[Frame | FrameError] = []
        pos = 0
        size = len(buf)
        quiet_end = 0     # the rest of a rejected, well-delimited frame is not counted as garbage
        while True:
            start = buf.find(b"##", pos)
            if start < 0:
                # keep a trailing '#': it may be the first half of the next header
                keep = 1 if size > pos and buf[size - 1] == 0x23 else 0
                self.garbage_bytes += max(0, size - keep - max(pos, quiet_end))
                pos = size - keep
                break
            self.garbage_bytes += max(0, start - max(pos, quiet_end))
            pos = start
            if size - pos < 6:
                break
            result = self._at(buf, pos, size)
            if result is None:
                break                      # a frame is starting: wait for more bytes
            item, next_pos = result
            if item is None:
                self.garbage_bytes += next_pos - pos
            elif isinstance(item, Frame):
                self.frames += 1
                out.append(item)
            else:
                self.errors += 1
                out.append(item)
                if item.segment is not None:
                    quiet_end = max(quiet_end, pos + 6 + len(item.segment) + 6)
            pos = next_pos
        if pos:
            del buf[:pos]
        return out

    def _at(self, buf: bytearray, pos: int, size: int) -> tuple[Frame | FrameError | None, int] | None:
        """The frame or error starting at ``pos`` (None: garbage) and where to go on; None to
        wait for more bytes."""
        length_field = bytes(buf[pos + 2:pos + 6])
        if not length_field.isdigit():
            return None, pos + 1           # '##' in garbage, not a header: skip it
        declared = int(length_field)
        if declared > MAX_DATA_LENGTH:
            return FrameError("oversize", f"length {declared} exceeds {MAX_DATA_LENGTH}", 2), pos + 1
        end = pos + 6 + declared          # where the CRC should start
        if size >= end + 6 and buf[end + 4:end + 6] == CRLF:
            segment = bytes(buf[pos + 6:end])
            crc_text = bytes(buf[end:end + 4])
            if _is_hex4(crc_text) and crc16(segment) == int(crc_text, 16):
                inner = self._inner_frame(buf, pos, end, size)
                if inner is not None:
                    return inner
                try:
                    frame = parse_segment(_decode_text(segment, 6))
                except FrameError as exc:
                    exc.segment = segment
                    return exc, end + 6
                frame.crc = crc_text.decode("ascii")
                return frame, end + 6
            if _is_hex4(crc_text):
                error = FrameError("crc", f"bad CRC: expected {crc16(segment):04X}, found "
                                   f"{crc_text.decode('ascii')}", 6 + declared, segment=segment, qnrtn=QNRTN_CRC)
            else:
                error = FrameError("crc", f"the CRC must be 4 hex digits, found {crc_text!r}", 6 + declared,
                                   segment=segment, qnrtn=QNRTN_CRC)
            return error, pos + 1
        # Not where the length says: a wrong (or character-counted) length, a truncated frame
        # followed by another one, or simply not all bytes here yet.
        crlf = buf.find(CRLF, pos + 6, min(size, pos + MAX_FRAME_BYTES))
        if crlf >= 0 and crlf - 4 >= pos + 6:
            segment = bytes(buf[pos + 6:crlf - 4])
            crc_text = bytes(buf[crlf - 4:crlf])
            if _is_hex4(crc_text) and crc16(segment) == int(crc_text, 16):
                inner = self._inner_frame(buf, pos, crlf - 4, size)
                if inner is not None:
                    return inner
                if _char_length_matches(segment, declared):
                    try:
                        frame = parse_segment(_decode_text(segment, 6))
                    except FrameError as exc:
                        exc.segment = segment
                        return exc, crlf + 2
                    frame.crc = crc_text.decode("ascii")
                    frame.warnings.append(f"length counts characters ({declared}), not bytes ({len(segment)})")
                    return frame, crlf + 2
                return FrameError("length", f"the length field says {declared} but the frame's data segment "
                                  f"has {len(segment)} bytes", 2, segment=segment, qnrtn=QNRTN_REFUSED), crlf + 2
        if size >= end + 6 or crlf >= 0:
            # complete by its length, or a CR LF arrived: this candidate is broken; resynchronise
            following = buf.find(b"##", pos + 2)
            what = "truncated" if 0 <= following < end + 6 else "crlf"
            message = ("frame cut short: another '##' starts inside it" if what == "truncated"
                       else "no CR LF where the length says the frame ends")
            return FrameError(what, message, 6 + declared + 4), pos + 1
        if size - pos >= MAX_FRAME_BYTES:
            return FrameError("oversize", f"no frame end within {MAX_FRAME_BYTES} bytes", 2), pos + 1
        # Incomplete. If a complete, valid frame starts later in the buffer, this one was cut
        # short (a logger reset mid-frame): give it up now rather than wait for bytes that belong
        # to the next frames.
        following = buf.find(b"##", pos + 2)
        while following >= 0:
            if self._valid_at(buf, following, size):
                return FrameError("truncated", "frame cut short: a complete frame starts inside it",
                                  following - pos), following
            following = buf.find(b"##", following + 1)
        return None

    def _inner_frame(self, buf: bytearray, pos: int, crc_at: int, size: int) -> tuple[FrameError, int] | None:
        """A valid frame inside the candidate at ``pos`` (whose CRC starts at ``crc_at``) means
        the candidate is noise that passed the CRC by chance: the standard's CRC carries only 8
        bits of state from byte to byte, so a prefix before a real frame keeps the frame's CRC
        once in 256 cases. The inner frame wins."""
        inner = buf.find(b"##", pos + 2, crc_at)
        while inner >= 0:
            if self._valid_at(buf, inner, size):
                return FrameError("truncated", "frame cut short: a complete frame starts inside it",
                                  inner - pos), inner
            inner = buf.find(b"##", inner + 1, crc_at)
        return None

    @staticmethod
    def _valid_at(buf: bytearray, pos: int, size: int) -> bool:
        length_field = bytes(buf[pos + 2:pos + 6])
        if len(length_field) < 4 or not length_field.isdigit():
            return False
        end = pos + 6 + int(length_field)
        if size < end + 6 or buf[end + 4:end + 6] != CRLF:
            return False
        crc_text = bytes(buf[end:end + 4])
        return _is_hex4(crc_text) and crc16(bytes(buf[pos + 6:end])) == int(crc_text, 16)
