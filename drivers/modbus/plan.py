"""Request planner: a device's points -> as few read requests as possible.

What Telegraf calls its request optimiser. Per table, points are sorted by address and merged
with their neighbour while the registers read through (the gap) stay within ``max_gap`` and the
request stays within the protocol limit (125 registers, 2000 bits). A point is never split across
two requests. Each request carries a compiled decoder for exactly its points.

Reading through a gap is cheaper than another round trip (a request costs a frame, a turnaround
and, on RS-485, 3.5 character times of silence), but some devices answer "illegal address" when
a read covers a register they do not implement. The bus then re-plans that request point by
point (:func:`split`), so one hole in a vendor's map never blanks its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.core.model import Value
from drivers.modbus.codec import compile_block
from drivers.modbus.profile import BIT_TABLES, Point

MAX_REGISTERS = 125    # per read request (Modbus spec, function codes 3 and 4)
MAX_BITS = 2000        # per read request (function codes 1 and 2)
# A gap of N registers costs 2N bytes on the wire; bits are 8 to a byte, so the same byte budget
# lets a bit request read through 16x as many unused bits.
BITS_PER_GAP_REGISTER = 16

TABLE_ORDER = ("coil", "discrete_input", "holding_register", "input_register")


@dataclass(slots=True)
class Request:
    """One read request: table, start address, count, and the points it decodes."""

    table: str
    address: int
    count: int
    points: tuple[Point, ...]
    decode: Callable[[Sequence[Any]], list[Value]] = field(repr=False, compare=False)

    @property
    def bits(self) -> bool:
        return self.table in BIT_TABLES


def limit(table: str) -> int:
    return MAX_BITS if table in BIT_TABLES else MAX_REGISTERS


def make_request(table: str, points: Sequence[Point]) -> Request:
    """A request covering exactly ``points`` (all of one table), with its decoder."""
    start = min(p.address for p in points)
    end = max(p.end for p in points)
    bits = table in BIT_TABLES
    return Request(table, start, end - start, tuple(points), compile_block(points, start, bits=bits))


def plan(points: Iterable[Point], max_gap: int = 8) -> list[Request]:
    """The read requests for ``points``: grouped by table, sorted by address, merged, split at limits."""
    by_table: dict[str, list[Point]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    requests: list[Request] = []
    for table in sorted(by_table, key=TABLE_ORDER.index):
        table_points = sorted(by_table[table], key=lambda p: (p.address, p.bit is not None, p.bit or 0))
        gap_limit = max_gap * BITS_PER_GAP_REGISTER if table in BIT_TABLES else max_gap
        size_limit = limit(table)
        group: list[Point] = []
        start = end = 0
        for point in table_points:
            if point.count > size_limit:   # cannot happen with a validated profile; be explicit anyway
                raise ValueError(f"point {point.name!r} needs {point.count} registers, more than one request")
            if group and point.address - end <= gap_limit and max(end, point.end) - start <= size_limit:
                group.append(point)
                end = max(end, point.end)
                continue
            if group:
                requests.append(make_request(table, group))
            group, start, end = [point], point.address, point.end
        if group:
            requests.append(make_request(table, group))
    return requests


def split(request: Request) -> list[Request]:
    """The request re-planned point by point, reading nothing the profile does not name.

    Used after a device refused a merged read ("illegal data address"). Points sharing one
    register (bits of a status word, and the word itself) stay together: they are one register
    on the wire.
    """
    if len(request.points) == 1:
        return [request]
    groups: dict[Any, list[Point]] = {}
    for point in request.points:
        key = point.address if point.count == 1 else ("wide", point.address)
        groups.setdefault(key, []).append(point)
    return [make_request(request.table, group)
            for _, group in sorted(groups.items(), key=lambda item: item[1][0].address)]
