"""Camera evidence: stills, crop, plate text, clip and face blurring, through a fake sink that
lists files with their sha256 the way the agent does."""

from __future__ import annotations

import hashlib
import random
import time

import cv2
import numpy as np
import pytest

from drivers.camera.evidence import ClipRing, build_violation, head_region
from drivers.camera.options import Options
from drivers.camera.pipeline import EvidenceWorker
from drivers.camera.rules import Frame, Shot, Violation
from drivers.camera.runner import CameraRunner
from tests.fakes import RecordingSink, eventually
from tests.hardware_sim.junction import Junction, JunctionRenderer, Pedestrian, Scene, make_vehicle

pytestmark = pytest.mark.timeout(60)


J = Junction()
RENDERER = JunctionRenderer(J, seed=3)


def camera_options(**extra) -> Options:
    return Options.model_validate({
        "url": "rtsp://127.0.0.1:8554/cam1",
        "signal": {"device": "tsc-01", "point": "phase2"},
        "rules": [{"type": "red_light", "line": [list(J.stop_line[0]), list(J.stop_line[1])], "direction": "up"}],
        **extra})


def red_light_violation(walker: bool = False) -> tuple[Violation, str, list]:
    rng = random.Random(7)
    x, _ = J._p(1.5 * J.LANE, 400)
    car = make_vehicle(J, 1, "car", x, 420.0, 0.0, rng)
    shots, frames = [], []
    for i, y in enumerate((420.0, 300.0, 200.0)):
        car.y = y
        people = [Pedestrian(9, 200.0, 600.0)] if walker else []
        scene = Scene(t=100 + i * 0.4, signal={2: "red"}, vehicles=[car], pedestrians=people)
        image = RENDERER.render(scene)
        persons = ((9, RENDERER.pedestrian_box(people[0])),) if walker else ()
        frame = Frame(i, 1_700_000_000.0 + i * 0.4, image, persons)
        frames.append(frame)
        shots.append(Shot(frame, RENDERER.vehicle_box(car)))
    violation = Violation("red_light", "red_light0", "major", 17, "car", 0.91, 1_700_000_000.3, shots,
                          {"signal": "red", "red_for": 4.2}, 1_700_000_000.8)
    return violation, car.plate, frames


def test_violation_evidence_files_plate_and_sha256_through_the_sink():
    violation, plate, _ = red_light_violation()
    options = camera_options()
    built = build_violation(violation, quality=85, crop=True, plate=True, blur=False)
    sink = RecordingSink()
    runner = CameraRunner(type("D", (), {"id": "cam-01"})(), options, sink, detector_factory=lambda: None)
    runner._on_result("violation", (1, violation, built))

    (device, event, listed, files), = sink.event_log
    assert device == "cam-01" and event.type == "violation.red_light" and event.severity == "major"
    assert [f["name"] for f in listed] == ["0.jpg", "1.jpg", "2.jpg", "crop.jpg"]
    for entry in listed:
        assert entry["sha256"] == hashlib.sha256(files[entry["name"]]).hexdigest()
        assert entry["bytes"] == len(files[entry["name"]]) and entry["type"] == "image/jpeg"
    stills = [cv2.imdecode(np.frombuffer(files[f"{i}.jpg"], np.uint8), cv2.IMREAD_COLOR) for i in range(3)]
    assert all(s.shape == (720, 1280, 3) for s in stills)
    crop = cv2.imdecode(np.frombuffer(files["crop.jpg"], np.uint8), cv2.IMREAD_COLOR)
    assert 50 < crop.shape[1] < 300
    data = event.data
    assert data["plate"] == plate and data["plate_confidence"] > 0.8
    assert data["track"] == 17 and data["class"] == "car" and data["signal"] == "red"
    assert data["t_violation"] == 1_700_000_000_300 and event.t == 1_700_000_000_300
    assert [i["t"] for i in data["images"]] == [1_700_000_000_000, 1_700_000_000_400, 1_700_000_000_800]
    assert data["images"][0]["box"][3] > data["images"][2]["box"][3]        # further on = higher in the image
    assert data["frame_size"] == [1280, 720]


def test_clip_follows_with_the_violations_event_id():
    options = camera_options(evidence={"clip_before": "2s", "clip_after": "1s", "clip_fps": 8, "plate": False})
    ring = ClipRing(5.0, 8, 320)
    collected: list = []
    worker = EvidenceWorker("cam-01", options, ring, lambda kind, payload: collected.append((kind, payload)))
    violation, _, frames = red_light_violation()
    now = time.time()
    violation.t = now - 0.2
    base = RENDERER.render(Scene(t=0.0))
    for k in range(30):                      # 2.5 s before the moment to 1.1 s after it
        ring.add(now - 2.7 + k / 8, base)
    worker.start()
    try:
        worker.submit(violation)
        eventually(lambda: len(collected) >= 2, 10, "the violation and its clip from the worker thread")
    finally:
        worker.stop()
    assert [kind for kind, _ in collected] == ["violation", "clip"]
    sink = RecordingSink()
    runner = CameraRunner(type("D", (), {"id": "cam-01"})(), options, sink, detector_factory=lambda: None)
    for kind, payload in collected:
        runner._on_result(kind, payload)
    (_, first, _, _), (_, clip_event, listed, files) = sink.event_log
    assert first.data["clip"]["follows"] is True
    assert clip_event.type == "evidence.clip" and clip_event.data["event"] == "gw-1"
    assert [f["name"] for f in listed] == ["clip.mp4"] and listed[0]["type"] == "video/mp4"
    path = f"/tmp/edge-test-clip-{time.monotonic_ns()}.mp4"
    with open(path, "wb") as f:
        f.write(files["clip.mp4"])
    cap = cv2.VideoCapture(path)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first_frame = cap.read()
    cap.release()
    assert ok and first_frame.shape[1] == 320
    assert clip_event.data["frames"] == count and 20 <= count <= 26      # 2 s + 1 s at 8 fps


def test_faces_of_bystanders_are_blurred_not_the_subject():
    violation, _, frames = red_light_violation(walker=True)
    plain = build_violation(violation, quality=95, crop=False, plate=False, blur=False)
    blurred = build_violation(violation, quality=95, crop=False, plate=False, blur=True)
    head = [int(v) for v in head_region(frames[0].persons[0][1])]
    x1, y1, x2, y2 = max(head[0], 0), max(head[1], 0), head[2], head[3]

    def region(files, name):
        image = cv2.imdecode(np.frombuffer(dict((n, d) for n, d, _ in files)[name], np.uint8), cv2.IMREAD_COLOR)
        return image[y1:y2, x1:x2].astype(float), image

    before, whole_before = region(plain.files, "0.jpg")
    after, whole_after = region(blurred.files, "0.jpg")
    assert np.abs(before - after).mean() > 3                       # the head changed
    assert cv2.Laplacian(after.astype(np.uint8), cv2.CV_64F).var() < cv2.Laplacian(
        before.astype(np.uint8), cv2.CV_64F).var()                 # and lost its detail
    car = [int(v) for v in violation.shots[0].box]
    assert np.abs(whole_before[car[1]:car[3], car[0]:car[2]].astype(float)
                  - whole_after[car[1]:car[3], car[0]:car[2]]).mean() < 1.0   # the subject is untouched
    # a person who is the subject (zone intrusion) is not blurred
    violation.label, violation.track = "person", 9
    own = build_violation(violation, quality=95, crop=False, plate=False, blur=True)
    mine, _ = region(own.files, "0.jpg")
    assert np.abs(before - mine).mean() < 1.0


def test_plate_text_province_look_alikes_are_put_back_and_nothing_else_is_changed():
    from drivers.camera.evidence import _PROVINCE_OF, PROVINCES, best_plate

    assert not set(_PROVINCE_OF) & set(PROVINCES), "a look-alike must never be a province itself"
    assert best_plate(["折L2J479"], [0.93]) == ("浙L2J479", 0.93)
    assert best_plate(["綫WA5879"], [0.9]) == ("藏WA5879", 0.9)         # seen over RTSP
    assert best_plate(["黄G98759"], [0.9]) == ("冀G98759", 0.9)
    assert best_plate(["闯Z1G566", "Z1G566"], [0.9, 0.95]) == ("闽Z1G566", 0.9)
    assert best_plate(["苏A·O1234"], [0.8]) == ("苏A01234", 0.8)       # separator dropped, O read as 0
    assert best_plate(["粤B12345"], [0.9]) == ("粤B12345", 0.9)
    assert best_plate(["A12345"], [0.99]) == (None, None)               # no province: not a plate
