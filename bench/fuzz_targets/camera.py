"""Camera frames: ``Pipeline.process`` as the sample camera has it (its model, nanodet; motion gate,
detector, tracker, rules), fed images of random shapes, channel counts, dtypes and contents.

It runs on the camera's own thread, not on the event loop (no 50 ms budget), and costs a model
inference per frame (~20-40 ms of one core), so it gets a small share of the inputs.

Contract: a frame the reader can deliver (8-bit, 3 channels, not empty: what OpenCV decodes a
stream to; the reader skips empty ones) of any size, 1x1 included, goes through without an
exception; any other array is refused with ValueError, the pipeline's own check, rather than
failing somewhere inside OpenCV. (The pipeline thread counts any exception on the ``camera``
boundary, so neither should happen with a real stream.)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.fuzz_targets import seeds
from bench.fuzz_targets.base import Target

SIDES = (1, 1, 2, 3, 7, 16, 63, 64, 240, 359, 360, 480, 720, 1080)
CHANNELS = (3, 3, 3, 3, 3, None, 1, 2, 4, 5)
DTYPES = ("uint8",) * 12 + ("uint16", "float32", "float64", "int8", "bool", "int32")


class CameraFrame(Target):
    """Random frames into ``Pipeline.process`` (the sample camera's model, nanodet, and its
    rules); ValueError only."""

    name = "camera.frame"
    share = 0.2
    allowed = (ValueError,)
    on_loop = False
    hang_s = 60.0

    def setup(self, workdir: Path) -> None:
        from drivers.camera.options import Options
        from drivers.camera.pipeline import Pipeline
        from drivers.camera.reader import RawFrame
        from drivers.camera.rules import SignalBoard
        from models.runtime import Detector

        entry = yaml.safe_load((seeds.REPO / "drivers" / "camera" / "sample.yaml").read_text())["cameras"][0]
        entry = {k: v for k, v in entry.items() if k not in ("id", "name", "password", "username")}
        entry["evidence"] = {**entry.get("evidence", {}), "clip_format": "none"}
        options = Options.model_validate(entry)
        detector = Detector(options.model, threads=1)
        board = SignalBoard()   # the signal controller the red-light rule asks: never heard from
        self.pipeline = Pipeline("fuzz", options, None, lambda: detector, board,   # type: ignore[arg-type]
                                 lambda kind, payload: None)
        self.pipeline.detector = detector   # the evidence threads are not started: violations queue and drop
        self.RawFrame = RawFrame
        self.seq = 0

    def generate(self, rng: random.Random) -> tuple[tuple[int, ...], str, str, int]:
        h, w = rng.choice(SIDES), rng.choice(SIDES)
        if rng.random() < 0.5:   # mostly the sizes cameras stream
            h, w = rng.choice(((720, 1280), (1080, 1920), (480, 640), (360, 640), (1, 1), (2, 3)))
        channels = rng.choice(CHANNELS)
        shape = (h, w) if channels is None else (h, w, channels)
        if rng.random() < 0.03:
            shape = rng.choice(((0, 640, 3), (480, 0, 3), (480, 640, 3, 1), (480,), ()))
        fill = rng.choice(("noise", "noise", "zeros", "ones", "max", "gradient"))
        return shape, rng.choice(DTYPES), fill, rng.randrange(2**32)

    def _image(self, case: tuple[tuple[int, ...], str, str, int]) -> np.ndarray:
        shape, dtype, fill, seed = case
        generator = np.random.default_rng(seed)
        kind = np.dtype(dtype)
        if fill == "zeros":
            return np.zeros(shape, kind)
        if fill == "ones":
            return np.ones(shape, kind)
        if fill == "max":
            return np.full(shape, np.iinfo(kind).max if kind.kind in "iu" else (True if kind == bool else 1e30), kind)
        if fill == "gradient" and len(shape) >= 2:
            ramp = np.linspace(0, 255, num=max(1, int(np.prod(shape))), dtype=np.float64).reshape(shape)
            return ramp.astype(kind)
        if kind.kind == "f":
            return (generator.random(shape) * 300 - 20).astype(kind)
        if kind == bool:
            return generator.random(shape) < 0.5
        info = np.iinfo(kind)
        return generator.integers(info.min, info.max, size=shape, dtype=kind, endpoint=True)

    def to_bytes(self, case: tuple[tuple[int, ...], str, str, int]) -> bytes:
        shape, dtype, fill, seed = case
        head = f"shape {shape} dtype {dtype} fill {fill} seed {seed}\n".encode()
        return head + self._image(case).tobytes()[:4096]

    def feed(self, case: Any) -> None:
        image = self._image(case)
        self.seq += 1
        try:
            self.pipeline.process(self.RawFrame(self.seq, 1_800_000_000.0 + self.seq * 0.1, image))
        except ValueError as exc:
            if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size:
                self.problem("a frame the reader delivers was refused", f"{image.shape}: {exc}")
            else:
                raise
