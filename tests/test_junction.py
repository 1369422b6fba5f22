"""The synthetic junction renderer (tests/hardware_sim/junction.py): geometry, determinism, boxes,
plates, signal lamps, speed."""

from __future__ import annotations

import random
import time

import cv2
import numpy as np
import pytest

from tests.hardware_sim.junction import (
    Junction, JunctionRenderer, Pedestrian, Scene, Vehicle, demo_scene, make_vehicle)


@pytest.fixture(scope="module")
def J() -> Junction:
    return Junction()


@pytest.fixture(scope="module")
def renderer(J) -> JunctionRenderer:
    return JunctionRenderer(J, seed=1)


def inside(poly, x, y) -> bool:
    return cv2.pointPolygonTest(np.asarray(poly, np.float32), (float(x), float(y)), False) >= 0


def test_geometry_is_consistent(J):
    assert (J.width, J.height, J.approach_phase) == (1280, 720, 2)
    (x0, y0), (x1, y1) = J.stop_line
    assert y0 == y1 and x0 < x1
    for name in ("nb_left", "nb_through", "nb_right"):     # northbound lanes cross the stop line going up
        pts = J.lanes[name]
        assert pts[0][1] == 720 and pts[-1][1] < y0
        x, y, _ = J.lane_point(name, 0.0)
        assert J.u_at(x0, y0) <= J.u_at(x, y) <= J.u_at(x1, y1)   # between the stop line's ends, laterally
        heading = (J.lane_point(name, 0.0)[2] + 180) % 360 - 180
        assert -35 < heading <= 0                        # up the image, leaning to the vanishing point
    assert J.lane_point("sb_1", 0.5)[2] == pytest.approx(180, abs=10)
    assert J.lane_point("eb", 0.5)[2] == pytest.approx(90)
    assert J.lane_point("wb", 0.5)[2] == pytest.approx(270)
    assert J.lane_point("nb_left", 1.0)[2] == pytest.approx(270, abs=15)
    assert J.lane_point("nb_right", 1.0)[2] == pytest.approx(90, abs=15)
    for name in J.lanes:
        for s in np.linspace(0.02, 0.98, 9):
            x, y, _ = J.lane_point(name, s)
            assert inside(J.carriageway, x, y), (name, s)
    zx, zy = np.mean(J.no_parking_zone, axis=0)
    assert inside(J.carriageway, zx, zy) and not inside(J.approach, zx, zy) and zy > y0
    sx, sy = J.signal_head
    assert 0 < sx < J.width and 0 < sy < y0
    assert J.scale(720) == 1 and J.scale(300) < 1
    small = Junction(640, 360)
    assert small.stop_line[0] == pytest.approx((J.stop_line[0][0] / 2, J.stop_line[0][1] / 2))


def test_render_is_deterministic_and_shaped(J, renderer):
    scene = demo_scene(J, seed=5, t=1.0)
    a = renderer.render(scene)
    renderer.render(demo_scene(J, seed=6, t=3.3))           # whatever was rendered in between
    b = renderer.render(scene)
    assert a.shape == (720, 1280, 3) and a.dtype == np.uint8
    assert (a == b).all()
    assert (JunctionRenderer(J, seed=1).render(scene) == a).all()
    assert not (JunctionRenderer(J, seed=2).render(scene) == a).all()     # another seed, another texture
    clean = JunctionRenderer(J, seed=1, noise=False).render(scene)
    assert 0 < np.abs(clean.astype(int) - a.astype(int)).mean() < 6     # noise is mild
    dark = renderer.render(Scene(t=1.0, signal=scene.signal, vehicles=scene.vehicles, light=0.5))
    assert dark.mean() < 0.7 * a.mean()


def test_signal_lamp_follows_the_scene(J, renderer):
    (x0, y0), (x1, y1) = renderer._head_rect()
    cx = (x0 + x1) // 2
    lamp_y = {c: int(y0 + (y1 - y0) * (i + 0.5) / 3) for i, c in enumerate(("red", "yellow", "green"))}
    for state in ("red", "yellow", "green"):
        img = JunctionRenderer(J, seed=1, noise=False).render(Scene(t=0, signal={2: state}))
        lit = {c: int(img[y, cx].astype(int).sum()) for c, y in lamp_y.items()}
        assert max(lit, key=lit.get) == state
        b, g, r = img[lamp_y[state], cx].astype(int)
        assert {"red": r > 150 > g, "yellow": r > 150 and g > 150, "green": g > 150 > r}[state]
    dark = JunctionRenderer(J, seed=1, noise=False).render(Scene(t=0, signal={}))
    assert all(dark[y, cx].astype(int).sum() < 200 for y in lamp_y.values())


def test_boxes_and_plates(J, renderer):
    rng = random.Random(3)
    x, y, h = J.lane_point("nb_through", 0.2)
    car = make_vehicle(J, 1, "car", x, y, h, rng)
    car.plate = "浙A12345"
    ped = Pedestrian(id=1, x=300.0, y=280.0)
    scene = Scene(t=0.0, signal={2: "red"}, vehicles=[car], pedestrians=[ped])
    boxes = renderer.boxes(scene)
    assert [b[0] for b in boxes] == ["car", "person"]
    _, x1, y1, x2, y2 = boxes[0]
    assert x1 < car.x < x2 and y1 < car.y < y2
    px1, py1, px2, py2 = renderer.plate_box(car)
    assert x1 <= px1 < px2 <= x2 and y1 <= py1 < py2 <= y2 and py2 > car.y      # on the rear, near the camera
    assert px2 - px1 >= 80 and py2 - py1 >= 25          # large enough for plate OCR at this range
    img = JunctionRenderer(J, seed=1, noise=False).render(scene)
    patch = img[int(py1) + 2:int(py2) - 2, int(px1) + 2:int(px2) - 2].reshape(-1, 3).astype(int)
    blue = (patch[:, 0] > patch[:, 2] + 60).mean()
    white = (patch.min(axis=1) > 170).mean()
    assert blue > 0.4 and white > 0.08                  # a blue plate with white characters
    # a vehicle mostly outside the frame has no box; a southbound one shows its plate at the front
    off = Vehicle(2, "bus", -200, 400, 0, 300, 120, (0, 0, 255), "京B00001")
    assert renderer.boxes(Scene(t=0, vehicles=[off])) == []
    x, y, h = J.lane_point("sb_1", 0.7)
    sb = make_vehicle(J, 3, "truck", x, y, h, rng)
    assert renderer.plate_box(sb)[3] > sb.y


@pytest.mark.parametrize("x,y,size", [(300.0, 280.0, 1.0), (700.0, 650.0, 1.0), (900.0, 180.0, 1.2),
                                      (500.0, 420.0, 0.6)])
def test_pedestrian_is_drawn_inside_its_box(J, x, y, size):
    """The figure the renderer draws and the box it labels it with come from one size: the
    figure fills its box (its shadow on the ground is not part of it)."""
    clean = JunctionRenderer(J, seed=1, noise=False)
    empty = clean.render(Scene(t=0.0))
    ped = Pedestrian(id=4, x=x, y=y, size=size)
    img = clean.render(Scene(t=0.0, pedestrians=[ped]))
    x1, y1, x2, y2 = clean.pedestrian_box(ped)
    changed = np.abs(img.astype(int) - empty.astype(int)).sum(axis=2) > 30
    shadow = (np.abs(img.astype(int) - (35, 35, 38)).sum(axis=2) < 12)
    ys, xs = np.nonzero(changed & ~shadow)
    assert len(xs) > 20
    assert xs.min() >= x1 - 1.5 and xs.max() <= x2 + 1.5 and ys.min() >= y1 - 1.5 and ys.max() <= y2 + 1.5
    # ... and fills it: the drawn figure reaches (nearly) every side of the box
    assert xs.min() <= x1 + 0.25 * (x2 - x1) and xs.max() >= x2 - 0.25 * (x2 - x1) - 1
    assert ys.min() <= y1 + 0.05 * (y2 - y1) + 1 and ys.max() >= y2 - 0.05 * (y2 - y1) - 1
    boxes = clean.boxes(Scene(t=0.0, pedestrians=[ped]))
    assert boxes == [("person", x1, y1, x2, y2)]


def test_render_speed(J, renderer):
    scene = demo_scene(J, seed=11)
    assert len(scene.vehicles) >= 8
    renderer.render(scene)
    times = []
    for i in range(15):
        scene.t = i * 0.1
        t0 = time.perf_counter()
        renderer.render(scene)
        times.append(time.perf_counter() - t0)
    # ~5 ms on one core here; generous for a shared CI machine
    assert sorted(times)[len(times) // 2] < 0.03
