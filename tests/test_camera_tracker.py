"""Camera tracker: stable ids through crossing paths, missed detections and label flicker."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.camera.tracker import Tracker


@dataclass
class Det:
    label: str
    score: float
    box: tuple[float, float, float, float]


def car(x: float, y: float, label: str = "car", w: float = 80, h: float = 50) -> Det:
    return Det(label, 0.9, (x, y, x + w, y + h))


def test_ids_stay_with_their_objects_over_a_drive():
    tracker = Tracker(iou_threshold=0.2, max_gap=1.0)
    ids_a, ids_b = set(), set()
    for i in range(40):
        t = i * 0.1
        a = car(20 + 12 * i, 100)          # left to right
        b = car(600 - 12 * i, 300)         # right to left, another lane
        tracks = tracker.update([a, b], t)
        assert len(tracks) == 2
        for tr in tracks:
            (ids_a if tr.box[1] == 100 else ids_b).add(tr.id)
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b


def test_paths_that_cross_keep_their_ids():
    """Two cars pass each other in neighbouring lanes whose boxes overlap: prediction keeps them apart."""
    tracker = Tracker()
    first = None
    for i in range(30):
        t = i * 0.1
        a = car(20 + 20 * i, 100)
        b = car(600 - 20 * i, 130)
        tracker.update([a, b], t)
        by_dir = {("right" if tr.velocity[0] > 0 else "left"): tr.id for tr in tracker.tracks.values() if tr.hits > 2}
        if first is None and len(by_dir) == 2:
            first = by_dir
        if first is not None and len(by_dir) == 2:
            assert by_dir == first


def test_missed_frames_and_label_flicker_keep_the_id():
    tracker = Tracker(max_gap=1.0)
    seen = set()
    for i in range(30):
        t = i * 0.1
        if i in (10, 11, 12, 20):        # detector misses it now and then
            tracker.update([], t)
            continue
        label = "truck" if i % 4 == 0 else "car"
        tracks = tracker.update([car(10 + 15 * i, 200, label)], t)
        seen |= {tr.id for tr in tracks}
    assert len(seen) == 1
    (track,) = tracker.tracks.values()
    assert track.label == "car" and track.hits == 26
    assert abs(track.velocity[0] - 150) < 20     # px/s


def test_a_track_unseen_too_long_ends_and_a_new_one_gets_a_new_id():
    tracker = Tracker(max_gap=0.5)
    tracker.update([car(100, 100)], 0.0)
    tracker.update([], 0.3)
    assert len(tracker.tracks) == 1
    tracker.update([], 0.7)
    assert tracker.tracks == {} and [t.id for t in tracker.ended] == [1]
    (new,) = tracker.update([car(100, 100)], 0.8)
    assert new.id == 2


def test_hold_keeps_tracks_alive_without_detections():
    tracker = Tracker(max_gap=0.5)
    tracker.update([car(100, 100)], 0.0)
    for i in range(1, 50):
        tracker.hold(i * 0.1)                  # motion gate: nothing moved, no detector run
    (track,) = tracker.tracks.values()
    tracker.update([car(101, 100)], 5.0)
    assert list(tracker.tracks) == [track.id]


def test_a_person_never_continues_a_car_track():
    tracker = Tracker()
    tracker.update([car(100, 100)], 0.0)
    tracker.update([Det("person", 0.8, (100, 100, 180, 150))], 0.1)
    assert sorted(t.label for t in tracker.tracks.values()) == ["car", "person"]


def test_motion_gate_ignores_changes_in_its_ignore_areas_only():
    """A ticking on-screen clock does not wake the detector; a car elsewhere does."""
    import cv2
    import numpy as np

    from drivers.camera.pipeline import MotionGate

    def frame(clock: str, car_x: int | None = None) -> np.ndarray:
        img = np.full((720, 1280, 3), 90, np.uint8)
        cv2.putText(img, clock, (10, 75), cv2.FONT_HERSHEY_SIMPLEX, 3.0, (255, 255, 255), 9)
        if car_x is not None:
            cv2.rectangle(img, (car_x, 400), (car_x + 120, 470), (230, 230, 230), -1)
        return img

    osd = (((0.0, 0.0), (700.0, 0.0), (700.0, 110.0), (0.0, 110.0)),)
    plain, masked = MotionGate(0.001, 18), MotionGate(0.001, 18, osd)
    for gate in (plain, masked):
        gate.moved(frame("18:00:00"))
    assert plain.moved(frame("18:11:11")) is True       # the clock alone
    assert masked.moved(frame("18:22:22")) is False
    assert masked.moved(frame("18:33:33", car_x=600)) is True


def test_detections_centred_in_a_detect_ignore_area_are_dropped():
    """The real shipped model on a rendered scene: a car under a `detect.ignore` area (an OSD
    caption, a billboard) gets no track; the same car elsewhere does."""
    import random

    from drivers.camera.options import Options
    from drivers.camera.pipeline import Pipeline
    from drivers.camera.reader import RawFrame
    from models.runtime import Detector
    from tests.hardware_sim.junction import Junction, JunctionRenderer, Scene, make_vehicle

    J = Junction()
    car = make_vehicle(J, 1, "car", 700.0, 560.0, 0.0, random.Random(4))
    image = JunctionRenderer(J, seed=4).render(Scene(t=0.0, vehicles=[car]))
    x1, y1, x2, y2 = JunctionRenderer(J, seed=4).vehicle_box(car)
    area = [[x1 - 20, y1 - 20], [x2 + 20, y1 - 20], [x2 + 20, y2 + 20], [x1 - 20, y2 + 20]]
    detector = Detector("vehicles")

    def tracks_after_two_frames(detect: dict) -> int:
        options = Options.model_validate({"url": "rtsp://127.0.0.1:1/x", "model": "vehicles", "detect": detect,
                                          "evidence": {"clip_format": "none", "plate": False}})
        pipeline = Pipeline("t", options, None, lambda: detector, None, lambda kind, payload: None)
        pipeline.detector = detector
        for seq in (1, 2):
            pipeline.process(RawFrame(seq, 1000.0 + seq / 10, image))
        return len(pipeline.tracker.tracks)

    assert tracks_after_two_frames({}) == 1
    assert tracks_after_two_frames({"ignore": [area]}) == 0


def test_two_people_crossing_keep_their_ids_by_their_look():
    """Two people walk past each other along one line; where they overlap the detector sees one
    figure for a few frames. Boxes alone cannot say who is who after that; the colour of their
    shirts, drawn into a real image and read back with ``look_of``, can."""
    import numpy as np

    from drivers.camera.tracker import look_of

    def figure(image, x, shirt):
        image[100:112, int(x) + 4:int(x) + 12] = (120, 150, 185)      # head
        image[112:135, int(x):int(x) + 16] = shirt                      # shirt
        image[135:160, int(x) + 2:int(x) + 14] = (40, 40, 40)          # trousers

    for with_looks in (False, True):    # boxes alone swap or break the two here; with their looks, not
        tracker = Tracker(max_gap=1.0, min_hits=1)
        owner: dict[str, set[int]] = {"red": set(), "blue": set()}
        for i in range(40):
            t = i / 7
            xa, xb = 100 + 7 * i, 373 - 7 * i                            # meet at i ~ 19.5
            image = np.full((240, 480, 3), 90, np.uint8)
            figure(image, xa, (30, 30, 200))
            figure(image, xb, (200, 60, 30))
            if abs(xa - xb) < 24:                                        # merged: one box over both
                dets = [Det("person", 0.8, (min(xa, xb), 100, max(xa, xb) + 16, 160))]
                truth = [None]
            else:
                dets = [Det("person", 0.9, (xa, 100, xa + 16, 160)), Det("person", 0.9, (xb, 100, xb + 16, 160))]
                truth = ["red", "blue"]
            looks = [look_of(image, d.box) for d in dets] if with_looks else None
            tracker.update(dets, t, looks)
            for det, who in zip(dets, truth):
                if who is not None:
                    owner[who] |= {tr.id for tr in tracker.tracks.values() if tr.box == det.box and tr.last_t == t}
        kept = len(owner["red"]) == 1 and len(owner["blue"]) == 1 and owner["red"] != owner["blue"]
        assert kept == with_looks, (with_looks, owner)


def test_a_person_the_motion_gate_cannot_see_is_followed_on_every_frame_until_they_stand():
    """The real shipped model on rendered frames of an empty junction: a person walks along the
    zebra crossing, a few pixels a frame, under the motion gate's threshold. Once glimpsed they are
    looked for on every frame (confirmed at once, tracked as they move); standing, they cost a
    detector run per ``idle_interval`` only."""
    from drivers.camera.options import Options
    from drivers.camera.pipeline import Pipeline
    from drivers.camera.reader import RawFrame
    from models.runtime import Detector
    from tests.hardware_sim.junction import Junction, JunctionRenderer, Pedestrian, Scene

    J = Junction()
    renderer = JunctionRenderer(J, seed=2, noise=False)
    y = (J.Y_ZEBRA[0] + J.Y_ZEBRA[1]) / 2 * J.sy
    detector = Detector("vehicles")
    options = Options.model_validate({"url": "rtsp://127.0.0.1:1/x", "model": "vehicles",
                                      "evidence": {"clip_format": "none", "plate": False}})
    pipeline = Pipeline("t", options, None, lambda: detector, None, lambda kind, payload: None)
    pipeline.detector = detector
    fps, walked_for, seq = 7.0, 3.0, 0
    runs, gate = [], []
    for phase, seconds in (("walk", walked_for), ("stand", 4.0)):
        for _ in range(int(seconds * fps)):
            seq += 1
            t = seq / fps
            x = 400 + 25 * min(t, walked_for)               # 25 px/s: ~3.5 px a frame
            image = renderer.render(Scene(t=t, pedestrians=[Pedestrian(7, x, y)]))
            before = pipeline.stats.detected
            pipeline.process(RawFrame(seq, 1000.0 + t, image))
            runs.append((phase, pipeline.stats.detected > before))
            gate.append(pipeline.gate.last_fraction)
    assert max(gate[1:]) < options.motion.threshold, "the premise: the gate does not see them walk"
    people = [tr for tr in pipeline.tracker.tracks.values() if tr.label == "person"]
    assert len(people) == 1 and people[0].hits >= 2 * fps, people
    walking = [ran for phase, ran in runs if phase == "walk"]
    assert all(walking), walking
    standing = [ran for phase, ran in runs if phase == "stand"]
    assert sum(standing) <= 4.0 / options.motion.idle_interval + 5, standing


def test_a_second_box_on_a_tracked_person_starts_no_track_but_a_car_behind_a_bus_does():
    """NMS at IoU 0.5 lets two boxes 6 px apart through on one thin person (IoU 0.49): the second
    is not someone else. A car whose box lies inside a bus's box is much smaller: it is."""
    tracker = Tracker()
    for i in range(10):
        t = i / 10
        y = 190 - 3 * i
        dets = [Det("person", 0.95, (1130, y, 1146, y + 55))]
        if i >= 5:
            dets.append(Det("person", 0.8, (1136, y + 1, 1150, y + 54)))
        tracker.update(dets, t)
    assert len(tracker.tracks) == 1 and tracker.duplicates == 5
    tracker = Tracker()     # both boxes from the first frame on: the better one is followed
    for i in range(5):
        tracker.update([Det("person", 0.95, (1236, 184, 1250, 235)), Det("person", 0.8, (1230, 181, 1246, 233))], i / 10)
    assert [tr.box for tr in tracker.tracks.values()] == [(1236, 184, 1250, 235)] and tracker.duplicates == 5
    tracker = Tracker()
    for i in range(5):
        tracker.update([Det("bus", 0.9, (100, 100, 400, 260)), Det("car", 0.9, (150, 120, 250, 200))], i / 10)
    assert len(tracker.tracks) == 2 and tracker.duplicates == 0


def test_the_pipeline_refuses_frames_that_are_not_8_bit_bgr_and_takes_any_size_that_is():
    """Found by bench/fuzz.py: a float or bool frame failed inside OpenCV (cv2.error) and a frame
    0 pixels wide with ZeroDivisionError, both in the motion gate; the pipeline's own check now
    refuses them with ValueError. A 1x1 8-bit frame goes through."""
    import numpy as np
    import pytest

    from drivers.camera.options import Options
    from drivers.camera.pipeline import Pipeline
    from drivers.camera.reader import RawFrame

    class NoDetections:
        def detect(self, image):
            return []

    options = Options.model_validate({"url": "rtsp://127.0.0.1:1/x", "model": "vehicles",
                                      "evidence": {"clip_format": "none", "plate": False}})
    pipeline = Pipeline("t", options, None, NoDetections, None, lambda kind, payload: None)
    pipeline.detector = NoDetections()
    for bad in (np.zeros((360, 640, 3), np.float64), np.zeros((360, 640, 3), bool), np.zeros((480, 0, 3), np.uint8),
                np.zeros((360, 640), np.uint8), np.zeros((360, 640, 4), np.uint8)):
        with pytest.raises(ValueError, match="8-bit BGR expected"):
            pipeline.process(RawFrame(1, 1000.0, bad))
    for seq, shape in enumerate(((1, 1, 3), (2, 3, 3), (720, 1280, 3)), start=2):
        assert pipeline.process(RawFrame(seq, 1000.0 + seq, np.zeros(shape, np.uint8))) == []
