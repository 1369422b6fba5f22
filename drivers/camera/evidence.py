"""Evidence for a violation: three stills, the subject's crop, its plate text, and a clip.

Built on the camera's evidence thread, never on the event loop:

- ``0.jpg`` ``1.jpg`` ``2.jpg``: the rule's three shots (for a red light: behind the stop line with
  the signal red, past it, further on), full frames as the camera sent them;
- ``crop.jpg``: the subject cut from the sharpest (largest) shot, with a margin;
- the plate text, read from the crop with RapidOCR (its detection and recognition models ship
  inside the ``rapidocr`` wheel; nothing is downloaded at run time);
- ``clip.mp4`` (or ``clip.avi``, MJPEG): from ``clip_before`` before the moment of the violation
  to ``clip_after`` after it, from a ring of small JPEG frames the pipeline keeps. It is ready only
  ``clip_after`` later, so it follows the violation as its own ``evidence.clip`` event that names
  the violation's event id: the violation itself goes out within a second.

With ``privacy.blur_faces`` the heads of people who are not the subject are blurred in every
image and in the clip (the heads of the detector's ``person`` boxes: a camera over a road sees
pedestrians from afar, where a face detector finds nothing).

sha256 and size of every file are listed in the event by the agent (``sink.evidence``).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from drivers.camera.geometry import Box

log = logging.getLogger("drivers.camera")

PLATE = re.compile(r"[\u4e00-\u9fff][A-Z][A-Z0-9]{5,6}")
_PLATE_FIXES = str.maketrans({"O": "0", "I": "1", "o": "0", "·": "", "•": "", "-": "", " ": "", ".": "",
                              "：": "", ":": "", "・": ""})
# A mainland plate starts with one of 31 province abbreviations. The OCR model knows thousands of
# characters and, on a small plate, sometimes reads a province as a look-alike (浙 as 折, 闽 as 闯):
# the look-alikes below are put back. A first character that is neither is left as read.
PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_PROVINCE_LOOKALIKES = {
    "浙": "折淅渐逝", "闽": "闯闵闰", "沪": "泸护", "鲁": "鱼", "皖": "院睆晥", "赣": "贛联", "粤": "奥粵",
    "冀": "翼黄", "豫": "预像", "湘": "相", "贵": "贯", "晋": "普晉", "蒙": "豪", "陕": "峡陜", "青": "靑",
    "藏": "臧綫", "渝": "喻瑜", "琼": "凉", "津": "律", "黑": "墨", "苏": "芬", "辽": "边", "宁": "守",
}
_PROVINCE_OF = {alike: province for province, alikes in _PROVINCE_LOOKALIKES.items() for alike in alikes}


# -- images -------------------------------------------------------------------------------------------

def jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def clip_box(box: Box, shape: tuple[int, ...], margin: float = 0.0) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    return (max(0, int(x1 - mx)), max(0, int(y1 - my)), min(w, int(round(x2 + mx))), min(h, int(round(y2 + my))))


def head_region(box: Box) -> Box:
    """Where a person's face is: the top fifth of the box, a little wider."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return (x1 - 0.1 * w, y1 - 0.02 * h, x2 + 0.1 * w, y1 + 0.2 * h)


def blur_regions(image: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """A copy with each box pixelated beyond recognition (the original is shared with others)."""
    if not boxes:
        return image
    out = image.copy()
    for box in boxes:
        x1, y1, x2, y2 = clip_box(box, out.shape)
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        region = out[y1:y2, x1:x2]
        small = cv2.resize(region, (max(1, (x2 - x1) // 8), max(1, (y2 - y1) // 8)), interpolation=cv2.INTER_AREA)
        out[y1:y2, x1:x2] = cv2.GaussianBlur(cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_NEAREST),
                                             (0, 0), 2)
    return out


def faces_to_blur(persons: tuple[tuple[int, Box], ...], subject: int | None, scale: float = 1.0) -> list[Box]:
    return [tuple(v * scale for v in head_region(box)) for track, box in persons if track != subject]  # type: ignore[misc]


# -- plate OCR ----------------------------------------------------------------------------------------

class PlateReader:
    """RapidOCR on the lower part of a vehicle crop (where a plate is), one instance per process,
    used by one thread at a time. Loaded on first use (about half a second)."""

    _lock = threading.Lock()
    _engine: Any = None
    _failed: str | None = None

    @classmethod
    def engine(cls) -> Any:
        if cls._engine is None and cls._failed is None:
            try:
                from rapidocr import RapidOCR
                cls._engine = RapidOCR(params={
                    "Global.log_level": "error",
                    "Global.use_cls": False,                     # plates are upright
                    "Det.limit_type": "max", "Det.limit_side_len": 480,
                    "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                    "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                })
                logging.getLogger("RapidOCR").setLevel(logging.ERROR)
            except Exception as exc:   # noqa: BLE001 - no OCR is no plate, not no evidence
                cls._failed = f"{type(exc).__name__}: {exc}"
                log.error("plate OCR unavailable (%s): violations are reported without plate text", cls._failed)
        return cls._engine

    @classmethod
    def warm_up(cls) -> None:
        """Load the OCR and run it once: the first inference of an onnxruntime session costs
        several times a later one (seen here: 320 ms against 50-90 ms)."""
        if cls.engine() is None:
            return
        blank = np.full((48, 160, 3), 255, np.uint8)
        cv2.putText(blank, "A12345", (8, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2)
        cls.read(blank)

    @classmethod
    def read(cls, crop: np.ndarray) -> tuple[str | None, float | None]:
        """The plate text and its confidence, or (None, None)."""
        if crop.size == 0:
            return None, None
        with cls._lock:
            engine = cls.engine()
            if engine is None:
                return None, None
            h, w = crop.shape[:2]
            part = crop[int(h * 0.35):, :]          # plates sit low on a vehicle's end
            if part.shape[1] < 240:                 # small plates: give the text detector pixels to work with
                k = 240 / part.shape[1]
                part = cv2.resize(part, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
            try:
                result = engine(part)
            except Exception as exc:   # noqa: BLE001
                log.warning("plate OCR failed: %s", exc)
                return None, None
        return best_plate(list(result.txts or ()), list(result.scores or ()))


def normalise_plate(text: str) -> str:
    if not text:
        return text
    clean = text.translate(_PLATE_FIXES).upper()
    return _PROVINCE_OF.get(clean[0], clean[0]) + clean[1:]


def best_plate(texts: list[str], scores: list[float]) -> tuple[str | None, float | None]:
    best: tuple[str | None, float | None] = (None, None)
    for text, score in zip(texts, scores):
        clean = normalise_plate(text)
        # the province character is upper-case-proof; fix digit/letter confusions only after it
        match = PLATE.search(clean[:1] + clean[1:])
        if match and (best[1] is None or score > best[1]):
            best = (match.group(0), round(float(score), 3))
    return best


# -- clip ring ----------------------------------------------------------------------------------------

@dataclass(slots=True)
class RingFrame:
    t: float
    jpeg: bytes
    persons: tuple[tuple[int, Box], ...]     # boxes already scaled to the ring's size


class ClipRing:
    """Small JPEG frames of the last ``seconds``, for clips; written by the pipeline, read by the
    evidence thread."""

    def __init__(self, seconds: float, fps: float, width: int, quality: int = 70):
        self.seconds, self.interval, self.width, self.quality = seconds, 1.0 / fps, width, quality
        self._frames: deque[RingFrame] = deque()
        self._lock = threading.Lock()
        self.last_t = 0.0

    def due(self, t: float) -> bool:
        return t - self.last_t >= self.interval * 0.9

    def add(self, t: float, image: np.ndarray, persons: tuple[tuple[int, Box], ...] = ()) -> None:
        h, w = image.shape[:2]
        scale = min(1.0, self.width / w)
        small = cv2.resize(image, (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2),
                           interpolation=cv2.INTER_AREA) if scale < 1 else image
        scaled = tuple((tid, tuple(v * scale for v in box)) for tid, box in persons)
        entry = RingFrame(t, jpeg(small, self.quality), scaled)   # type: ignore[arg-type]
        with self._lock:
            self._frames.append(entry)
            while self._frames and self._frames[0].t < t - self.seconds:
                self._frames.popleft()
        self.last_t = t

    def between(self, t0: float, t1: float) -> list[RingFrame]:
        with self._lock:
            return [f for f in self._frames if t0 <= f.t <= t1]

    @property
    def newest(self) -> float | None:
        with self._lock:
            return self._frames[-1].t if self._frames else None


def encode_clip(frames: list[RingFrame], fps: float, fmt: str, blur: bool, subject: int | None) -> tuple[bytes, str, str]:
    """(data, file name, MIME type) of a clip of ``frames``."""
    if not frames:
        raise ValueError("no frames for the clip")
    first = cv2.imdecode(np.frombuffer(frames[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    h, w = first.shape[:2]
    name, mime, fourcc = (("clip.mp4", "video/mp4", "mp4v") if fmt == "mp4" else ("clip.avi", "video/x-msvideo", "MJPG"))
    fd, path = tempfile.mkstemp(suffix=os.path.splitext(name)[1], prefix="edge-clip-")
    os.close(fd)
    try:
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
        if not writer.isOpened():
            raise ValueError(f"cannot write a {fmt} clip (codec {fourcc} missing)")
        for frame in frames:
            image = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
            if image is None or image.shape[:2] != (h, w):
                continue
            if blur:
                image = blur_regions(image, faces_to_blur(frame.persons, subject))
            writer.write(image)
        writer.release()
        with open(path, "rb") as f:
            return f.read(), name, mime
    finally:
        os.unlink(path)


# -- building the files -------------------------------------------------------------------------------

@dataclass
class Built:
    files: list[tuple[str, bytes, str]]           # (name, data, MIME type)
    data: dict[str, Any] = field(default_factory=dict)


def build_violation(violation: Any, *, quality: int, crop: bool, plate: bool, blur: bool) -> Built:
    """Stills, crop and plate of a :class:`~drivers.camera.rules.Violation` (shots with images)."""
    files: list[tuple[str, bytes, str]] = []
    images = []
    subject = violation.track if violation.label == "person" else None
    for i, shot in enumerate(violation.shots):
        image = shot.frame.image
        if blur:
            image = blur_regions(image, faces_to_blur(shot.frame.persons, violation.track))
        files.append((f"{i}.jpg", jpeg(image, quality), "image/jpeg"))
        images.append({"name": f"{i}.jpg", "t": int(shot.frame.t * 1000),
                       "box": [round(v, 1) for v in shot.box]})
    data: dict[str, Any] = {"images": images}
    if violation.shots:
        h, w = violation.shots[0].frame.image.shape[:2]
        data["frame_size"] = [w, h]
    if (crop or plate) and violation.shots:
        by_size = sorted(violation.shots, key=lambda s: -(s.box[2] - s.box[0]) * (s.box[3] - s.box[1]))
        best = by_size[0]
        x1, y1, x2, y2 = clip_box(best.box, best.frame.image.shape, 0.05)
        cut = best.frame.image[y1:y2, x1:x2]
        if cut.size:
            if plate and violation.label != "person":
                started = time.perf_counter()
                # the largest view first; it may be blurred or the plate hidden: then the others
                for shot in by_size:
                    sx1, sy1, sx2, sy2 = clip_box(shot.box, shot.frame.image.shape, 0.05)
                    text, confidence = PlateReader.read(shot.frame.image[sy1:sy2, sx1:sx2])
                    if text is not None:
                        break
                data["plate"] = text
                data["plate_confidence"] = confidence
                data["ocr_ms"] = round((time.perf_counter() - started) * 1000, 1)
            if crop:
                if blur and subject is None:
                    shifted = tuple((tid, (b[0] - x1, b[1] - y1, b[2] - x1, b[3] - y1))
                                    for tid, b in best.frame.persons)
                    cut = blur_regions(cut, faces_to_blur(shifted, violation.track))   # type: ignore[arg-type]
                files.append(("crop.jpg", jpeg(cut, quality), "image/jpeg"))
                data["crop"] = "crop.jpg"
    return Built(files, data)
