"""Request planner: merging, gaps, the 125-register and 2000-bit limits, points never split."""

from __future__ import annotations

from drivers.modbus.codec import encode
from drivers.modbus.plan import MAX_BITS, MAX_REGISTERS, plan, split
from drivers.modbus.profile import Point


def reg(name: str, address: int, type_: str = "uint16", table: str = "holding_register", **kw) -> Point:
    return Point(name=name, table=table, address=address, type=type_, **kw)


def coil(name: str, address: int, table: str = "coil") -> Point:
    return Point(name=name, table=table, address=address, type="bool")


def spans(requests):
    return [(r.table, r.address, r.count, [p.name for p in r.points]) for r in requests]


def test_neighbours_merge_into_one_request():
    points = [reg("a", 0, "float32"), reg("b", 2, "float32"), reg("c", 4, "int16")]
    assert spans(plan(points)) == [("holding_register", 0, 5, ["a", "b", "c"])]


def test_gap_within_max_gap_is_read_through_and_beyond_is_not():
    points = [reg("a", 0), reg("b", 9), reg("c", 19)]   # gaps of 8 and 9 registers
    assert spans(plan(points, max_gap=8)) == [
        ("holding_register", 0, 10, ["a", "b"]),
        ("holding_register", 19, 1, ["c"]),
    ]
    assert len(plan(points, max_gap=0)) == 3
    assert len(plan(points, max_gap=9)) == 1


def test_unsorted_input_and_tables_are_separate():
    points = [reg("x", 5), coil("k", 3), reg("i", 0, table="input_register"), reg("w", 1), coil("d", 0, "discrete_input")]
    got = spans(plan(points))
    assert got == [
        ("coil", 3, 1, ["k"]),
        ("discrete_input", 0, 1, ["d"]),
        ("holding_register", 1, 5, ["w", "x"]),
        ("input_register", 0, 1, ["i"]),
    ]


def test_split_at_125_registers():
    points = [reg(f"p{i}", i * 2, "float32") for i in range(100)]   # 200 registers, contiguous
    requests = plan(points)
    assert [r.count for r in requests] == [124, 76]
    assert all(r.count <= MAX_REGISTERS for r in requests)
    assert sum(len(r.points) for r in requests) == 100


def test_multi_register_point_is_never_split():
    # 41 float64s = 164 registers; a request boundary may not fall inside one
    points = [reg(f"p{i}", i * 4, "float64") for i in range(41)]
    for r in plan(points):
        assert r.count <= MAX_REGISTERS
        for p in r.points:
            assert r.address <= p.address and p.address + 4 <= r.address + r.count
    # a 3-register odd start: 0..122 filled by uint16s, then a float64 at 123 must move to the next request
    points = [reg(f"u{i}", i) for i in range(123)] + [reg("big", 123, "float64")]
    requests = plan(points)
    assert spans(requests)[1] == ("holding_register", 123, 4, ["big"])
    assert requests[0].count == 123


def test_string_points_span():
    points = [reg("name", 10, "string", length=8), reg("after", 18)]
    assert spans(plan(points)) == [("holding_register", 10, 9, ["name", "after"])]


def test_coils_split_at_2000_and_gap_in_bits():
    points = [coil(f"c{i}", i) for i in range(2500)]
    requests = plan(points)
    assert [r.count for r in requests] == [MAX_BITS, 500]
    # a gap of 8 registers' worth of bytes = 128 bits is read through for bit tables
    assert len(plan([coil("a", 0), coil("b", 129)], max_gap=8)) == 1
    assert len(plan([coil("a", 0), coil("b", 130)], max_gap=8)) == 2


def test_bits_of_one_register_share_it():
    points = [reg("word", 15), reg("b0", 15, "bool", bit=0), reg("b1", 15, "bool", bit=1), reg("x", 16)]
    requests = plan(points)
    assert spans(requests) == [("holding_register", 15, 2, ["word", "b0", "b1", "x"])]
    assert requests[0].decode([0b10, 7]) == [2, False, True, 7]


def test_each_request_decodes_its_points():
    points = [reg("t", 4, "int16", scale=0.1), reg("pm", 0, "float32"), reg("far", 200, "float32", order="CDAB")]
    first, second = plan(points)
    registers = encode(23.5, "float32") + [0, 0] + encode(-12.5, "int16", scale=0.1)
    assert first.decode(registers) == [23.5, -12.5]
    assert second.decode(encode(1.5, "float32", "CDAB")) == [1.5]


def test_split_reads_point_by_point_keeping_register_bits_together():
    points = [reg("a", 0, "float32"), reg("w", 5), reg("w0", 5, "bool", bit=0), reg("z", 9)]
    (merged,) = plan(points)
    parts = split(merged)
    assert spans(parts) == [
        ("holding_register", 0, 2, ["a"]),
        ("holding_register", 5, 1, ["w", "w0"]),
        ("holding_register", 9, 1, ["z"]),
    ]
    (single,) = plan([reg("w", 5), reg("w0", 5, "bool", bit=0)])
    assert split(single) == [single] or len(split(single)) == 1
