"""The per-camera work off the event loop: motion gate → detector → tracker → rules → evidence.

Two threads per camera (besides the reader's):

- the **pipeline** thread takes the newest frame from the reader (never a queue of old ones),
  skips the detector when nothing moved, tracks, runs the rules, keeps the clip ring;
- the **evidence** thread encodes stills, crops, reads plates and writes clips, so a slow OCR
  never delays the next frame.

onnxruntime, OpenCV and the OCR release the GIL while they compute, so threads are enough: the
event loop only ever gets finished results, through ``post`` (``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from agent.core.stats import percentile
from drivers.camera.evidence import ClipRing, build_violation, encode_clip
from drivers.camera.geometry import inside
from drivers.camera.options import Options
from drivers.camera.reader import FRAMES, RawFrame, Reader
from drivers.camera.rules import Frame, RuleSet, SignalFn, Violation
from drivers.camera.tracker import Tracker, look_of

log = logging.getLogger("drivers.camera")

GATE_WIDTH = 160


class MotionGate:
    """Did anything move since the last frame? Grey, 160 px wide, blurred: sensor noise and
    compression shimmer stay below ``pixel_delta``; a car a few pixels wide does not."""

    def __init__(self, threshold: float, pixel_delta: int, ignore: tuple = ()):
        self.threshold = threshold
        self.pixel_delta = pixel_delta
        self.ignore = ignore
        self.previous: np.ndarray | None = None
        self.last_fraction = 0.0
        self._keep: np.ndarray | None = None     # at the gate's size: 1 where changes count

    def _mask(self, frame_w: int, shape: tuple[int, int]) -> np.ndarray | None:
        if not self.ignore:
            return None
        if self._keep is None or self._keep.shape != shape:
            k = shape[1] / frame_w
            keep = np.ones(shape, np.uint8)
            for polygon in self.ignore:
                pts = np.round(np.asarray(polygon, np.float64) * k).astype(np.int32)
                cv2.fillPoly(keep, [pts], 0)
                cv2.polylines(keep, [pts], True, 0, 2)   # and the blur's reach around its edge
            self._keep = keep.astype(bool)
        return self._keep

    def moved(self, image: np.ndarray) -> bool:
        h, w = image.shape[:2]
        small = cv2.resize(image, (GATE_WIDTH, max(1, h * GATE_WIDTH // w)), interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0)
        previous, self.previous = self.previous, grey
        if previous is None or previous.shape != grey.shape:
            self.last_fraction = 1.0
            return True
        changed = cv2.absdiff(grey, previous) > self.pixel_delta
        keep = self._mask(w, grey.shape)
        if keep is not None:
            changed &= keep
        self.last_fraction = float(np.count_nonzero(changed)) / changed.size
        return self.last_fraction > self.threshold


@dataclass
class PipelineStats:
    frames: int = 0
    detected: int = 0          # frames that went through the detector
    gated: int = 0             # frames the motion gate let skip it
    errors: int = 0
    violations: int = 0
    last_error: str | None = None
    infer_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    frame_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    lag_ms: deque = field(default_factory=lambda: deque(maxlen=200))     # frame taken -> processed
    times: deque = field(default_factory=lambda: deque(maxlen=100))

    def as_dict(self) -> dict[str, Any]:
        p = percentile
        fps = None
        if len(self.times) > 1 and self.times[-1] > self.times[0]:
            fps = round((len(self.times) - 1) / (self.times[-1] - self.times[0]), 2)
        return {"frames": self.frames, "detected": self.detected, "gated": self.gated, "errors": self.errors,
                "violations": self.violations, "fps": fps, "infer_ms_p50": p(self.infer_ms, 0.5),
                "infer_ms_p95": p(self.infer_ms, 0.95), "frame_ms_p95": p(self.frame_ms, 0.95),
                "lag_ms_p95": p(self.lag_ms, 0.95), "last_error": self.last_error}


class Pipeline:
    """Runs one camera's analysis on its own thread. ``post(kind, payload)`` must be thread-safe
    (the runner's wraps ``loop.call_soon_threadsafe``); kinds: ``violation``, ``clip``, ``fatal``."""

    def __init__(self, name: str, options: Options, reader: Reader, detector_factory: Callable[[], Any],
                 signal: SignalFn | None, post: Callable[[str, Any], None]):
        self.name = name
        self.options = options
        self.reader = reader
        self.detector_factory = detector_factory
        self.detector: Any = None
        self.post = post
        self.gate = MotionGate(options.motion.threshold, options.motion.pixel_delta, options.motion.ignore)
        self.tracker = Tracker(options.tracker.iou, options.tracker.max_gap, options.tracker.min_hits)
        self.rules = RuleSet(list(options.rules), signal, options.signal)
        ev = options.evidence
        self.ring = ClipRing(ev.clip_before + ev.clip_after + 2.0, ev.clip_fps, ev.clip_width) \
            if ev.clip_format != "none" else None
        self.evidence = EvidenceWorker(name, options, self.ring, post)
        self.stats = PipelineStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_detect = 0.0
        self._shape: tuple[int, ...] | None = None
        self.labels: set[str] | None = set(options.detect.classes) if options.detect.classes else None

    def start(self) -> "Pipeline":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        self.evidence.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.evidence.stop(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.detector = self.detector_factory()
        except Exception as exc:   # noqa: BLE001 - ModelError and anything onnxruntime raises
            self.post("fatal", f"model cannot be used: {exc}")
            return
        seq = 0
        while not self._stop.is_set():
            raw = self.reader.wait_newer(seq, 0.5)
            if raw is None:
                continue
            seq = raw.seq
            try:
                self.process(raw)
            except Exception as exc:   # noqa: BLE001 - one bad frame must not stop the camera
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                shape = getattr(raw.image, "shape", None)
                FRAMES.failed(exc, where=f"{self.name} frame {raw.seq} {shape}")

    def _unsettled(self) -> bool:
        """Tracks the motion gate cannot vouch for: one still moving, or one seen too few times to
        be confirmed (someone just glimpsed). A person far off walks a pixel a frame in the gate's
        thumbnail, under its threshold: until they are confirmed and standing, keep looking."""
        min_hits = self.options.tracker.min_hits
        return any(tr.hits < min_hits or abs(tr.velocity[0]) + abs(tr.velocity[1]) > 3.0
                   for tr in self.tracker.tracks.values())

    def process(self, raw: RawFrame) -> list[Violation]:
        """One frame through the gate, detector, tracker and rules (public for tests and benches)."""
        started = time.perf_counter()
        image = raw.image
        # what the reader delivers is 8-bit BGR and never empty; anything else is refused here, not
        # by OpenCV inside the motion gate (cv2.error for a float or bool frame, ZeroDivisionError
        # for one 0 pixels wide: found by bench/fuzz.py)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
            raise ValueError(f"unexpected frame: shape {image.shape}, {image.dtype} (8-bit BGR expected)")
        if self._shape is not None and image.shape != self._shape:
            log.warning("camera %s: frame size changed from %s to %s: tracks restart", self.name,
                        self._shape[1::-1], image.shape[1::-1])
            self.tracker.reset()
        self._shape = image.shape
        t = raw.t
        moved = self.gate.moved(image) if self.options.motion.enabled else True
        if moved or self._unsettled() or t - self._last_detect >= self.options.motion.idle_interval:
            detections = self.detector.detect(image)
            self._last_detect = t
            self.stats.detected += 1
            timing = getattr(self.detector, "last_timing", None)
            if timing is not None:
                self.stats.infer_ms.append(timing.total_ms)
            score = self.options.detect.score
            detections = [d for d in detections if d.score >= score and (self.labels is None or d.label in self.labels)]
            ignore = self.options.detect.ignore
            if ignore:
                detections = [d for d in detections
                              if not any(inside(((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2), area)
                                         for area in ignore)]
            tracks = self.tracker.update(detections, t, [look_of(image, d.box) for d in detections])
        else:
            self.stats.gated += 1
            tracks = self.tracker.hold(t)
        persons = tuple((tr.id, tr.box) for tr in tracks if tr.label == "person" and tr.last_t == t)
        frame = Frame(raw.seq, t, image, persons)
        if self.ring is not None and self.ring.due(t):
            self.ring.add(t, image, persons if self.options.privacy.blur_faces else ())
        violations = self.rules.update(frame, tracks, self.tracker.ended, self.options.tracker.min_hits)
        for violation in violations:
            self.stats.violations += 1
            log.info("camera %s: %s by track %d (%s) at %.3f", self.name, violation.type, violation.track,
                     violation.label, violation.t)
            self.evidence.submit(violation)
        now = time.perf_counter()
        self.stats.frames += 1
        self.stats.frame_ms.append((now - started) * 1000)
        self.stats.lag_ms.append((time.time() - t) * 1000)
        self.stats.times.append(time.monotonic())
        return violations


class EvidenceWorker:
    """Builds evidence off the pipeline thread, on two threads of its own: one for the violation
    record (stills, crop, plate), which the centre waits for, and one for clips, which are encoded
    once their last second has been recorded. A clip taking a second to encode must never hold
    back the next violation's record."""

    def __init__(self, name: str, options: Options, ring: ClipRing | None, post: Callable[[str, Any], None]):
        self.name = name
        self.options = options
        self.ring = ring
        self.post = post
        self.queue: queue.Queue[Violation] = queue.Queue(maxsize=64)
        self.clip_queue: queue.Queue[tuple[float, int, Violation]] = queue.Queue()
        self.clips: list[tuple[float, int, Violation]] = []   # (due, key, violation): the clip thread's own
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._key = 0
        self.dropped = 0
        self.repeats = 0
        self.seen_plates: dict[tuple[str, str], float] = {}
        self.build_ms: deque = deque(maxlen=100)
        self.wait_ms: deque = deque(maxlen=100)     # decided -> the stills thread took it up

    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, name=f"evidence-{self.name}", daemon=True)]
        if self.ring is not None:
            self._threads.append(threading.Thread(target=self._run_clips, name=f"clips-{self.name}", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        if self.clips or not self.clip_queue.empty():
            log.warning("camera %s: %d clip(s) not finished at stop", self.name,
                        len(self.clips) + self.clip_queue.qsize())

    @property
    def busy(self) -> bool:
        """Violations submitted whose record is not built yet (benches wait on this)."""
        return self.queue.unfinished_tasks > 0

    def submit(self, violation: Violation) -> None:
        try:
            self.queue.put_nowait(violation)
        except queue.Full:
            self.dropped += 1
            log.error("camera %s: evidence queue full: %s by track %d dropped", self.name, violation.type,
                      violation.track)

    def _run(self) -> None:
        if self.options.evidence.plate:
            from drivers.camera.evidence import PlateReader
            PlateReader.warm_up()    # load and run the OCR now, not when the first violation waits for it
        while not self._stop.is_set():
            try:
                violation = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self.wait_ms.append(max(0.0, (time.time() - violation.decided) * 1000) if violation.decided else 0.0)
                self._violation(violation)
            finally:
                self.queue.task_done()

    def _run_clips(self) -> None:
        while not self._stop.is_set():
            try:
                self.clips.append(self.clip_queue.get(timeout=0.1))
            except queue.Empty:
                pass
            self._due_clips()

    def _violation(self, violation: Violation) -> None:
        ev = self.options.evidence
        started = time.perf_counter()
        try:
            built = build_violation(violation, quality=ev.jpeg_quality, crop=ev.crop, plate=ev.plate,
                                    blur=self.options.privacy.blur_faces)
        except Exception as exc:   # noqa: BLE001 - report the violation even without pictures
            log.exception("camera %s: evidence for %s failed", self.name, violation.type)
            from drivers.camera.evidence import Built
            built = Built([], {"evidence_error": f"{type(exc).__name__}: {exc}"})
        self.build_ms.append((time.perf_counter() - started) * 1000)
        plate = built.data.get("plate")
        if plate:
            # a track that broke in two is one vehicle: the plate says so
            key = (violation.type, plate)
            last = self.seen_plates.get(key)
            self.seen_plates[key] = violation.t
            if last is not None and violation.t - last < ev.repeat_window:
                self.repeats += 1
                log.info("camera %s: %s by %s again (track %d): counted once", self.name, violation.type, plate,
                         violation.track)
                return
            if len(self.seen_plates) > 1000:
                cutoff = violation.t - ev.repeat_window
                self.seen_plates = {k: t for k, t in self.seen_plates.items() if t >= cutoff}
        self._key += 1
        clip = self.ring is not None
        if clip:
            built.data["clip"] = {"follows": True, "from": int((violation.t - ev.clip_before) * 1000),
                                  "to": int((violation.t + ev.clip_after) * 1000)}
        self.post("violation", (self._key, violation, built))
        if clip:   # after the record: the clip's event names the violation's
            self.clip_queue.put((violation.t + ev.clip_after, self._key, violation))

    def _due_clips(self) -> None:
        if not self.clips or self.ring is None:
            return
        newest = self.ring.newest
        now = time.time()
        ready = [c for c in self.clips if (newest is not None and newest >= c[0]) or now > c[0] + 3.0]
        for entry in ready:
            self.clips.remove(entry)
            _, key, violation = entry
            ev = self.options.evidence
            frames = self.ring.between(violation.t - ev.clip_before, violation.t + ev.clip_after)
            try:
                data, name, mime = encode_clip(frames, ev.clip_fps, ev.clip_format, self.options.privacy.blur_faces,
                                               violation.track)
            except Exception as exc:   # noqa: BLE001
                log.warning("camera %s: no clip for %s: %s", self.name, violation.type, exc)
                continue
            info = {"frames": len(frames), "fps": ev.clip_fps,
                    "from": int(frames[0].t * 1000), "to": int(frames[-1].t * 1000)}
            self.post("clip", (key, violation, (name, data, mime), info))
