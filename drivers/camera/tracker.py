"""A small multi-object tracker: IoU matching on constant-velocity predictions, then a centroid
fallback, with stable ids.

Enough for a fixed camera at 5-15 processed frames a second: a road user moves a fraction of its
own size between frames, so the predicted box overlaps the next detection. Labels that flicker
among vehicle classes (car/truck) do not break a track: vehicles match vehicles, and the track's
label is the one seen most often.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from drivers.camera.geometry import Box, Pt, anchor, centre, iou

VEHICLE_LABELS = frozenset({"car", "bus", "truck", "motorcycle", "van", "vehicle"})
HISTORY = 200   # positions kept per track: ~20 s at 10 fps, enough for dwell and wrong-way windows


class DetectionLike(Protocol):
    label: str
    score: float
    box: tuple[float, float, float, float]


def _group(label: str) -> str:
    return "vehicle" if label in VEHICLE_LABELS else label


@dataclass
class Track:
    id: int
    label: str
    box: Box
    score: float
    first_t: float                 # seconds (the frame clock)
    last_t: float
    hits: int = 1
    best_score: float = 0.0
    velocity: Pt = (0.0, 0.0)      # px/s of the box centre
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))   # (t, anchor, box)
    labels: Counter = field(default_factory=Counter)
    misses: int = 0                # detector runs in a row without a match

    @property
    def anchor(self) -> Pt:
        return anchor(self.box)

    def predict(self, t: float) -> Box:
        dt = max(0.0, t - self.last_t)
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        x1, y1, x2, y2 = self.box
        return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)

    def position_at(self, t: float) -> tuple[float, Pt, Box] | None:
        """The newest history entry at or before t."""
        for entry in reversed(self.history):
            if entry[0] <= t:
                return entry
        return None


class Tracker:
    def __init__(self, iou_threshold: float = 0.2, max_gap: float = 1.0, min_hits: int = 2):
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self.min_hits = min_hits
        self.tracks: dict[int, Track] = {}
        self.next_id = 1
        self.ended: list[Track] = []   # tracks ended by the last update, for the rules to forget

    def update(self, detections: Iterable[DetectionLike], t: float) -> list[Track]:
        """Match the detections of a frame taken at ``t`` (seconds); returns the live tracks."""
        dets = [d for d in detections]
        live = list(self.tracks.values())
        predicted = {tr.id: tr.predict(t) for tr in live}
        pairs = []
        for ti, tr in enumerate(live):
            for di, det in enumerate(dets):
                if _group(det.label) != _group(tr.label):
                    continue
                overlap = iou(predicted[tr.id], det.box)
                if overlap >= self.iou_threshold:
                    pairs.append((overlap, ti, di))
        pairs.sort(reverse=True)
        used_t: set[int] = set()
        used_d: set[int] = set()
        matches = []
        for _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            matches.append((ti, di))
        # centroid fallback: a fast or small object whose predicted box misses its detection
        far = []
        for ti, tr in enumerate(live):
            if ti in used_t:
                continue
            pc = centre(predicted[tr.id])
            size = math.hypot(tr.box[2] - tr.box[0], tr.box[3] - tr.box[1])
            for di, det in enumerate(dets):
                if di in used_d or _group(det.label) != _group(tr.label):
                    continue
                distance = math.dist(pc, centre(det.box))
                dsize = math.hypot(det.box[2] - det.box[0], det.box[3] - det.box[1])
                if distance < 0.5 * max(size, dsize) and 0.5 < dsize / max(size, 1e-6) < 2.0:
                    far.append((distance, ti, di))
        far.sort()
        for _, ti, di in far:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            matches.append((ti, di))

        for ti, di in matches:
            self._continue(live[ti], dets[di], t)
        for ti, tr in enumerate(live):
            if ti not in used_t:
                tr.misses += 1
        for di, det in enumerate(dets):
            if di not in used_d:
                self._start(det, t)
        self.ended = [tr for tr in self.tracks.values() if t - tr.last_t > self.max_gap]
        for tr in self.ended:
            del self.tracks[tr.id]
        return list(self.tracks.values())

    def hold(self, t: float) -> list[Track]:
        """No detector run for this frame (the motion gate saw nothing move): every track is where
        it was, seen at ``t``, standing still."""
        for tr in self.tracks.values():
            tr.last_t = t
            tr.velocity = (0.0, 0.0)
            tr.history.append((t, tr.anchor, tr.box))
        self.ended = []
        return list(self.tracks.values())

    def confirmed(self) -> list[Track]:
        return [tr for tr in self.tracks.values() if tr.hits >= self.min_hits]

    def reset(self) -> None:
        self.ended = list(self.tracks.values())
        self.tracks.clear()

    def _start(self, det: DetectionLike, t: float) -> None:
        box = tuple(float(v) for v in det.box)
        track = Track(self.next_id, det.label, box, float(det.score), t, t, best_score=float(det.score))
        track.labels[det.label] += 1
        track.history.append((t, track.anchor, box))
        self.tracks[track.id] = track
        self.next_id += 1

    def _continue(self, tr: Track, det: DetectionLike, t: float) -> None:
        box = tuple(float(v) for v in det.box)
        dt = t - tr.last_t
        if dt > 1e-3:
            (ox, oy), (nx, ny) = centre(tr.box), centre(box)
            vx, vy = (nx - ox) / dt, (ny - oy) / dt
            a = 0.6 if tr.hits > 1 else 1.0     # smooth, but take the first measurement as it is
            tr.velocity = (a * vx + (1 - a) * tr.velocity[0], a * vy + (1 - a) * tr.velocity[1])
        tr.box = box
        tr.score = float(det.score)
        tr.best_score = max(tr.best_score, tr.score)
        tr.last_t = t
        tr.hits += 1
        tr.misses = 0
        tr.labels[det.label] += 1
        tr.label = tr.labels.most_common(1)[0][0]
        tr.history.append((t, tr.anchor, box))
