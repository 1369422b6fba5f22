"""A small multi-object tracker: IoU matching on constant-velocity predictions, then a centroid
fallback, with stable ids.

Enough for a fixed camera at 5-15 processed frames a second: a road user moves a fraction of its
own size between frames, so the predicted box overlaps the next detection. Labels that flicker
among vehicle classes (car/truck) do not break a track: vehicles match vehicles, and the track's
label is the one seen most often.

Where boxes alone are ambiguous (two people crossing, each overlapping both predictions) a road
user's *look*, the mean colour of the middle of its box (a shirt, a roof), breaks the tie: an
overlap with a different look counts for less. It only orders the candidate pairs, never vetoes
one, so a look changed by light or by a vehicle behind a person does not break a track.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

from drivers.camera.geometry import Box, Pt, anchor, centre, cover, iou

VEHICLE_LABELS = frozenset({"car", "bus", "truck", "motorcycle", "van", "vehicle"})
HISTORY = 200   # positions kept per track: ~20 s at 10 fps, enough for dwell and wrong-way windows
LOOK_WEIGHT = 0.5   # overlap taken off a pair whose looks are wholly different ...
LOOK_SPAN = 100.0   # ... which is this far apart in BGR
Look = tuple[float, float, float]


def look_of(image: Any, box: Box) -> Look | None:
    """Mean BGR of the middle of a box: x from 1/4 to 3/4, y from 15 % to 55 % of its height (a
    person's shirt, a car's roof). None for a box too small or outside the image."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    ax, bx = max(0, int(x1 + 0.25 * bw)), min(w, int(x2 - 0.25 * bw) + 1)
    ay, by = max(0, int(y1 + 0.15 * bh)), min(h, int(y1 + 0.55 * bh) + 1)
    if bx <= ax or by <= ay:
        return None
    m = image[ay:by, ax:bx].reshape(-1, image.shape[2]).mean(axis=0)
    return (float(m[0]), float(m[1]), float(m[2]))


def duplicate(a: Box, b: Box) -> bool:
    """Two boxes of one road user: alike in size, the smaller mostly inside the other. NMS at
    IoU 0.5 lets such pairs through for thin boxes: two boxes on one person, 16 and 14 px wide
    and 6 px apart, overlap by IoU 0.49. A car behind a bus is much smaller than the bus."""
    small, large = sorted(((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])))
    return small > 0 and small / large > 0.5 and cover(a, b) > 0.6


def _unlike(a: Look | None, b: Look | None) -> float:
    """0 (the same look, or unknown) .. 1 (wholly different)."""
    if a is None or b is None:
        return 0.0
    return min(1.0, math.dist(a, b) / LOOK_SPAN)


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
    look: Look | None = None       # mean colour of the middle of its box, smoothed
    seen_as: str = ""              # the label of its latest detection (``label`` is the most frequent)

    def __post_init__(self) -> None:
        self.seen_as = self.seen_as or self.label

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
        self.duplicates = 0            # detections not started as tracks: a second box on a tracked one

    def update(self, detections: Iterable[DetectionLike], t: float,
               looks: Sequence[Look | None] | None = None) -> list[Track]:
        """Match the detections of a frame taken at ``t`` (seconds); returns the live tracks.
        ``looks``: each detection's :func:`look_of`, where the caller has the image."""
        dets = [d for d in detections]
        looks = list(looks) if looks is not None else [None] * len(dets)
        live = list(self.tracks.values())
        predicted = {tr.id: tr.predict(t) for tr in live}
        pairs = []
        for ti, tr in enumerate(live):
            for di, det in enumerate(dets):
                if _group(det.label) != _group(tr.label):
                    continue
                overlap = iou(predicted[tr.id], det.box)
                if overlap >= self.iou_threshold:
                    pairs.append((overlap - LOOK_WEIGHT * _unlike(tr.look, looks[di]), ti, di))
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
            self._continue(live[ti], dets[di], t, looks[di])
        for ti, tr in enumerate(live):
            if ti not in used_t:
                tr.misses += 1
        taken = [(_group(dets[di].label), dets[di].box) for _, di in matches]
        for di, det in enumerate(dets):
            if di in used_d:
                continue
            if any(group == _group(det.label) and duplicate(det.box, box) for group, box in taken):
                self.duplicates += 1          # a second box on a road user already followed
                continue
            self._start(det, t, looks[di])
            taken.append((_group(det.label), det.box))    # (detections come best first)
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

    def _start(self, det: DetectionLike, t: float, look: Look | None = None) -> None:
        box = tuple(float(v) for v in det.box)
        track = Track(self.next_id, det.label, box, float(det.score), t, t, best_score=float(det.score), look=look)
        track.labels[det.label] += 1
        track.history.append((t, track.anchor, box))
        self.tracks[track.id] = track
        self.next_id += 1

    def _continue(self, tr: Track, det: DetectionLike, t: float, look: Look | None = None) -> None:
        box = tuple(float(v) for v in det.box)
        if look is not None:
            tr.look = look if tr.look is None else tuple(0.7 * a + 0.3 * b for a, b in zip(tr.look, look))
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
        tr.seen_as = det.label
        tr.history.append((t, tr.anchor, box))
