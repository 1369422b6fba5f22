"""The `edge-agent decode <protocol> HEX` path of a binary family, as one fuzz target shape: hex as
technicians paste it (spaces, colons, 0x, odd digits, non-hex) of the family's frames.
ValueError only (a FrameError is one); the result must print as the CLI prints it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bench.fuzz_targets.base import Target
from bench.fuzz_targets.hj212 import check_printable
from bench.fuzz_targets.mutate import mutate_bytes


class HexDecode(Target):
    """Subclasses set ``name``, ``protocol`` (what `edge-agent decode` is given) and ``frame_bytes``."""

    protocol: str
    share = 5
    allowed = (ValueError,)
    on_loop = False

    def frame_bytes(self, rng: random.Random) -> bytes:
        raise NotImplementedError

    def setup(self, workdir: Path) -> None:
        from agent.core.registry import find_decoder
        self.decode = find_decoder(self.protocol)

    def generate(self, rng: random.Random) -> str:
        data = self.frame_bytes(rng)
        sep = rng.choice(("", " ", ":", "-", ", 0x"))
        text = sep.join(f"{b:02x}" for b in data) if rng.random() < 0.9 else data.decode("latin-1")
        if rng.random() < 0.1:
            text = mutate_bytes(rng, text.encode("latin-1")).decode("latin-1")
        return text

    def to_bytes(self, case: str) -> bytes:
        return case.encode("utf-8", "surrogateescape")

    def feed(self, case: str) -> None:
        self.decoded: Any = None
        self.decoded = self.decode(case)

    def check(self, case: str) -> None:
        if self.decoded is not None:
            check_printable(self, self.decoded)
