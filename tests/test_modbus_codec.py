"""Register codec: every type x every order against known register images, and round trips."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import (
    ORDERS, CodecError, compile_block, decode, encode, normalize_order, register_count,
)

# -- known images: the value's big-endian bytes, then how each order lays them in registers --

# 32-bit: bytes A B C D
IMAGES_32 = {
    "ABCD": lambda a, b, c, d: [a << 8 | b, c << 8 | d],
    "CDAB": lambda a, b, c, d: [c << 8 | d, a << 8 | b],
    "BADC": lambda a, b, c, d: [b << 8 | a, d << 8 | c],
    "DCBA": lambda a, b, c, d: [d << 8 | c, b << 8 | a],
}
# 64-bit, Telegraf's spelling: ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA
IMAGES_64 = {
    "ABCD": "ABCDEFGH", "CDAB": "GHEFCDAB", "BADC": "BADCFEHG", "DCBA": "HGFEDCBA",
}


def image_64(value_bytes: bytes, pattern: str) -> list[int]:
    """Registers for an 8-byte big-endian value laid out as Telegraf's pattern names it."""
    by_letter = dict(zip("ABCDEFGH", value_bytes))
    laid = [by_letter[letter] for letter in pattern]
    return [laid[i] << 8 | laid[i + 1] for i in range(0, 8, 2)]


def test_float32_reference_values_from_protocols_md():
    assert decode([0x41BC, 0x0000], "float32", "ABCD") == 23.5
    assert decode([0x0000, 0x41BC], "float32", "CDAB") == 23.5
    assert decode([0xBC41, 0x0000], "float32", "BADC") == 23.5
    assert decode([0x0000, 0xBC41], "float32", "DCBA") == 23.5
    # read with the wrong order it is a denormal, the classic symptom
    assert decode([0x0000, 0x41BC], "float32", "ABCD") == pytest.approx(2.358e-41, rel=1e-3)
    assert encode(23.5, "float32", "ABCD") == [0x41BC, 0x0000]
    assert encode(23.5, "float32", "CDAB") == [0x0000, 0x41BC]


@pytest.mark.parametrize("value, meant", [(12.3, 12.3), (0.1, 0.1), (19862442.0, 19862442.0),
                                          (3.4028234663852886e38, 3.4028235e38), (-0.0015, -0.0015)])
def test_float32_decodes_to_the_decimal_the_device_meant(value, meant):
    registers = encode(value, "float32")
    assert decode(registers, "float32") == meant
    assert compile_block([P(0, "float32")], 0)(registers) == [meant]


def test_int16_negative_with_scale():
    assert decode([0xFCD4], "int16", scale=0.1) == pytest.approx(-81.2)
    assert decode([0xFCD4], "uint16") == 0xFCD4
    assert decode([0xFCD4], "int16") == -812
    assert encode(-81.2, "int16", scale=0.1) == [0xFCD4]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_, value, fmt", [
    ("int32", -123456789, ">i"), ("uint32", 0xDEADBEEF, ">I"), ("float32", -1.5e-3, ">f"),
])
def test_32bit_every_order(order, type_, value, fmt):
    raw = struct.pack(fmt, value)
    registers = IMAGES_32[order](*raw)
    decoded = decode(registers, type_, order)
    # float32: the decimal the device meant, not 0.001500000013038516 (same float32 bits)
    assert decoded == value
    assert encode(value, type_, order) == registers


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_, value, fmt", [
    ("int64", -0x0102030405060708, ">q"), ("uint64", 0x0102030405060708, ">Q"),
    ("uint64", 0xFEDCBA9876543210, ">Q"), ("float64", 6.02214076e23, ">d"), ("float64", -0.1, ">d"),
])
def test_64bit_every_order(order, type_, value, fmt):
    registers = image_64(struct.pack(fmt, value), IMAGES_64[order])
    assert decode(registers, type_, order) == value
    assert encode(value, type_, order) == registers


def test_64bit_known_image():
    # 0x0102030405060708 in each order, spelled out
    assert encode(0x0102030405060708, "uint64", "ABCD") == [0x0102, 0x0304, 0x0506, 0x0708]
    assert encode(0x0102030405060708, "uint64", "CDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert encode(0x0102030405060708, "uint64", "BADC") == [0x0201, 0x0403, 0x0605, 0x0807]
    assert encode(0x0102030405060708, "uint64", "DCBA") == [0x0807, 0x0605, 0x0403, 0x0201]


@pytest.mark.parametrize("order", ORDERS)
def test_16bit_orders(order):
    swapped = order in ("BADC", "DCBA")   # one word: only the byte swap matters
    register = 0x3412 if swapped else 0x1234
    assert decode([register], "uint16", order) == 0x1234
    assert decode([0x8000 if not swapped else 0x0080], "int16", order) == -32768
    assert encode(0x1234, "uint16", order) == [register]


def test_telegraf_aliases():
    assert normalize_order("ghefcdab") == "CDAB"
    assert decode(encode(1.25, "float64", "CDAB"), "float64", "GHEFCDAB") == 1.25
    with pytest.raises(CodecError):
        normalize_order("ACBD")


def test_strings():
    registers = [0x4845, 0x4C4C, 0x4F00, 0x0000]   # "HELLO" + NUL padding
    assert decode(registers, "string") == "HELLO"
    assert decode([0x4142, 0x2020], "string") == "AB"              # trailing spaces
    assert decode([0x4241, 0x0044], "string", "BADC") == "ABD"     # byte-swapped per register
    assert decode([0x4100, 0x4242], "string") == "A"               # stale bytes after the NUL
    assert encode("HELLO", "string", length=4) == registers
    assert encode("ABD", "string", "BADC", length=2) == [0x4241, 0x0044]
    with pytest.raises(CodecError):
        encode("too long for one", "string", length=2)
    with pytest.raises(CodecError):
        decode(registers, "string", "CDAB")


def test_scaled_integers_are_the_decimal_the_device_means():
    assert 553 * 0.1 != 55.3                       # the trap
    assert decode([553], "uint16", scale=0.1) == 55.3
    assert decode([553], "uint16", scale=0.1, offset=-40.0) == 15.3
    assert decode([0xFCD4], "int16", scale=0.1) == -81.2
    assert decode([12345], "uint16", scale=0.001) == 12.345
    assert decode([2000], "uint16", scale=0.01, offset=273.15) == 293.15
    assert decode([7], "uint16", scale=0.5) == 3.5
    assert decode([3], "uint16", scale=1 / 3) == 3 * (1 / 3)    # not decimal: plain multiply
    points = [P(0, "uint16", scale=0.1), P(1, "int16", scale=0.1, offset=-40.0), P(2, "uint32", "CDAB", scale=0.01)]
    registers = [553, 553] + encode(1234567, "uint32", "CDAB")
    assert compile_block(points, 0)(registers) == [55.3, 15.3, 12345.67]


def test_bool_and_scale_offset():
    assert decode([1], "bool") is True
    assert decode([False], "bool") is False
    assert encode(True, "bool") == [1]
    value = decode([1000], "uint16", scale=0.1, offset=-40.0)
    assert value == pytest.approx(60.0)
    assert encode(60.0, "uint16", scale=0.1, offset=-40.0) == [1000]
    # an integer stays an integer when not scaled
    assert isinstance(decode([7], "uint16"), int)
    assert isinstance(decode([7], "uint16", scale=2.0), float)


def test_register_count_and_errors():
    assert [register_count(t) for t in ("bool", "int16", "uint32", "float32", "float64")] == [1, 1, 2, 2, 4]
    assert register_count("string", 5) == 5
    with pytest.raises(CodecError):
        register_count("string")
    with pytest.raises(CodecError):
        register_count("int128")
    with pytest.raises(CodecError):
        encode(70000, "uint16")
    with pytest.raises(CodecError):
        encode(-1, "uint32")
    with pytest.raises(CodecError):
        encode("12", "int16")
    with pytest.raises(CodecError):
        decode([1], "float32")   # too few registers


# -- compiled block decoders agree with decode() -------------------------------------------------

@dataclass
class P:
    address: int
    type: str
    order: str = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    length: int | None = None
    bit: int | None = None


def test_compiled_block_matches_decode():
    points = [
        P(0, "float32"), P(2, "float32", "CDAB"), P(4, "int16", scale=0.1), P(5, "uint16", scale=0.1, offset=-5.0),
        P(7, "float64", "DCBA"), P(11, "int32", "BADC"), P(13, "uint64", "CDAB"), P(17, "string", length=3),
        P(20, "uint16"), P(20, "bool", bit=0), P(20, "bool", bit=15), P(21, "string", "BADC", length=2),
    ]
    values = [23.5, -7.25, -81.2, 12.3, math.pi, -5, 2**63 + 5, "ABCDE", 0x8001, True, True, "xyz"]
    registers = [0] * 23
    for p, v in zip(points, values):
        if p.bit is None:
            registers[p.address:p.address + register_count(p.type, p.length)] = \
                encode(v, p.type, p.order, p.scale, p.offset, p.length)
    decoder = compile_block(points, 0)
    got = decoder(registers)
    for p, v, g in zip(points, values, got):
        if p.bit is not None:
            assert g is v
        else:
            n = register_count(p.type, p.length)
            expected = decode(registers[p.address:p.address + n], p.type, p.order, p.scale, p.offset)
            assert g == expected
            assert g == (pytest.approx(v) if isinstance(v, float) else v)


def test_compiled_block_with_offset_start_and_bits_table():
    decoder = compile_block([P(100, "uint16"), P(103, "int16")], 100)
    assert decoder([1, 0, 0, 0xFFFF]) == [1, -1]
    with pytest.raises(struct.error):   # a short answer is garbage, not half a decode
        decoder([1, 0, 0])
    bits = compile_block([P(10, "bool"), P(12, "bool")], 10, bits=True)
    assert bits([True, False, False, False, False, False, False, False]) == [True, False]
    only_bits = compile_block([P(5, "bool", bit=3)], 5)
    assert only_bits([8]) == [True]
    with pytest.raises(struct.error):
        only_bits([8, 0])


# -- hypothesis: encode -> decode is the identity ------------------------------------------------

INT_RANGES = {
    "int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-2**31, 2**31 - 1),
    "uint32": (0, 2**32 - 1), "int64": (-2**63, 2**63 - 1), "uint64": (0, 2**64 - 1),
}


@settings(max_examples=300, deadline=None)
@given(data=st.data(), order=st.sampled_from(ORDERS + tuple(["GHEFCDAB", "hgfedcba"])))
def test_round_trip(data, order):
    type_ = data.draw(st.sampled_from(sorted(INT_RANGES) + ["float32", "float64"]))
    if type_ in INT_RANGES:
        value = data.draw(st.integers(*INT_RANGES[type_]))
    elif type_ == "float32":
        value = data.draw(st.floats(width=32, allow_nan=False))
    else:
        value = data.draw(st.floats(allow_nan=False))
    registers = encode(value, type_, order)
    assert len(registers) == register_count(type_)
    assert all(0 <= r <= 0xFFFF for r in registers)
    if type_ == "float32":   # decoded to the shortest decimal of the same float32
        decoded = decode(registers, type_, order)
        assert struct.pack(">f", decoded) == struct.pack(">f", value)
        assert len(repr(decoded)) <= len(repr(value))
    else:
        assert decode(registers, type_, order) == value


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=16),
       order=st.sampled_from(["ABCD", "BADC"]))
def test_string_round_trip(text, order):
    assert decode(encode(text, "string", order, length=8), "string", order) == text


@settings(max_examples=200, deadline=None)
@given(raw=st.integers(0, 0xFFFF), scale=st.sampled_from([0.1, 0.01, 0.5, 2.0, 10.0]),
       offset=st.sampled_from([0.0, -40.0, 273.15]))
def test_scaled_round_trip(raw, scale, offset):
    value = decode([raw], "uint16", scale=scale, offset=offset)
    assert encode(value, "uint16", scale=scale, offset=offset) == [raw]
