"""Split packets (Flag bit D, PNUM/PNO) put back together.

A logger splits a long upload into PNUM frames that share QN and CN, numbered PNO = 1..PNUM. The
parts are kept per (QN, CN) until all have arrived, then their CP contents are joined in PNO
order into one frame. Loggers split either between items or anywhere in the text (one public
implementation cuts every 916 characters), so the join glues two parts directly when the cut
went through a field and puts a ';' between them when it fell between fields.

Memory is bounded: at most ``max_groups`` incomplete uploads per station (the oldest is dropped
to make room), at most ``max_parts`` parts per upload, and a group not completed within
``timeout`` seconds is dropped. Every drop is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_bridges.hj212.frame import Frame

MAX_PARTS = 64      # 64 x 1024 characters: far more than any real upload
MAX_GROUPS = 8


@dataclass(slots=True)
class _Group:
    pnum: int
    started: float
    parts: dict[int, Frame] = field(default_factory=dict)


class Reassembler:
    def __init__(self, timeout: float = 60.0, max_groups: int = MAX_GROUPS, max_parts: int = MAX_PARTS):
        self.timeout = timeout
        self.max_groups = max_groups
        self.max_parts = max_parts
        self._groups: dict[tuple[str, str], _Group] = {}
        self.completed = 0
        self.dropped = 0          # incomplete uploads given up (timeout, room, inconsistent parts)

    @property
    def pending(self) -> int:
        return len(self._groups)

    def add(self, frame: Frame, now: float) -> Frame | str | None:
        """The whole frame when ``frame`` completes its upload; None while parts are missing;
        a message (str) when the part is refused (PNUM too large or changing within a group)."""
        pnum, pno = int(frame.header["PNUM"]), int(frame.header["PNO"])
        if pnum > self.max_parts:
            return f"PNUM {pnum} exceeds the {self.max_parts} parts this gateway accepts"
        key = (frame.qn or "", frame.cn or "")
        group = self._groups.get(key)
        if group is not None and group.pnum != pnum:
            del self._groups[key]
            self.dropped += 1
            group = None
        if group is None:
            if len(self._groups) >= self.max_groups:
                oldest = min(self._groups, key=lambda k: self._groups[k].started)
                del self._groups[oldest]
                self.dropped += 1
            group = self._groups[key] = _Group(pnum, now)
        group.parts[pno] = frame          # a retransmitted part replaces the first copy
        if len(group.parts) < pnum:
            return None
        del self._groups[key]
        self.completed += 1
        return join([group.parts[i] for i in range(1, pnum + 1)])

    def expire(self, now: float) -> int:
        """Drop uploads whose parts stopped coming; returns how many."""
        stale = [key for key, group in self._groups.items() if now - group.started > self.timeout]
        for key in stale:
            del self._groups[key]
        self.dropped += len(stale)
        return len(stale)


def join(parts: list[Frame]) -> Frame:
    """One frame from the parts of a split upload, in order (header of the first part)."""
    cp = parts[0].cp
    for part in parts[1:]:
        cp = _glue(cp, part.cp)
    first = parts[0]
    header = {k: v for k, v in first.header.items() if k not in ("PNUM", "PNO")}
    flag = first.flag
    if flag is not None:
        header["Flag"] = str(flag & ~2)   # no longer split
    return Frame(first.segment, header, cp, first.crc, [f"joined from {len(parts)} split packets"])


def _glue(left: str, right: str) -> str:
    if not left or not right or left[-1] in ";," or right[0] in ";,":
        return left + right
    last_field = left.replace(",", ";").rsplit(";", 1)[-1]
    first_field = right.replace(",", ";").split(";", 1)[0]
    if "=" not in last_field or "=" not in first_field or first_field.startswith("="):
        return left + right          # the cut went through a field
    return left + ";" + right
