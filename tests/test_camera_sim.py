"""The simulated intersection camera: a real RTSP stream read with OpenCV, the signal it shows, the
violations its traffic stages and their ground truth, and the RTSP server coming back after a restart."""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from tests.fakes import eventually  # noqa: E402
from tests.hardware_sim.camera_sim import CameraSim, draw_stamp, read_stamp  # noqa: E402
from tests.hardware_sim.junction import Junction, JunctionRenderer, Pedestrian, make_vehicle  # noqa: E402
from tests.hardware_sim.signal_controller import FAST_PLAN, signal_state_at  # noqa: E402
from tests.hardware_sim.traffic import (  # noqa: E402
    VIOLATIONS, Rates, TrafficModel, plate_ok, point_in_polygon, read_truth)

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's python3 with GStreamer")

FPS = 10
LAMPS = ("red", "yellow", "green")


def open_capture(url: str, timeout: float = 15.0, fast: bool = False) -> Any:
    """OpenCV's FFmpeg backend over RTSP/TCP, as the camera driver opens it; retried until ``timeout``.
    ``fast``: skip FFmpeg's stream analysis (about 3 s of the open)."""
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp" + (
        "|analyzeduration;0|probesize;32768" if fast else "")

    def opened() -> cv2.VideoCapture | None:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        if cap.isOpened():
            return cap
        cap.release()
        return None
    return eventually(opened, timeout, f"{url} to open", every=0.3)


def lit_lamp(frame: np.ndarray, junction: Junction) -> str:
    """Which lamp of the approach's signal head is lit, from its pixels (and that its colour fits)."""
    hx, hy = junction.signal_head
    h = 80 * junction.sy
    means = []
    for i in range(3):
        cy = int(hy - h / 2 + h * (i + 0.5) / 3)
        patch = frame[cy - 2:cy + 3, int(hx) - 2:int(hx) + 3].reshape(-1, 3).astype(float)
        means.append(patch.mean(axis=0))
    index = int(np.argmax([m.sum() for m in means]))
    b, g, r = means[index]
    colour = "red" if r > 150 and g < 120 else "yellow" if r > 150 and g > 150 else "green" if g > 150 and r < 150 \
        else "?"
    assert colour == LAMPS[index], f"lamp {LAMPS[index]} lit in colour BGR {means[index].round()}"
    return colour


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CameraSim]:
    truth = tmp_path_factory.mktemp("camera") / "truth.jsonl"
    cam = CameraSim(fps=FPS, seed=3, plan=FAST_PLAN, rates=0, truth_path=truth)
    cam.start()
    yield cam
    cam.stop()


@pytest.fixture(scope="module")
def watched(camera: CameraSim) -> dict[str, Any]:
    """Seven seconds of the stream as the driver would read it: per frame, arrival, number, size, lamp."""
    camera.stage("zone_intrusion")
    camera.stage("red_light")
    t_open = time.monotonic()
    cap = open_capture(camera.url)
    opened = time.monotonic() - t_open
    frames = []
    try:
        end = time.monotonic() + 7.0
        while time.monotonic() < end:
            ok, frame = cap.read()
            assert ok, "read failed"
            frames.append((time.monotonic(), read_stamp(frame), frame.shape, lit_lamp(frame, camera.junction)))
    finally:
        cap.release()
    return {"open_s": opened, "frames": frames}


def test_stream_opens_with_opencv_and_delivers_frames_of_the_right_size_and_rate(
        camera: CameraSim, watched: dict[str, Any]) -> None:
    assert re.fullmatch(r"rtsp://127\.0\.0\.1:\d+/cam1", camera.url)
    assert watched["open_s"] < 10
    frames = watched["frames"]
    assert {shape for _, _, shape, _ in frames} == {(720, 1280, 3)}
    numbers = [n for _, n, _, _ in frames]
    assert None not in numbers, "every frame carries a readable frame number"
    assert numbers == sorted(numbers)
    gaps = sum(b - a - 1 for a, b in zip(numbers, numbers[1:]))
    assert gaps <= 2, f"{gaps} frames missing"
    # steady state (after the frames buffered while opening): frames arrive at the frame rate
    settled = [(t, n) for t, n, _, _ in frames if t > frames[0][0] + 1.5]
    span = settled[-1][0] - settled[0][0]
    rate = (len(settled) - 1) / span
    assert 0.8 * FPS < rate < 1.2 * FPS, rate
    # and each arrives soon after it was made (one frame of decoder delay, a little of transport)
    late = [t - camera.frame_time(n)[1] + (time.time() - time.monotonic()) for t, n in settled]
    assert float(np.median(late)) < 0.6


def test_signal_in_frames_follows_the_plan(camera: CameraSim, watched: dict[str, Any]) -> None:
    seen = [(n, lamp) for _, n, _, lamp in watched["frames"]]
    wrong = [(n, lamp, signal_state_at(n / FPS, FAST_PLAN)[2]) for n, lamp in seen
             if lamp != signal_state_at(n / FPS, FAST_PLAN)[camera.junction.approach_phase]]
    assert not wrong, wrong[:5]
    assert {lamp for _, lamp in seen} == set(LAMPS), "7 s of the 9 s fast plan show red, yellow and green"


def test_ground_truth_of_the_stream_is_written_and_aligned(camera: CameraSim, watched: dict[str, Any]) -> None:
    eventually(lambda: {r["type"] for r in camera.ground_truth()} >= {"zone_intrusion", "red_light"}, 10,
               "a zone intrusion and a red light in the ground truth", every=0.2)
    truth = camera.ground_truth()
    assert {r["type"] for r in truth} >= {"zone_intrusion", "red_light"}
    assert read_truth(camera.truth_path) == truth                 # type: ignore[arg-type]
    for record in truth:
        assert record["frame_violation"] == math.ceil(round(record["t_violation"] * FPS, 6))
        assert abs(record["ts_violation"] / 1000 - (camera.t0 + record["t_violation"])) < 0.001
        assert record["camera"] == camera.url
        x1, y1, x2, y2 = record["bbox"]
        assert x1 < record["x"] < x2 and y1 < record["y"] <= y2
        if record["type"] == "red_light":
            assert signal_state_at(record["t_violation"], FAST_PLAN)[2] == "red"


def test_server_restart_and_drop_come_back_on_the_same_url(camera: CameraSim) -> None:
    url = camera.url
    cap = open_capture(url, fast=True)
    ok, frame = cap.read()
    assert ok
    before = read_stamp(frame)
    t = time.monotonic()
    assert camera.restart(downtime=0.5) == url
    while cap.read()[0]:                                  # the old connection ends
        assert time.monotonic() - t < 10
    cap.release()
    cap = open_capture(url, fast=True)
    ok, frame = cap.read()
    assert ok and time.monotonic() - t < 10
    after = read_stamp(frame)
    assert after is not None and before is not None and after > before + 0.5 * FPS   # the scene went on

    camera.drop(downtime=0.5)                              # kill -9, back by itself
    t = time.monotonic()
    while cap.read()[0]:
        assert time.monotonic() - t < 10
    cap.release()
    cap = open_capture(url, fast=True)
    assert cap.read()[0] and time.monotonic() - t < 10

    arrivals = []
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if len(arrivals) == 5:
            camera.freeze(2.0)                             # connection kept, no frames for 2 s
        ok, frame = cap.read()
        assert ok, "the connection survives a freeze"
        arrivals.append((time.monotonic(), read_stamp(frame)))
    cap.release()
    gap, i = max((b[0] - a[0], i) for i, (a, b) in enumerate(zip(arrivals, arrivals[1:])))
    assert 1.5 < gap < 3.0
    # frames resume with the scene's current time (FFmpeg hands a frame over only when the next one or
    # two have arrived, so the last frames sent before the freeze come out just after it)
    assert max(n for _, n in arrivals[i + 1:i + 5]) > arrivals[i][1] + 1.5 * FPS


def test_traffic_stages_every_violation_with_consistent_ground_truth(tmp_path: Path) -> None:
    junction = Junction()
    path = tmp_path / "truth.jsonl"
    model = TrafficModel(junction, seed=7, plan=FAST_PLAN, rates=Rates(4, 3, 3, 3), dwell=8.0, truth_path=path)
    plates: dict[int, str] = {}
    for n in range(1, 150 * FPS + 1):
        scene = model.step(n / FPS)
        for v in scene.vehicles:
            assert plates.setdefault(v.id, v.plate) == v.plate
    truth = model.ground_truth()
    assert read_truth(path) == truth
    assert {r["type"] for r in truth} == set(VIOLATIONS)
    assert all(r["staged"] for r in truth), [r for r in truth if not r["staged"]]
    assert len(set(plates.values())) == len(plates), "plates are unique"
    assert all(plate_ok(p) for p in plates.values())
    phase = junction.approach_phase
    for r in truth:
        assert r["t_start"] <= r["t_violation"] <= 150
        if r["type"] == "zone_intrusion":
            assert r["class"] == "person" and r["plate"] is None
            assert point_in_polygon(r["x"], r["y"], junction.carriageway)
            continue
        assert r["class"] in ("car", "bus", "truck") and plates[r["track"]] == r["plate"]
        if r["type"] == "red_light":
            assert signal_state_at(r["t_violation"], FAST_PLAN)[phase] == "red"
            assert r["lane"].startswith("nb_")
            assert r["y"] < junction.stop_line[0][1] + 120      # at the stop line, not at the frame edge
        elif r["type"] == "illegal_parking":
            assert r["t_violation"] - r["t_start"] == pytest.approx(8.0)
            assert point_in_polygon(r["x"], r["y"], junction.no_parking_zone)
        elif r["type"] == "wrong_way":
            assert r["t_violation"] > r["t_start"]
    # the same seed gives the same ground truth, whatever the frame rate it is stepped at
    again = TrafficModel(junction, seed=7, plan=FAST_PLAN, rates=Rates(4, 3, 3, 3), dwell=8.0)
    for n in range(1, 60 * 25 + 1):
        again.step(n / 25)
    assert again.ground_truth() == [r for r in truth if r["t_violation"] <= 60]


def test_a_person_behind_a_vehicle_is_in_the_truth_only_once_in_view() -> None:
    """The camera cannot see someone behind a bus; the truth records them when they come into view,
    and one never in view on the carriageway not at all (``unseen``)."""
    junction = Junction()
    renderer = JunctionRenderer(junction, seed=1, noise=False)
    person = Pedestrian(1, 640.0, 400.0)
    nearer = make_vehicle(junction, 2, "bus", 640.0, 430.0, 90.0, random.Random(1))    # drawn over the person
    further = make_vehicle(junction, 3, "bus", 640.0, 370.0, 90.0, random.Random(1))   # drawn before
    away = make_vehicle(junction, 4, "car", 100.0, 430.0, 90.0, random.Random(1))
    assert renderer.hidden_fraction(person, [nearer]) > 0.8
    assert renderer.hidden_fraction(person, [further, away]) == 0.0

    def run(hidden) -> TrafficModel:
        model = TrafficModel(junction, seed=7, plan=FAST_PLAN, rates=Rates(0, 0, 0, 4), hidden=hidden)
        for n in range(1, 90 * FPS + 1):
            model.step(n / FPS)
        return model
    plain, seen, never = run(None), run(renderer.hidden_fraction), run(lambda p, vehicles: 1.0)
    people = {r["track"]: r for r in plain.ground_truth() if r["type"] == "zone_intrusion"}
    assert len(people) >= 4
    for r in seen.ground_truth():
        assert r["t_violation"] == pytest.approx(people[r["track"]]["t_violation"] + r.get("hidden_s", 0.0), abs=0.06)
    assert len(seen.ground_truth()) + len(seen.unseen) >= len(people) - 1     # (the last may still be walking)
    assert never.ground_truth() == [] and len(never.unseen) >= len(people) - 1


def test_frame_stamp_round_trip() -> None:
    frame = np.full((360, 640, 3), 90, np.uint8)
    for number in (0, 1, 12345, 2 ** 24 - 1):
        draw_stamp(frame, number, "CAM1 test")
        assert read_stamp(frame) == number
    assert read_stamp(np.full((360, 640, 3), 128, np.uint8)) is None


def test_command_line_prints_the_url_and_stops_after_duration(tmp_path: Path) -> None:
    truth = tmp_path / "t.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "tests.hardware_sim.camera_sim", "--size", "640x360",
                             "--duration", "2", "--truth", str(truth), "--rates", "zone_intrusion=0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.fullmatch(r"rtsp://127\.0\.0\.1:\d+/cam1", out.splitlines()[0])
    assert "frames sent" in err and truth.exists()
    bad = subprocess.run([sys.executable, "-m", "tests.hardware_sim.camera_sim", "--rates", "speeding=1"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=30)
    assert bad.returncode == 2 and "speeding" in bad.stderr
