"""Hardware-in-the-loop intersection camera: rendered traffic with staged violations, served over a real RTSP server.

Three parts:

* :class:`~tests.hardware_sim.traffic.TrafficModel` moves vehicles and people on the junction, stages
  violations and writes their ground truth;
* :class:`~tests.hardware_sim.junction.JunctionRenderer` draws each scene;
* ``rtsp_server.py``, GStreamer's RTSP server (appsrc -> x264enc -> rtph264pay), runs as a child process
  under Debian's ``/usr/bin/python3`` (the only interpreter with the GStreamer bindings) and reads raw
  I420 frames from its stdin.

The producer thread here keeps scene time locked to the wall clock: frame ``n`` shows scene time
``n / fps`` and is rendered at ``t0 + n / fps`` (``t0``: epoch seconds of scene time 0). A frame that
cannot be made in time is skipped (its number too), so the stream never drifts from the ground truth.
Every frame carries its number twice, in the on-screen display (top left, like a real camera's OSD) and
as a machine-readable strip of black and white cells in the bottom-left corner (:func:`read_stamp`).

Frames are rendered only while an RTSP client is connected (traffic and ground truth always advance).

Usage from code::

    with CameraSim(fps=10, seed=1, plan=FAST_PLAN, rates={"red_light": 2}) as cam:
        url = cam.url                       # rtsp://127.0.0.1:PORT/cam1
        cam.restart(downtime=2.0)           # the RTSP server goes away and comes back on the same URL
        cam.freeze(3.0)                     # connection kept, no frames for 3 s
        cam.drop(downtime=5.0)              # the server is killed (kill -9), back after 5 s
        cam.corrupt(0.05)                   # 5 % of encoded frames get bytes changed (0: off)
        cam.ground_truth()                  # the violations so far (dicts, see traffic.py)

From the command line: ``python -m tests.hardware_sim.camera_sim --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tests.hardware_sim.junction import Junction, JunctionRenderer
from tests.hardware_sim.signal_controller import DEFAULT_PLAN, PLANS, Plan
from tests.hardware_sim.traffic import VIOLATIONS, Rates, TrafficModel

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
HEADER = struct.Struct(">cI")

# -- the frame-number strip ----------------------------------------------------------------------
# START + 24 bits of the frame number (most significant first) + an even-parity cell, each cell a
# square of black (0) or white (1) in the bottom-left corner, on a grey border.
STAMP_START = (1, 0, 1, 1, 0)
STAMP_BITS = 24


def stamp_cell(width: int) -> int:
    """Side of one cell of the frame-number strip for a frame ``width`` pixels wide."""
    return max(6, width // 128)


def _stamp_cells(number: int) -> list[int]:
    bits = [(number >> (STAMP_BITS - 1 - i)) & 1 for i in range(STAMP_BITS)]
    return [*STAMP_START, *bits, sum(bits) % 2]


def draw_stamp(frame: np.ndarray, number: int, text: str | None = None) -> None:
    """Burn frame ``number`` into ``frame`` (BGR, in place): the cell strip, and ``text`` as an OSD line."""
    h, w = frame.shape[:2]
    c = stamp_cell(w)
    cells = _stamp_cells(number)
    x0, y0 = c, h - 2 * c
    frame[y0 - c // 2:y0 + c + c // 2, x0 - c // 2:x0 + len(cells) * c + c // 2] = 128
    for i, bit in enumerate(cells):
        frame[y0:y0 + c, x0 + i * c:x0 + (i + 1) * c] = 255 if bit else 0
    if text:
        scale = h / 1100
        org = (max(4, w // 160), max(12, int(h * 0.035)))
        thick = max(1, h // 360)
        cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def read_stamp(frame: np.ndarray) -> int | None:
    """The frame number burnt in by :func:`draw_stamp` (BGR or grey frame as decoded), or None."""
    h, w = frame.shape[:2]
    c = stamp_cell(w)
    grey = frame if frame.ndim == 2 else frame[..., 1]      # green: close to luma, no conversion
    x0, y0 = c, h - 2 * c
    m = max(1, c // 4)
    cells = []
    for i in range(len(STAMP_START) + STAMP_BITS + 1):
        patch = grey[y0 + m:y0 + c - m, x0 + i * c + m:x0 + (i + 1) * c - m]
        if patch.size == 0:
            return None
        value = float(patch.mean())
        if 80 < value < 176:
            return None                                  # neither black nor white: no stamp here
        cells.append(1 if value >= 128 else 0)
    if tuple(cells[:len(STAMP_START)]) != STAMP_START:
        return None
    bits = cells[len(STAMP_START):-1]
    if sum(bits) % 2 != cells[-1]:
        return None
    return int("".join(map(str, bits)), 2)


# -- the RTSP server child -------------------------------------------------------------------------

# -- the camera's config on the agent's side ------------------------------------------------------

def junction_camera(junction: Junction | None = None, *, url: str = "rtsp://127.0.0.1:8554/cam1",
                    signal_device: str = "tsc-01", dwell: float = 30.0, cam_id: str = "cam-01",
                    **extra: Any) -> dict[str, Any]:
    """A `cameras:` entry for the simulated junction: its stop line, lanes, no-parking zone and
    carriageway as rules, in the camera's pixels."""
    J = junction or Junction()

    def pts(points):
        return [[round(x, 1), round(y, 1)] for x, y in points]

    lane_width = 0.4 * J.LANE * J.sx
    rules: list[dict[str, Any]] = [
        # northbound traffic drives away from the camera: its front bumper is about a quarter of the
        # way down its box (the roof rises above the footprint)
        {"type": "red_light", "name": "nb-stop", "line": pts(J.stop_line), "direction": "up", "anchor": 0.27,
         "confirm_distance": 30},
        {"type": "illegal_parking", "name": "no-parking", "zone": pts(J.no_parking_zone), "dwell": dwell,
         "anchor": 0.6, "still_px": 20},
        {"type": "zone_intrusion", "name": "carriageway", "zone": pts(J.carriageway), "classes": ["person"],
         "min_time": "300ms"},
    ]
    # wrong way on the northbound lanes: the through lane all the way (straight on through the
    # junction), the turn lanes only up to the junction box, where cross traffic mixes with them
    for lane in ("nb_left", "nb_through", "nb_right"):
        path = J.lanes[lane] if lane == "nb_through" else [p for p in J.lanes[lane] if p[1] >= J.Y_SOUTH * J.sy]
        rules.append({"type": "wrong_way", "name": f"ww-{lane}", "path": pts(path), "width": lane_width,
                      "anchor": 0.6, "min_distance": 60, "min_time": "500ms"})
    # the simulated camera's on-screen caption (top left) and frame-number strip (bottom left)
    # change every frame and are not road: the motion gate and the detections ignore them, as one
    # would set up a real camera's OSD clock
    W, H = J.width, J.height
    strip = stamp_cell(W) * 33
    osd = [[[0, 0], [round(W * 0.6), 0], [round(W * 0.6), round(H * 0.06)], [0, round(H * 0.06)]],
           [[0, H - 4 * stamp_cell(W)], [strip, H - 4 * stamp_cell(W)], [strip, H], [0, H]]]
    # (the detector sees a car in the strip, its box reaching well above it)
    not_road = [osd[0], [[0, H - 10 * stamp_cell(W)], [strip, H - 10 * stamp_cell(W)], [strip, H], [0, H]]]
    entry = {"id": cam_id, "url": url, "model": "vehicles", "fps": 10, "motion": {"ignore": osd},
             "detect": {"ignore": not_road},
             "signal": {"device": signal_device, "point": f"phase{J.approach_phase}"},
             "rules": rules, "evidence": {"clip_before": "6s", "clip_after": "6s"}}
    entry.update(extra)
    return entry


class RtspServerProcess:
    """``rtsp_server.py`` under the system Python: started, fed frames, told about faults, stopped."""

    def __init__(self, host: str, port: int, mount: str, width: int, height: int, fps: int,
                 bitrate: int, threads: int = 1):
        self.args = dict(host=host, port=port, mount=mount, width=width, height=height, fps=fps,
                         bitrate=bitrate, threads=threads)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port
        self.url = ""
        self.clients = 0
        self.lock = threading.Lock()
        self.client_change = threading.Condition(self.lock)
        self.write_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> str:
        if not os.path.exists(SYSTEM_PYTHON):
            raise RuntimeError(f"{SYSTEM_PYTHON} not found: the RTSP server needs Debian's python3 with "
                               "python3-gi and gir1.2-gst-rtsp-server-1.0 (install.sh installs them)")
        cmd = [SYSTEM_PYTHON, "-I", str(SERVER_SCRIPT)]
        for key, value in self.args.items():
            cmd += [f"--{key}", str(value if key != "port" else self.port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     bufsize=0, start_new_session=True)
        line = self._readline(timeout)
        event = json.loads(line) if line else {}
        if event.get("event") != "ready":
            err = b""
            with contextlib.suppress(Exception):
                self.proc.kill()
                err = self.proc.communicate(timeout=5)[1]
            detail = event.get("message") or err.decode(errors="replace").strip()[-2000:] or "no answer"
            raise RuntimeError(f"RTSP server did not start on {self.args['host']}:{self.port}: {detail}")
        self.port = int(event["port"])
        self.url = event["url"]
        with self.lock:
            self.clients = 0
        threading.Thread(target=self._events, args=(self.proc,), name="rtsp-events", daemon=True).start()
        threading.Thread(target=self._drain_stderr, args=(self.proc,), name="rtsp-stderr", daemon=True).start()
        return self.url

    def _readline(self, timeout: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return b""
            chunk = self.proc.stdout.read(1)
            if not chunk:
                return b""
            buf += chunk
        return buf

    def _events(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "clients":
                    with self.lock:
                        if proc is self.proc:
                            self.clients = int(event["n"])
                            self.client_change.notify_all()
        with self.lock:
            if proc is self.proc:
                self.clients = 0
                self.client_change.notify_all()

    @staticmethod
    def _drain_stderr(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for _ in proc.stderr:
            pass

    def send(self, kind: bytes, payload: bytes | memoryview) -> bool:
        """Write one message; False when the server is gone."""
        proc = self.proc
        if proc is None or proc.stdin is None:
            return False
        try:
            with self.write_lock:
                proc.stdin.write(HEADER.pack(kind, len(payload)))
                proc.stdin.write(payload)
            return True
        except (BrokenPipeError, ValueError, OSError):
            return False

    def control(self, **message: Any) -> bool:
        return self.send(b"C", json.dumps(message).encode())

    def stop(self, kill: bool = False, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with self.lock:
            self.clients = 0
            self.client_change.notify_all()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(Exception):
                stream.close()   # type: ignore[union-attr]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the running server process has used so far."""
        proc = self.proc
        if proc is None:
            return 0.0
        try:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0


# -- the camera ------------------------------------------------------------------------------------

class CameraSim:
    """A simulated intersection camera serving ``rtsp://host:port/mount`` (see the module docstring).

    ``size``: (width, height) of the stream, the junction laid out at that size (ground-truth
    coordinates are in these pixels). ``plan_epoch``: the epoch second at which the signal plan is at
    time 0, to agree with a running :class:`SignalControllerSim` (``sim.controller.t0``); by default
    the plan starts with the stream. ``signal``: instead of the plan, a callable of epoch seconds
    returning ``{phase: colour}`` (e.g. ``lambda now: sim.view().vehicles``, preemption included).
    ``duration``: seconds after which the camera stops by itself. ``render_always``: render and send
    frames even with no client connected (for CPU measurements).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, mount: str = "/cam1",
                 size: tuple[int, int] = (1280, 720), fps: int = 10, seed: int = 1, plan: Plan = DEFAULT_PLAN,
                 plan_epoch: float | None = None, signal: Callable[[float], Mapping[int, str]] | None = None,
                 rates: Rates | Mapping[str, float] | float | None = None, flow: float = 8.0, dwell: float = 30.0,
                 truth_path: str | Path | None = None, duration: float | None = None, bitrate: int | None = None,
                 light: float = 1.0, render_always: bool = False, osd: bool = True, name: str = "CAM1",
                 x264_threads: int = 1):
        width, height = size
        if width % 2 or height % 2 or width < 160 or height < 120:
            raise ValueError(f"size {width}x{height}: width and height must be even, at least 160x120")
        if not 1 <= fps <= 60:
            raise ValueError(f"fps {fps}: expected 1..60")
        if not mount.startswith("/"):
            raise ValueError(f"mount {mount!r} must start with '/'")
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.seed = seed
        self.plan = plan
        self.plan_epoch = plan_epoch
        self.signal = signal
        self.duration = duration
        self.light = light
        self.render_always = render_always
        self.osd = osd
        self.name = name
        self.truth_path = Path(truth_path) if truth_path else None
        self.junction = Junction(self.width, self.height)
        self.renderer = JunctionRenderer(self.junction, seed=seed)
        self.t0 = 0.0
        self.model = TrafficModel(self.junction, seed=seed, plan=plan, rates=rates, flow=flow, dwell=dwell,
                                  truth_path=self.truth_path, annotate=self._annotate,
                                  signal_at=self._signal_at if signal else None,
                                  hidden=self.renderer.hidden_fraction)
        self.bitrate = bitrate or max(300, int(2000 * self.width * self.height / (1280 * 720)))
        self.server = RtspServerProcess(host, port, mount, self.width, self.height, self.fps, self.bitrate,
                                        x264_threads)
        self.frozen_until = 0.0              # monotonic; math.inf: until unfreeze()
        self._corrupt = 0.0
        self.frames_sent = 0
        self.frames_rendered = 0
        self.frames_skipped = 0
        self.frame = -1                      # number of the latest frame made (rendered or not)
        self.producer_cpu = 0.0              # CPU seconds of the producer thread: traffic, rendering, sending
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server_lock = threading.RLock()
        self._timers: list[threading.Timer] = []
        self.done = threading.Event()        # set when the producer has ended (stop() or duration)

    # -- time -----------------------------------------------------------------------------------

    def _signal_at(self, t: float) -> Mapping[int, str]:
        assert self.signal is not None
        return self.signal(self.t0 + t)

    def frame_time(self, number: int) -> tuple[float, float]:
        """(scene seconds, epoch seconds) of frame ``number``."""
        return number / self.fps, self.t0 + number / self.fps

    def frame_of(self, scene_t: float) -> int:
        """The first frame showing scene time ``scene_t`` or later."""
        return math.ceil(round(scene_t * self.fps, 6))

    def _annotate(self, record: dict[str, Any], obj: Any) -> dict[str, Any]:
        out = dict(record)
        boxer = getattr(self.renderer, "vehicle_box" if hasattr(obj, "plate") else "pedestrian_box", None)
        if boxer is not None:
            out["bbox"] = [round(float(v), 1) for v in boxer(obj)]
        for key in ("start", "violation"):
            t = record[f"t_{key}"]
            out[f"frame_{key}"] = self.frame_of(t)
            out[f"ts_{key}"] = int(round((self.t0 + t) * 1000))
        out["camera"] = self.server.url
        return out

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> str:
        """Start the RTSP server and the clock; returns the rtsp:// URL."""
        if self._thread is not None:
            return self.url
        if self.truth_path is not None:
            self.truth_path.parent.mkdir(parents=True, exist_ok=True)
            self.truth_path.touch()
        self.server.start()
        self.t0 = time.time()
        if self.plan_epoch is not None:
            self.model.plan_offset = self.t0 - self.plan_epoch
        self._thread = threading.Thread(target=self._produce, name="camera-sim", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop producing frames and the RTSP server."""
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        with self._server_lock:
            self.server.stop()

    def __enter__(self) -> "CameraSim":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ground_truth(self) -> list[dict[str, Any]]:
        """The violations recorded so far (also appended to ``truth_path``)."""
        return self.model.ground_truth()

    def stage(self, kind: str) -> None:
        """Stage one violation of ``kind`` as soon as the traffic allows."""
        self.model.stage(kind)

    # -- faults ----------------------------------------------------------------------------------

    def stop_server(self, kill: bool = False) -> None:
        """Take the RTSP server away (SIGTERM, or SIGKILL with ``kill``); traffic and truth go on."""
        with self._server_lock:
            self.server.stop(kill=kill)

    def start_server(self) -> str:
        """Bring the RTSP server back on the same host, port and mount; returns the URL."""
        with self._server_lock:
            if not self.server.alive:
                deadline = time.monotonic() + 10
                while True:
                    try:
                        self.server.start()
                        break
                    except RuntimeError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
            return self.url

    def restart(self, downtime: float = 0.0, kill: bool = False) -> str:
        """Stop the RTSP server, wait ``downtime`` seconds, start it again on the same URL."""
        self.stop_server(kill=kill)
        if downtime > 0:
            time.sleep(downtime)
        return self.start_server()

    def drop(self, downtime: float | None = None) -> None:
        """Kill the RTSP server (kill -9: connections reset). With ``downtime``, it comes back after that
        many seconds (in the background); without, call :meth:`start_server`."""
        self.stop_server(kill=True)
        if downtime is not None:
            timer = threading.Timer(downtime, self.start_server)
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def freeze(self, seconds: float | None = None) -> None:
        """Keep the connections open but send no frames, for ``seconds`` or until :meth:`unfreeze`."""
        self.frozen_until = math.inf if seconds is None else time.monotonic() + seconds

    def unfreeze(self) -> None:
        self.frozen_until = 0.0

    @property
    def frozen(self) -> bool:
        return time.monotonic() < self.frozen_until

    def corrupt(self, probability: float) -> None:
        """Change about 30 random bytes in this fraction (0..1) of encoded H.264 frames (0 turns it off):
        the decoder sees broken slices (and, when a key frame's parameter sets are hit, undecodable
        frames until the next key frame, one a second), as after bit errors or a failing encoder."""
        self._corrupt = probability
        self.server.control(corrupt=probability)

    # -- producing frames ------------------------------------------------------------------------

    def _produce(self) -> None:
        fps, n = self.fps, 0
        server_seen: subprocess.Popen[bytes] | None = None
        try:
            while not self._stop.is_set():
                scene_t = n / fps
                if self.duration is not None and scene_t > self.duration:
                    break
                wait = self.t0 + scene_t - time.time()
                if wait > 0:
                    if self._stop.wait(wait):
                        break
                elif -wait > 1.5 / fps:                      # late: skip to the frame due now
                    late = int(-wait * fps)
                    self.frames_skipped += late
                    n += late
                    scene_t = n / fps
                scene = self.model.step(scene_t)
                self.frame = n
                if self.server.proc is not server_seen:      # a new server: give it the fault settings
                    server_seen = self.server.proc
                    if self._corrupt:
                        self.server.control(corrupt=self._corrupt)
                if self.server.alive and (self.server.clients > 0 or self.render_always) and not self.frozen:
                    scene.light = self.light
                    img = self.renderer.render(scene)
                    text = None
                    if self.osd:
                        when = dt.datetime.fromtimestamp(self.t0 + scene_t, dt.timezone.utc)
                        text = (f"{self.name} {when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d}Z"
                                f"  t={scene_t:.1f}s  #{n}")
                    draw_stamp(img, n, text)
                    yuv = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)
                    self.frames_rendered += 1
                    if self.server.send(b"F", memoryview(yuv).cast("B")):
                        self.frames_sent += 1
                self.producer_cpu = time.thread_time()
                n += 1
        finally:
            self.done.set()
            if self.duration is not None and not self._stop.is_set():
                with self._server_lock:
                    self.server.stop()

    # -- measurement -----------------------------------------------------------------------------

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far: ``producer`` (the thread here that steps the traffic, renders, stamps and
        sends frames), ``server`` (the running RTSP server process: encoding and streaming)."""
        return {"producer": self.producer_cpu, "server": self.server.cpu_seconds()}


# -- command line ----------------------------------------------------------------------------------

def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.hardware_sim.camera_sim",
        description="Simulated intersection camera: traffic with staged violations, rendered and served over "
                    "RTSP (H.264), ground truth as JSON lines. Prints the rtsp:// URL, then one line per "
                    "violation. Commands on stdin: help.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; "
                        "0.0.0.0 for a gateway on the network)")
    parser.add_argument("--port", type=int, default=0, help="RTSP port (default: a free one)")
    parser.add_argument("--mount", default="/cam1", help="path of the stream (default %(default)s)")
    parser.add_argument("--size", type=_size, default=(1280, 720), help="WIDTHxHEIGHT (default 1280x720; "
                        "960x540 or 640x360 cost less CPU)")
    parser.add_argument("--fps", type=int, default=10, help="frames per second (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="traffic and rendering seed (default %(default)s)")
    parser.add_argument("--plan", choices=sorted(PLANS), default="default",
                        help="signal plan of signal_controller.py (default %(default)s)")
    parser.add_argument("--plan-epoch", type=float, help="epoch seconds at which the plan is at time 0 "
                        "(default: when the stream starts)")
    parser.add_argument("--rates", type=Rates.parse, default=Rates(),
                        help="staged violations per minute: 'red_light=1,illegal_parking=0.2,wrong_way=0.2,"
                        "zone_intrusion=0.3' (any subset), or one number for all four")
    parser.add_argument("--flow", type=float, default=8.0, help="vehicles a minute per approach lane (default %(default)s)")
    parser.add_argument("--dwell", type=float, default=30.0, help="seconds at rest in the no-parking zone that "
                        "make illegal parking (default %(default)s)")
    parser.add_argument("--truth", type=Path, help="append ground truth here (JSON lines)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--bitrate", type=int, help="H.264 kbit/s (default: 2000 at 1280x720, scaled by area)")
    parser.add_argument("--light", type=float, default=1.0, help="brightness: 0.45 dusk .. 1.0 day .. 1.25 glare")
    parser.add_argument("--render-always", action="store_true", help="render even with no client (to measure CPU)")
    parser.add_argument("--no-osd", action="store_true", help="no text overlay (the frame-number strip stays)")
    args = parser.parse_args(argv)

    cam = CameraSim(host=args.host, port=args.port, mount=args.mount, size=args.size, fps=args.fps,
                    seed=args.seed, plan=PLANS[args.plan], plan_epoch=args.plan_epoch, rates=args.rates,
                    flow=args.flow, dwell=args.dwell, truth_path=args.truth, duration=args.duration,
                    bitrate=args.bitrate, light=args.light, render_always=args.render_always, osd=not args.no_osd)
    try:
        url = cam.start()
    except RuntimeError as exc:
        print(f"camera_sim: {exc}", file=sys.stderr)
        return 1
    print(url, flush=True)
    print(f"camera_sim: {args.size[0]}x{args.size[1]}@{args.fps} seed={args.seed} plan={args.plan} "
          f"rates={Rates.of(args.rates).as_dict()} t0={cam.t0:.3f}" + (f" truth={args.truth}" if args.truth else ""),
          file=sys.stderr, flush=True)
    threading.Thread(target=_console, args=(cam,), daemon=True).start()
    shown = 0
    cpu0 = (time.process_time(), time.monotonic())
    try:
        while not cam.done.wait(0.5):
            truth = cam.ground_truth()
            for record in truth[shown:]:
                print(json.dumps(record, ensure_ascii=False), flush=True)
            shown = len(truth)
    except KeyboardInterrupt:
        pass
    finally:
        wall = time.monotonic() - cpu0[1]
        own, server = time.process_time() - cpu0[0], cam.server.cpu_seconds()
        cam.stop()
        print(f"camera_sim: {cam.frames_sent} frames sent, {cam.frames_skipped} skipped; CPU over {wall:.0f} s: "
              f"simulator {100 * own / max(wall, 1e-9):.0f} %, RTSP server {100 * server / max(wall, 1e-9):.0f} % "
              f"of one core", file=sys.stderr, flush=True)
    return 0


CONSOLE_HELP = """commands:
  freeze [SECONDS]    keep connections, send no frames (until 'unfreeze' without SECONDS)
  unfreeze
  drop [SECONDS]      kill -9 the RTSP server; back after SECONDS (or on 'start')
  restart [SECONDS]   stop the RTSP server, start it again after SECONDS (default 0)
  start               start the RTSP server again
  corrupt P           break this fraction (0..1) of encoded buffers; 0 stops
  stage TYPE          stage a violation now: """ + ", ".join(VIOLATIONS) + """
  status              frames, clients, CPU
  quit"""


def _console(cam: CameraSim) -> None:
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, rest = words[0], words[1:]
        arg = float(rest[0]) if rest and cmd != "stage" else None
        try:
            if cmd == "freeze":
                cam.freeze(arg)
            elif cmd == "unfreeze":
                cam.unfreeze()
            elif cmd == "drop":
                cam.drop(arg)
            elif cmd == "restart":
                cam.restart(arg or 0.0)
            elif cmd == "start":
                cam.start_server()
            elif cmd == "corrupt":
                cam.corrupt(arg or 0.0)
            elif cmd == "stage":
                cam.stage(rest[0] if rest else "")
            elif cmd == "status":
                print(json.dumps({"url": cam.url, "server": cam.server.alive, "clients": cam.server.clients,
                                  "frame": cam.frame, "sent": cam.frames_sent, "skipped": cam.frames_skipped,
                                  "frozen": cam.frozen, "cpu": cam.cpu_seconds()}), file=sys.stderr, flush=True)
            elif cmd in ("quit", "exit"):
                cam.stop()
                return
            else:
                print(CONSOLE_HELP, file=sys.stderr, flush=True)
                continue
            print(f"ok {cmd}", file=sys.stderr, flush=True)
        except (ValueError, RuntimeError, IndexError) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
