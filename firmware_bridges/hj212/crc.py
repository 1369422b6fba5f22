"""The HJ 212 CRC (HJ 212-2017 Appendix A), computed fast in pure Python.

The standard's algorithm, over the data segment only::

    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        repeat 8 times: lsb = reg & 1; reg >>= 1; if lsb: reg ^= 0xA001

It is NOT the Modbus CRC (which XORs the byte into the *low* half of the register): the check
value for b"123456789" is 0x2F80 here and 0x4B37 for Modbus. Printed as 4 hex digits, high byte
first; receivers compare case-insensitively (loggers send both cases).

Why a clever version: a bitwise loop costs ~100 µs for a 300-byte frame, a table loop ~15 µs;
parsing must run at 50 000 frames/s (20 µs per frame, everything included). Two facts make it
cheap:

* after ``reg = (reg >> 8) ^ byte`` the register holds a value below 256, so each step is
  ``reg = T[(reg >> 8) ^ byte]`` with ``T`` the 256-entry table of one byte's eight shifts; only
  the high byte ``h`` is carried: ``h' = H[h ^ byte]`` with ``H[x] = T[x] >> 8``;
* ``T`` (hence ``H``) is linear over GF(2), and ``H`` applied 8 times is the identity.

So the carried byte before the last step is ``XOR_i H^((n-1-i) mod 8)[byte_i]`` (plus the
initial register's term), and bytes whose positions are equal mod 8 share one map: XOR them
together first (one big-integer fold over 8-byte words, done in C), then apply 8 table lookups.
:func:`crc16_reference` is the standard's loop, kept for tests and as the definition.

A consequence worth knowing: the last step is ``T[h ^ last_byte]``, so the "16-bit" CRC takes
only 256 values. A corrupted frame passes it once in 256 cases (the Modbus CRC: once in 65536),
and a run of noise in front of a real frame keeps the frame's CRC just as often. The framer
therefore never lets a CRC-valid candidate swallow a valid frame that starts inside it
(:meth:`.frame.StreamFramer._inner_frame`), and the header is checked field by field.
"""

from __future__ import annotations

__all__ = ["crc16", "crc16_hex", "crc16_reference"]


def crc16_reference(data: bytes) -> int:
    """The CRC exactly as HJ 212-2017 Appendix A writes it (slow; the definition)."""
    reg = 0xFFFF
    for byte in data:
        reg = (reg >> 8) ^ byte
        for _ in range(8):
            lsb = reg & 1
            reg >>= 1
            if lsb:
                reg ^= 0xA001
    return reg


def _one_byte(x: int) -> int:
    for _ in range(8):
        x = (x >> 1) ^ 0xA001 if x & 1 else x >> 1
    return x


_T: list[int] = [_one_byte(x) for x in range(256)]
_H: list[int] = [t >> 8 for t in _T]


def _power(k: int) -> list[int]:
    """H applied k times, as a table."""
    table = list(range(256))
    for _ in range(k):
        table = [_H[v] for v in table]
    return table


_HPOW: list[list[int]] = [_power(k) for k in range(8)]
assert _power(8) == list(range(256)), "H^8 is the identity: the folding below relies on it"
# _LANE[n % 8][c]: the map for the bytes at positions == c (mod 8) of an n-byte message
_LANE: list[list[list[int]]] = [[_HPOW[(n - 1 - c) % 8] for c in range(8)] for n in range(8)]
# the initial register's high byte 0xFF, carried through n-1 steps
_INIT: list[int] = [_HPOW[(n - 1) % 8][0xFF] for n in range(8)]
_WORD_MASKS: dict[int, int] = {}


def crc16(data: bytes | bytearray | memoryview) -> int:
    """The HJ 212 CRC of ``data`` (see the module docstring); equals :func:`crc16_reference`."""
    n = len(data)
    if n == 0:
        return 0xFFFF
    # XOR of all 8-byte little-endian words: byte lane c holds the XOR of the bytes at positions
    # c, c+8, c+16 ...  (the missing tail bytes of the last word are zeros: neutral for XOR)
    x = int.from_bytes(data, "little")
    words = (n + 7) >> 3
    while words > 1:
        low = (words + 1) >> 1
        mask = _WORD_MASKS.get(low)
        if mask is None:
            mask = _WORD_MASKS[low] = (1 << (64 * low)) - 1
        x = (x & mask) ^ (x >> (64 * low))
        words = low
    lanes = _LANE[n & 7]
    h = _INIT[n & 7]
    for c, byte in enumerate(x.to_bytes(8, "little")):
        h ^= lanes[c][byte]
    # h is now the register's high byte before the last step, XORed with the last byte
    return _T[h]


def crc16_hex(data: bytes | bytearray | memoryview) -> str:
    """The CRC as the frame carries it: 4 upper-case hex digits, high byte first."""
    return f"{crc16(data):04X}"
