"""Bytes from hex as technicians paste a captured frame: spaces, newlines, ':' '-' ',' separators
and 0x prefixes allowed (`edge-agent decode <protocol> HEX` of the binary families)."""

from __future__ import annotations

import re


def parse_hex(text: str) -> bytes:
    """The bytes ``text`` spells in hex; ValueError saying which character is wrong."""
    cleaned = re.sub(r"0[xX](?=[0-9A-Fa-f])", "", text)
    cleaned = re.sub(r"[\s:,\-]", "", cleaned)
    bad = re.search(r"[^0-9A-Fa-f]", cleaned)
    if bad:
        raise ValueError(f"not hex: {bad.group()!r} (character {bad.start()} after removing separators)")
    if len(cleaned) % 2:
        raise ValueError(f"odd number of hex digits ({len(cleaned)}): a byte is missing a digit")
    if not cleaned:
        raise ValueError("no bytes given")
    return bytes.fromhex(cleaned)
