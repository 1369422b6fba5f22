"""One runner per camera: starts the reader and pipeline threads, feeds them the signal state,
turns their results into events with evidence, and watches over them.

Only finished results reach the event loop (``loop.call_soon_threadsafe``): an event and its
files handed to ``sink.evidence``, a state change for ``sink.device_state``. Decoding, inference,
OCR and encoding never run on it.

Time: the runner's loop (signal copies, the reader watchdog, the stats readings) runs on its
``clock`` (:mod:`agent.core.clock`; tests give a virtual one). The threads keep real time, and so
do the figures measured against a frame's time (commit latency), which the reader stamps.
The watchdog does not compare the reader thread's clock with its own: it notes, on its own
clock, when it last saw the thread's heartbeat change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from agent.core.clock import SYSTEM, Clock
from agent.core.model import Event, EvidenceFile, Reading, now_ms
from agent.core.stats import percentile
from agent.core.driver import Picture, Runner, ShowsPicture
from drivers.camera.options import Options
from drivers.camera.pipeline import Pipeline
from drivers.camera.reader import Reader, display_url
from drivers.camera.rules import SignalBoard, Violation

if TYPE_CHECKING:
    from agent.core.config import DeviceConfig
    from agent.core.model import DeviceSink

log = logging.getLogger("drivers.camera")

SIGNAL_POLL = 0.05      # how often the signal controller's latest readings are copied for the rules
WATCHDOG_SLACK = 5.0    # a reader thread silent this long beyond its own timeouts is replaced


def default_detector_factory(options: Options) -> Callable[[], Any]:
    def make() -> Any:
        from models.runtime import Detector   # late: onnxruntime loads only when a camera runs
        return Detector(options.model, threads=options.detect.threads)
    return make


class CameraRunner(Runner, ShowsPicture):
    def __init__(self, device: "DeviceConfig", options: Options, sink: "DeviceSink",
                 detector_factory: Callable[[], Any] | None = None, *, clock: Clock = SYSTEM):
        self.device_id = device.id
        self.clock = clock
        self.name = f"camera {device.id}"
        self.options = options
        self.sink = sink
        self.detector_factory = detector_factory or default_detector_factory(options)
        self.board = SignalBoard()
        self.reader: Reader | None = None
        self.pipeline: Pipeline | None = None
        self.disabled: str | None = None
        self.online: bool | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.event_ids: dict[int, str] = {}           # evidence key -> the violation's event id
        self.commit_ms: deque[float] = deque(maxlen=500)   # violation moment -> evidence committed
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)   # for benches: event id, type, t, committed
        self.reader_restarts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def device_ids(self) -> tuple[str, ...]:
        return (self.device_id,)

    # -- threads -> loop -----------------------------------------------------------------------------

    def _post(self, kind: str, payload: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_result, kind, payload)

    def _on_state(self, online: bool, message: str | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._state, online, message)

    def _state(self, online: bool, message: str | None) -> None:
        if self.disabled:
            return
        if not online:
            self.errors += 1
            if message != self.last_error:
                log.warning("camera %s: %s", self.device_id, message)
            self.last_error = message
        elif self.online is False:
            log.info("camera %s: stream back", self.device_id)
        self.online = online
        self.sink.device_state(self.device_id, online, message)

    def _on_result(self, kind: str, payload: Any) -> None:
        try:
            if kind == "violation":
                self._violation(*payload)
            elif kind == "clip":
                self._clip(*payload)
            elif kind == "fatal":
                self._disable(payload)
        except Exception:   # noqa: BLE001 - the agent's refusal must not end the camera
            log.exception("camera %s: could not hand over %s", self.device_id, kind)

    def _violation(self, key: int, violation: Violation, built: Any) -> None:
        data = {"rule": violation.rule, "track": violation.track, "class": violation.label,
                "confidence": violation.score, "t_violation": int(violation.t * 1000),
                **violation.data, **built.data}
        event = Event(f"violation.{violation.type}", violation.severity, data, t=int(violation.t * 1000))
        files = [EvidenceFile(name, content, mime) for name, content, mime in built.files]
        event_id = self.sink.evidence(self.device_id, event, files)
        self.event_ids[key] = event_id
        while len(self.event_ids) > 200:
            self.event_ids.pop(next(iter(self.event_ids)))
        # real time, as the frame times these are compared with (the reader thread stamps them)
        record = {"id": event_id, "type": violation.type, "track": violation.track, "plate": data.get("plate"),
                  "t_violation": int(violation.t * 1000), "decided_ms": int(violation.decided * 1000),
                  "handed_ms": now_ms(), "committed_ms": None}
        self.recent.append(record)
        committed = getattr(self.sink, "committed", None)
        if committed is not None:
            task = asyncio.ensure_future(self._note_commit(committed(), record, violation.t))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _note_commit(self, waiter: Any, record: dict[str, Any], t_violation: float) -> None:
        await waiter
        # real time, as the frame's time the violation is dated from
        record["committed_ms"] = now_ms()
        self.commit_ms.append(time.time() * 1000 - t_violation * 1000)

    def _clip(self, key: int, violation: Violation, clip: tuple[str, bytes, str], info: dict[str, Any]) -> None:
        event_id = self.event_ids.get(key)
        name, content, mime = clip
        data = {"event": event_id, "violation": violation.type, "rule": violation.rule, "track": violation.track,
                **info}
        self.sink.evidence(self.device_id, Event("evidence.clip", "info", data, t=int(violation.t * 1000)),
                           [EvidenceFile(name, content, mime)])

    def _disable(self, message: str) -> None:
        self.disabled = f"{message}; camera disabled until this is fixed (the rest of the agent runs on)"
        log.error("camera %s: %s", self.device_id, self.disabled)
        self.sink.device_state(self.device_id, False, self.disabled)
        if self.reader is not None:
            reader, self.reader = self.reader, None
            asyncio.get_running_loop().run_in_executor(None, reader.stop)

    # -- the task --------------------------------------------------------------------------------------

    def _new_reader(self) -> Reader:
        o = self.options
        return Reader(o.stream_url(), name=self.device_id, fps=o.fps, open_timeout=o.open_timeout,
                      read_timeout=o.read_timeout, freeze_after=o.freeze_after,
                      backoff=(o.backoff.initial, o.backoff.max), on_state=self._on_state)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self.reader = self._new_reader()
        except Exception as exc:   # noqa: BLE001 - a secret that cannot be read: say so, do not crash-loop
            self._disable(str(exc))
            await asyncio.Event().wait()
        self.pipeline = Pipeline(self.device_id, self.options, self.reader, self.detector_factory, self.board,
                                 self._post)
        self.pipeline.start()
        self.reader.start()
        log.info("camera %s: reading %s, model %s, %d rule(s)", self.device_id, display_url(self.options.url),
                 self.options.model, len(self.options.rules))
        sources = self.pipeline.rules.wants_signal
        clock = self.clock
        next_stats = clock.monotonic() + self.options.stats_interval
        o = self.options
        silence = o.open_timeout + max(o.read_timeout, o.freeze_after) + o.backoff.max + WATCHDOG_SLACK
        watched = _Heartbeat(self.reader, clock.monotonic())
        while True:
            await clock.sleep(SIGNAL_POLL)
            for source in sources:
                reading = self.sink.latest(source.device, source.point_name)
                if reading is not None:
                    self.board.feed(source.device, source.point_name, reading.value, reading.t / 1000, reading.q)
            if self.disabled:
                continue
            reader = self.reader
            quiet = watched.quiet_for(reader, clock.monotonic())
            if reader is not None and quiet > silence:
                # FFmpeg stuck in a call past its own timeouts: leave that thread, start a fresh one
                self.reader_restarts += 1
                self._state(False, f"reader of {display_url(o.url)} stuck for {quiet:.0f}s; starting a new one")
                reader._stop.set()
                self.reader = self._new_reader()
                self.pipeline.reader = self.reader
                self.reader.start()
            if clock.monotonic() >= next_stats:
                next_stats += o.stats_interval
                self.sink.readings(self.device_id, self._readings())

    def _readings(self) -> list[Reading]:
        t = self.clock.now_ms()
        stats = self.pipeline.stats.as_dict() if self.pipeline else {}
        tracks = len(self.pipeline.tracker.tracks) if self.pipeline else 0
        q = "good" if self.online else "stale"
        return [Reading("fps", stats.get("fps") or 0.0, "fps", t, q),
                Reading("infer_ms", stats.get("infer_ms_p50") or 0.0, "ms", t, q),
                Reading("tracks", tracks, None, t, q),
                Reading("violations", stats.get("violations", 0), None, t, "good")]

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        pipeline, reader = self.pipeline, self.reader
        self.pipeline = None
        if reader is not None:
            await loop.run_in_executor(None, reader.stop, 3.0)
        if pipeline is not None:
            await loop.run_in_executor(None, pipeline.stop, 3.0)
        self._loop = None

    # -- status ----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        entry: dict[str, Any] = {"online": bool(self.online), "errors": self.errors, "last_error": self.last_error,
                                 "disabled": self.disabled, "reader_restarts": self.reader_restarts}
        reader = self.reader
        if reader is not None:
            entry.update({"grabbed": reader.grabbed, "kept": reader.kept, "reconnects": reader.reconnects,
                          "opens_failed": reader.opens_failed, "undecodable": reader.undecodable})
        if self.pipeline is not None:
            entry.update(self.pipeline.stats.as_dict())
            entry["tracks"] = len(self.pipeline.tracker.tracks)
            entry["unknown_signal"] = self.pipeline.rules.stats()["unknown_signal"]
            entry["evidence_ms_p95"] = percentile(self.pipeline.evidence.build_ms, 0.95)
            entry["evidence_wait_ms_p95"] = percentile(self.pipeline.evidence.wait_ms, 0.95)
            entry["evidence_dropped"] = self.pipeline.evidence.dropped
        entry["commit_ms_p50"] = percentile(self.commit_ms, 0.5)
        entry["commit_ms_p95"] = percentile(self.commit_ms, 0.95)
        entry["recent"] = list(self.recent)[-10:]
        return {self.device_id: entry}

    def snapshot_jpeg(self, overlay: bool = True, quality: int = 85) -> bytes | None:
        """The newest frame as JPEG, with the rules' lines and zones drawn (for camera.snapshot)."""
        from drivers.camera.tools import draw_rules
        from drivers.camera.evidence import jpeg
        reader = self.reader
        frame = reader.latest() if reader is not None else None
        if frame is None:
            return None
        image = draw_rules(frame.image, self.options) if overlay else frame.image
        return jpeg(image, quality)

    def picture(self, device_id: str, quality: int = 80) -> Picture | None:
        """The newest frame without overlay (the console draws the rules itself, movable)."""
        from drivers.camera.evidence import jpeg
        reader = self.reader
        frame = reader.latest() if reader is not None else None
        if frame is None:
            return None
        height, width = frame.image.shape[:2]
        return Picture(jpeg(frame.image, quality), width, height, int(frame.t * 1000))


class _Heartbeat:
    """When the watched reader's heartbeat last changed, on the runner's clock."""

    def __init__(self, reader: Reader | None, now: float):
        self.reader, self.beat, self.at = reader, getattr(reader, "heartbeat", None), now

    def quiet_for(self, reader: Reader | None, now: float) -> float:
        """Seconds since ``reader`` last showed a sign of life (a new reader starts the count)."""
        beat = getattr(reader, "heartbeat", None)
        if reader is not self.reader or beat != self.beat:
            self.reader, self.beat, self.at = reader, beat, now
        return now - self.at
