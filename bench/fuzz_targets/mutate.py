"""Input generators shared by the targets: random bytes, byte-level mutation of seeds, and
values that break parsers (boundary numbers, non-ASCII, very long strings, deep nesting).

Everything takes a ``random.Random`` so a seed replays the same inputs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

# Numbers written as text: the edges of every integer width, floats past them, spellings that
# some parsers accept and others do not.
NUMBER_TEXTS: tuple[str, ...] = (
    "0", "-0", "1", "-1", "0.0", "-0.0", "255", "256", "-129", "32767", "32768", "-32769", "65535", "65536",
    "2147483647", "2147483648", "-2147483649", "4294967295", "4294967296", "9223372036854775807",
    "9223372036854775808", "-9223372036854775809", "18446744073709551615", "18446744073709551616",
    "1e20", "-1e30", "1e308", "1e309", "-1e309", "2.2250738585072014e-308", "5e-324", "1e-400",
    "NaN", "nan", "-nan", "inf", "-inf", "Infinity", "-Infinity", "1_000", "0x10", "0o7", "0b1", "+1", ".5", "5.",
    "1e", "e5", "--1", "1..2", "１２", "²", "٣", " 1", "1 ", "9" * 400, "9" * 5000, "1." + "0" * 500,
)
# Numbers as values (for structured inputs that are not text).
NUMBER_VALUES: tuple[object, ...] = (
    0, -0.0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -2**31 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63,
    -2**63 - 1, 2**64 - 1, 2**64, 2**70, -2**70, 10**400, 1e20, -1e30, 1e308, 5e-324, 1.5, -0.5, float("inf"),
    float("-inf"), float("nan"),
)
STRINGS: tuple[str, ...] = (
    "", " ", "a", "\x00", "\x00" * 8, "\n", "\r\n", "\t", "'", '"', "\\", "%s%n", "{}", "[]", "null", "true",
    "é", "中文", "烟感", "\u3000", "\ufeff", "\u202e", "\ud7ff", "\U0001f525", "\uffff", "a" * 65, "x" * 257,
    "A" * 1025, "B" * 5000, "../../etc/passwd", "citybrain/#", "+", "#", "$", "*",
)
INTERESTING_BYTES: bytes = bytes((0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x0A, 0x0D, 0x20, 0x23, 0x40, 0x26, 0x3B, 0x3D, 0x2C))
_DIGITS = re.compile(rb"-?\d+(?:\.\d+)?")


def random_bytes(rng: random.Random, max_len: int = 512) -> bytes:
    n = rng.choice((0, 1, 2, rng.randrange(max_len + 1), rng.randrange(max_len + 1)))
    if rng.random() < 0.3:   # a small alphabet makes structure (markers, digits) by chance
        alphabet = rng.choice((b"#@&;=,\r\n0123456789", b"\x00\xff@#", b"[]{}:,\"0123456789ae-"))
        return bytes(rng.choice(alphabet) for _ in range(n))
    return rng.randbytes(n)


def _flip(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    if data:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)


def _set_byte(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.6 else rng.randrange(256)


def _insert(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.2:
        block = bytes([rng.randrange(256)]) * rng.choice((16, 128, 1024, 4096))
    else:
        block = rng.randbytes(rng.randrange(1, 17))
    data[at:at] = block


def _delete(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    if data:
        at = rng.randrange(len(data))
        del data[at:at + rng.randrange(1, 33)]


def _duplicate(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    if data:
        at = rng.randrange(len(data))
        piece = data[at:at + rng.randrange(1, 65)]
        to = rng.randrange(len(data) + 1)
        data[to:to] = piece * rng.choice((1, 1, 2, 8))


def _splice(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    other = rng.choice(seeds) if seeds else b""
    if other:
        cut, at = rng.randrange(len(other) + 1), rng.randrange(len(data) + 1)
        data[at:] = other[cut:] if rng.random() < 0.5 else other[cut:] + data[at:]


def _truncate(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    if data:
        del data[rng.randrange(len(data)):]


def _number(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    spans = [m.span() for m in _DIGITS.finditer(data)]
    if spans:
        start, end = rng.choice(spans)
        data[start:end] = rng.choice(NUMBER_TEXTS).encode()


def _text(rng: random.Random, data: bytearray, seeds: Sequence[bytes]) -> None:
    at = rng.randrange(len(data) + 1)
    choice = rng.random()
    if choice < 0.4:
        block = rng.choice(STRINGS).encode("utf-8", "surrogatepass")
    elif choice < 0.6:
        block = rng.choice((b"\xff", b"\xc3", b"\xe4\xb8", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xa1\xa1"))
    else:
        block = rng.choice(STRINGS[-4:]).encode()
    data[at:at] = block


BYTE_MUTATORS: tuple[Callable[[random.Random, bytearray, Sequence[bytes]], None], ...] = (
    _flip, _flip, _set_byte, _set_byte, _insert, _delete, _duplicate, _splice, _truncate, _number, _number, _text,
)


def mutate_bytes(rng: random.Random, data: bytes, seeds: Sequence[bytes] = (), rounds: int | None = None,
                 max_len: int = 1 << 16) -> bytes:
    """1 to 4 stacked byte mutations of ``data`` (bit flips, interesting bytes, insert, delete,
    duplicate, splice with another seed, truncate, a number replaced by a boundary one, text)."""
    out = bytearray(data)
    for _ in range(rounds or rng.choice((1, 1, 1, 2, 2, 3, 4))):
        rng.choice(BYTE_MUTATORS)(rng, out, seeds)
    return bytes(out[:max_len])


def deep(rng: random.Random, open_: str = "[", close: str = "]", depths: Sequence[int] = (64, 255, 256, 300, 1000, 5000)) -> str:
    depth = rng.choice(depths)
    return open_ * depth + close * depth


def weird_value(rng: random.Random) -> object:
    """A value for a structured field (JSON/YAML): boundary numbers, odd strings, wrong types."""
    kind = rng.random()
    if kind < 0.4:
        return rng.choice(NUMBER_VALUES)
    if kind < 0.7:
        return rng.choice(STRINGS)
    if kind < 0.8:
        return rng.choice((None, True, False, [], {}, [1, "a"], {"a": 1}))
    if kind < 0.9:
        nested: object = rng.choice((1, "x"))
        for _ in range(rng.choice((10, 40, 200))):
            nested = [nested] if rng.random() < 0.5 else {"k": nested}
        return nested
    return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(1, 40)))
