"""Synthetic signalised junction: geometry of a fixed camera view and a fast, deterministic renderer.

The simulated intersection camera (``camera_sim.py``) renders its frames with this module, and the
shipped vehicle detector (``models/train_vehicles.py``) is trained on scenes rendered by it, so
the two see the same world.

The view: a 4-arm junction seen from a pole on the **south approach**, looking north. Traffic
drives on the right. Image coordinates are pixels, x to the right, y down.

- the south arm fills the lower part of the frame: three northbound lanes (``nb_left``,
  ``nb_through``, ``nb_right``) right of the double yellow centre line, a kerbside shoulder with
  a hatched **no-parking zone**, and two southbound lanes (``sb_1`` inner, ``sb_2`` outer) of the
  opposite carriageway on the left;
- a zebra crossing and the northbound **stop line** (``Junction.stop_line``), then the junction box
  with the east-west cross street (``wb`` upper half, ``eb`` lower half) across the full width;
- the north arm above it, and the northbound approach's **signal head** on the far side
  (``Junction.signal_head``; it shows ``scene.signal[junction.approach_phase]``, NTCIP phase 2).

Perspective: lateral distances shrink linearly with height, ``Junction.scale(y)`` (1.0 at the
bottom row). ``Junction.vehicle_size(cls, y, heading)`` gives a plausible (length, width) in pixels
at a row; ``Junction.lane_point(lane, s)`` walks a lane polyline.

A ``Vehicle``'s (x, y) is the centre of its footprint on the road; it is drawn as a box with a
roof face raised by its body height, so its image box reaches above the footprint. Its plate is an
upright blue plate on the camera-facing end (rear of northbound, front of southbound traffic),
drawn larger than life so that a plate OCR model can read it at its pixel size.

Rendering is deterministic: the same ``seed`` and the same ``Scene`` give the same image, whatever
was rendered before. The static background is drawn once per renderer; a 1280x720 frame with a
dozen vehicles takes a few milliseconds.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

FONT_PATH = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"

VEHICLE_CLASSES = ("car", "bus", "truck")
PERSON = "person"

# real sizes in metres: length, width, body height
_REAL_SIZE = {"car": (4.6, 1.85, 1.5), "bus": (11.5, 2.55, 3.1), "truck": (8.5, 2.5, 3.2)}

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I, O
PLATE_DIGITS = "0123456789"

CAR_COLORS = [  # BGR
    (235, 235, 235), (245, 245, 240), (30, 30, 30), (20, 22, 28), (180, 180, 185), (140, 140, 145),
    (40, 40, 190), (150, 70, 30), (90, 50, 20), (60, 110, 60), (40, 160, 220), (200, 170, 130),
    (60, 60, 120), (110, 120, 150),
]
BUS_COLORS = [(60, 140, 40), (40, 170, 230), (200, 120, 30), (235, 235, 235), (60, 60, 200)]
TRUCK_COLORS = [(40, 120, 220), (160, 90, 30), (235, 235, 235), (50, 60, 180), (60, 130, 60)]


@dataclass
class Vehicle:
    id: int
    cls: str                       # "car" | "bus" | "truck"
    x: float                       # centre of the footprint, px
    y: float
    heading: float                 # degrees, 0 = moving up the image (northbound), 90 = right
    length: float                  # px along the heading
    width: float                   # px across
    color: tuple[int, int, int]    # BGR body colour
    plate: str                     # e.g. "浙A12345"


@dataclass
class Pedestrian:
    id: int
    x: float                       # feet, px
    y: float
    size: float = 1.0              # height relative to an adult at that row (0.6 a child)


@dataclass
class Scene:
    t: float
    signal: dict[int, str] = field(default_factory=dict)   # NTCIP phase -> "red" | "yellow" | "green"
    vehicles: list[Vehicle] = field(default_factory=list)
    pedestrians: list[Pedestrian] = field(default_factory=list)
    light: float = 1.0             # overall brightness: 0.45 dusk .. 1.0 day .. 1.25 glare


Point = tuple[float, float]


class Junction:
    """Geometry of the fixed view, for any frame size (laid out on 1280x720 and scaled)."""

    BASE_W, BASE_H = 1280, 720
    # perspective: x = VX + u * scale(y), scale(y) = (y - VY) / (BASE_H - VY), u = lateral offset
    # in bottom-row pixels from the centre line (positive to the right, i.e. east)
    VX, VY = 480.0, -400.0
    LANE = 240.0                   # lane width at the bottom row (~3.5 m)
    PX_PER_M = LANE / 3.5          # at the bottom row
    FORESHORTEN = 0.62             # along-road lengths look this much shorter than across
    Y_NORTH, Y_SOUTH = 95.0, 235.0  # cross street edges
    Y_STOP = 305.0
    Y_ZEBRA = (245.0, 290.0)

    def __init__(self, width: int = 1280, height: int = 720) -> None:
        self.width, self.height = int(width), int(height)
        self.sx, self.sy = self.width / self.BASE_W, self.height / self.BASE_H
        L = self.LANE
        # lateral extents (bottom-row px): southbound lanes [-2L, 0], northbound [0, 3L],
        # shoulder [3L, 3L + 140]
        self.u_sb = (-2 * L, 0.0)
        self.u_nb = (0.0, 3 * L)
        self.u_shoulder = (3 * L, 3 * L + 140.0)
        self.u_north_arm = (-2 * L, 2 * L)
        stop_y = self.Y_STOP
        self.stop_line: tuple[Point, Point] = (self._p(0.0, stop_y), self._p(3 * L, stop_y))
        self.approach_phase = 2
        self.signal_head: Point = self._s(770.0, 42.0)
        quarter = (self.Y_SOUTH - self.Y_NORTH) / 4
        y_wb, y_eb = self.Y_NORTH + quarter, self.Y_SOUTH - quarter   # lane centres of the cross street
        self.lanes: dict[str, list[Point]] = {
            "nb_left": self._turn(0.5 * L, stop_y, to_x=0.0, lane_y=y_wb),
            "nb_through": [self._p(1.5 * L, float(y)) for y in range(720, -1, -60)] + [self._p(1.5 * L, 0.0)],
            "nb_right": self._turn(2.5 * L, stop_y, to_x=float(self.BASE_W), lane_y=y_eb),
            "sb_1": [self._p(-0.5 * L, float(y)) for y in range(0, 721, 60)],
            "sb_2": [self._p(-1.5 * L, float(y)) for y in range(0, 721, 60)],
            "wb": [self._s(float(x), y_wb) for x in range(1280, -1, -160)],
            "eb": [self._s(float(x), y_eb) for x in range(0, 1281, 160)],
        }
        u0, u1 = self.u_sb[0], self.u_shoulder[1]
        n0, n1 = self.u_north_arm
        self.carriageway: list[Point] = [
            self._p(u0, 720.0), self._p(u0, self.Y_SOUTH), self._s(0.0, self.Y_SOUTH),
            self._s(0.0, self.Y_NORTH), self._p(n0, self.Y_NORTH), self._p(n0, 0.0),
            self._p(n1, 0.0), self._p(n1, self.Y_NORTH), self._s(self.BASE_W, self.Y_NORTH),
            self._s(self.BASE_W, self.Y_SOUTH), self._p(u1, self.Y_SOUTH), self._p(u1, 720.0),
        ]
        # the northbound approach: the three lanes from the bottom of the frame to the stop line
        self.approach: list[Point] = [
            self._p(0.0, 720.0), self._p(0.0, stop_y), self._p(3 * L, stop_y), self._p(3 * L, 720.0)]
        s0, s1 = self.u_shoulder
        self.no_parking_zone: list[Point] = [
            self._p(s0 + 8, 640.0), self._p(s0 + 8, 400.0), self._p(s1 - 8, 400.0), self._p(s1 - 8, 640.0)]

    # -- coordinates --
    def _s(self, x: float, y: float) -> Point:
        """Base-layout (1280x720) pixel -> this frame's pixel."""
        return (x * self.sx, y * self.sy)

    def _p(self, u: float, y: float) -> Point:
        """Lateral offset u (bottom-row px from the centre line) at base row y -> frame pixel."""
        return self._s(self.VX + u * self._scale_base(y), y)

    def _scale_base(self, y: float) -> float:
        return (y - self.VY) / (self.BASE_H - self.VY)

    def scale(self, y: float) -> float:
        """Perspective scale at frame row y: 1.0 at the bottom row, smaller further away."""
        return self._scale_base(y / self.sy)

    def u_at(self, x: float, y: float) -> float:
        """Frame pixel -> lateral offset from the centre line in bottom-row px (inverse of _p)."""
        return (x / self.sx - self.VX) / self._scale_base(y / self.sy)

    def _turn(self, u: float, y0: float, to_x: float, lane_y: float) -> list[Point]:
        pts = [self._p(u, float(y)) for y in range(720, int(y0) - 1, -60)]
        a = np.array(self._p(u, y0)) / (self.sx, self.sy)
        c = np.array((to_x, lane_y))
        b = np.array((a[0], lane_y))          # control point: straight on, then turn
        for t in np.linspace(0.1, 1.0, 10):
            q = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t ** 2 * c
            pts.append(self._s(float(q[0]), float(q[1])))
        return pts

    def lane_point(self, lane: str, s: float) -> tuple[float, float, float]:
        """Point at fraction s (0..1) of a lane's length: (x, y, heading in degrees)."""
        pts = np.asarray(self.lanes[lane], dtype=np.float64)
        seg = np.diff(pts, axis=0)
        lens = np.hypot(seg[:, 0], seg[:, 1])
        cum = np.concatenate([[0.0], np.cumsum(lens)])
        d = min(max(s, 0.0), 1.0) * cum[-1]
        i = int(min(np.searchsorted(cum, d, side="right") - 1, len(seg) - 1))
        f = (d - cum[i]) / lens[i] if lens[i] else 0.0
        x, y = pts[i] + f * seg[i]
        heading = math.degrees(math.atan2(seg[i][0], -seg[i][1])) % 360
        return float(x), float(y), heading

    def vehicle_size(self, cls: str, y: float, heading: float = 0.0) -> tuple[float, float]:
        """Plausible (length, width) in pixels for a vehicle of class cls at frame row y."""
        length_m, width_m, _ = _REAL_SIZE[cls]
        ppm = self.PX_PER_M * self.scale(y) * self.sx
        h = math.radians(heading)
        along = math.hypot(math.sin(h), self.FORESHORTEN * math.cos(h))
        across = math.hypot(math.cos(h), self.FORESHORTEN * math.sin(h))
        return length_m * ppm * along, width_m * ppm * across

    def body_height(self, v: Vehicle) -> float:
        """Image height of the vehicle's body (roof above footprint), px."""
        length_m, width_m, height_m = _REAL_SIZE.get(v.cls, _REAL_SIZE["car"])
        return 0.55 * height_m / width_m * v.width


def random_plate(rng: random.Random) -> str:
    return (rng.choice(PROVINCES) + rng.choice(PLATE_LETTERS)
            + "".join(rng.choice(PLATE_DIGITS + PLATE_LETTERS[:10] if i in (0, 1) and rng.random() < 0.3
                                 else PLATE_DIGITS) for i in range(5)))


def random_color(cls: str, rng: random.Random) -> tuple[int, int, int]:
    palette = {"car": CAR_COLORS, "bus": BUS_COLORS, "truck": TRUCK_COLORS}.get(cls, CAR_COLORS)
    b, g, r = rng.choice(palette)
    j = lambda c: int(min(255, max(0, c + rng.randint(-12, 12))))  # noqa: E731
    return (j(b), j(g), j(r))


def _poly(a: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64) * 16).astype(np.int32).reshape(-1, 1, 2)


def _fill(img: np.ndarray, pts, color, aa: bool = True) -> None:
    cv2.fillPoly(img, [_poly(pts)], color, cv2.LINE_AA if aa else cv2.LINE_8, shift=4)


def _shade(color, k: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * k))) for c in color)


@lru_cache(maxsize=256)            # 86 kB each: ~22 MB at most
def _plate_patch(text: str) -> np.ndarray:
    """A high-resolution blue plate with white text, BGR, 96 x 300 px (440 x 140 mm ratio)."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = 300, 96
    img = Image.new("RGB", (w, h), (10, 60, 170))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((3, 3, w - 4, h - 4), radius=8, outline=(235, 235, 235), width=3)
    font = _font(66)
    shown = text[:2] + "·" + text[2:] if len(text) > 2 else text
    bbox = d.textbbox((0, 0), shown, font=font)
    tw, th = bbox[2] - bbox[0], bbox[3] - bbox[1]
    if tw > w - 16:   # squeeze long plates
        font = _font(int(66 * (w - 16) / tw))
        bbox = d.textbbox((0, 0), shown, font=font)
        tw, th = bbox[2] - bbox[0], bbox[3] - bbox[1]
    d.text(((w - tw) / 2 - bbox[0], (h - th) / 2 - bbox[1]), shown, font=font, fill=(245, 245, 245))
    return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)


@lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.truetype(FONT_PATH, size)


class JunctionRenderer:
    """Renders ``Scene`` objects of a ``Junction`` into BGR frames."""

    N_NOISE = 4

    def __init__(self, junction: Junction | None = None, seed: int = 0, noise: bool = True) -> None:
        self.junction = junction or Junction()
        self.seed = int(seed)
        self.noise = noise
        self._rng = np.random.default_rng(self.seed)
        self.background = self._draw_background()
        h, w = self.background.shape[:2]
        if noise:
            nrng = np.random.default_rng(self.seed + 7919)
            n = nrng.standard_normal((self.N_NOISE, h, w, 3), dtype=np.float32)
            n *= 3.0
            np.clip(n, -12, 12, out=n)
            self._noise_pos = np.maximum(n, 0).astype(np.uint8)
            self._noise_neg = np.maximum(-n, 0).astype(np.uint8)

    # -- static background --
    def _draw_background(self) -> np.ndarray:
        J = self.junction
        rng = self._rng
        W, H = J.width, J.height
        img = np.empty((H, W, 3), np.uint8)
        ground = np.array([150, 160, 160]) + rng.integers(-15, 15, 3)
        img[:] = ground.astype(np.uint8)
        # blocks beside the roads: buildings and trees in the four corners
        corners = [
            (0, 0, J._p(J.u_north_arm[0], 0)[0], J.Y_NORTH * J.sy),
            (J._p(J.u_north_arm[1], 0)[0], 0, W, J.Y_NORTH * J.sy),
        ]
        for x0, y0, x1, y1 in corners:
            for _ in range(int(rng.integers(2, 5))):
                bx0 = rng.uniform(x0, max(x0 + 1, x1 - 60 * J.sx))
                bw = rng.uniform(60, 220) * J.sx
                by1 = y1 - rng.uniform(8, 20) * J.sy
                by0 = max(y0, by1 - rng.uniform(40, 90) * J.sy)
                col = tuple(int(c) for c in rng.integers(70, 200, 3))
                cv2.rectangle(img, (int(bx0), int(by0)), (int(min(x1, bx0 + bw)), int(by1)), col, -1)
                for wy in np.arange(by0 + 6, by1 - 6, 14 * J.sy):
                    for wx in np.arange(bx0 + 6, min(x1, bx0 + bw) - 8, 16 * J.sx):
                        cv2.rectangle(img, (int(wx), int(wy)), (int(wx + 7 * J.sx), int(wy + 7 * J.sy)),
                                      _shade(col, 0.55), -1)
        # sidewalks: lighter bands along the south-arm kerbs and the cross street
        side = tuple(int(c) for c in ground + 25)
        _fill(img, [J._p(J.u_sb[0] - 200, 720), J._p(J.u_sb[0] - 200, J.Y_SOUTH),
                    J._p(J.u_shoulder[1] + 260, J.Y_SOUTH), J._p(J.u_shoulder[1] + 260, 720)], side)
        _fill(img, [J._s(0, J.Y_NORTH - 22), J._s(W / J.sx, J.Y_NORTH - 22), J._s(W / J.sx, J.Y_SOUTH + 18),
                    J._s(0, J.Y_SOUTH + 18)], side)
        # grass verges with trees beyond the sidewalks
        green = (60 + int(rng.integers(0, 30)), 120 + int(rng.integers(0, 30)), 70)
        _fill(img, [J._s(0, J.Y_SOUTH + 30), J._p(J.u_sb[0] - 240, J.Y_SOUTH + 30),
                    J._p(J.u_sb[0] - 240, 720), J._s(0, 720)], green)
        _fill(img, [J._p(J.u_shoulder[1] + 300, J.Y_SOUTH + 30), J._s(W / J.sx, J.Y_SOUTH + 30),
                    J._s(W / J.sx, 720), J._p(J.u_shoulder[1] + 300, 720)], green)
        for _ in range(int(rng.integers(4, 9))):
            left = rng.random() < 0.5
            y = rng.uniform(J.Y_SOUTH + 60, 700)
            u = (J.u_sb[0] - rng.uniform(300, 600)) if left else (J.u_shoulder[1] + rng.uniform(340, 700))
            x, yy = J._p(u, y)
            r = int(rng.uniform(18, 40) * J.scale(yy) * J.sx)
            cv2.circle(img, (int(x), int(yy)), r, (40, 95 + int(rng.integers(0, 40)), 45), -1, cv2.LINE_AA)
        # asphalt with a baked texture
        asphalt = np.full((H, W, 3), 78 + int(rng.integers(-10, 10)), np.uint8)
        tex = rng.standard_normal((H // 4 + 1, W // 4 + 1), dtype=np.float32) * 5
        tex = cv2.resize(tex, (W, H), interpolation=cv2.INTER_LINEAR)[:H, :W]
        tex += rng.standard_normal((H, W), dtype=np.float32) * 3
        asphalt = np.clip(asphalt.astype(np.float32) + tex[..., None], 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(3, 8))):   # patches and stains
            cx, cy = rng.uniform(0, W), rng.uniform(J.Y_NORTH * J.sy, H)
            cv2.ellipse(asphalt, (int(cx), int(cy)), (int(rng.uniform(20, 90) * J.sx), int(rng.uniform(6, 25) * J.sy)),
                        float(rng.uniform(0, 180)), 0, 360, (int(rng.integers(60, 95)),) * 3, -1)
        mask = np.zeros((H, W), np.uint8)
        cv2.fillPoly(mask, [_poly(J.carriageway)], 255, cv2.LINE_AA, shift=4)
        m = mask[..., None].astype(np.float32) / 255.0
        img = (img * (1 - m) + asphalt * m).astype(np.uint8)
        self._draw_markings(img)
        return img

    def _line(self, img, p0: Point, p1: Point, color, width: float) -> None:
        (x0, y0), (x1, y1) = p0, p1
        d = np.array([x1 - x0, y1 - y0])
        n = np.array([-d[1], d[0]]) / (np.hypot(*d) or 1)
        w0 = width * self.junction.scale(y0) / 2
        w1 = width * self.junction.scale(y1) / 2
        _fill(img, [(x0 + n[0] * w0, y0 + n[1] * w0), (x1 + n[0] * w1, y1 + n[1] * w1),
                    (x1 - n[0] * w1, y1 - n[1] * w1), (x0 - n[0] * w0, y0 - n[1] * w0)], color)

    def _draw_markings(self, img: np.ndarray) -> None:
        J = self.junction
        white, yellow = (228, 232, 232), (40, 190, 225)
        L = J.LANE
        ys, yn = J.Y_SOUTH, J.Y_NORTH
        # south arm: double yellow centre line, lane lines (dashed, solid near the stop line),
        # edge line of the shoulder, outer edge lines
        for du in (-7, 7):
            self._line(img, J._p(du, 720), J._p(du, J.Y_ZEBRA[1] + 6), yellow, 7)
        for u in (L, 2 * L):
            self._line(img, J._p(u, 720), J._p(u, J.Y_STOP + 90), white, 8)  # solid: no lane change
            y = J.Y_STOP + 150
            while y < 720:
                self._line(img, J._p(u, min(720, y + 60)), J._p(u, y), white, 8)
                y += 130
        self._line(img, J._p(-L, J.Y_ZEBRA[1] + 6), J._p(-L, 720), white, 8)
        self._line(img, J._p(J.u_shoulder[0], 720), J._p(J.u_shoulder[0], J.Y_ZEBRA[1] + 6), white, 10)
        self._line(img, J._p(J.u_sb[0] + 10, 720), J._p(J.u_sb[0] + 10, J.Y_ZEBRA[1] + 6), white, 8)
        # stop line
        a, b = J.stop_line
        cv2.line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), white,
                 max(2, int(14 * J.scale(a[1]) * J.sy)), cv2.LINE_AA)
        # zebra crossing over the whole south arm
        z0, z1 = J.Y_ZEBRA
        u = J.u_sb[0] + 20
        while u < J.u_shoulder[1] - 30:
            _fill(img, [J._p(u, z1), J._p(u, z0), J._p(u + 45, z0), J._p(u + 45, z1)], white)
            u += 95
        # lane arrows on the approach
        for i, kind in enumerate(("left", "straight", "right")):
            self._arrow(img, (i + 0.5) * L, J.Y_STOP + 170, kind, white)
        # cross street: centre line and lane lines
        ym = (yn + ys) / 2
        for dy in (-3, 3):
            cv2.line(img, (0, int((ym + dy) * J.sy)), (J.width, int((ym + dy) * J.sy)), yellow, 2, cv2.LINE_AA)
        for yq in (yn + (ys - yn) / 4, ys - (ys - yn) / 4):
            for x in range(0, J.width, int(70 * J.sx)):
                cv2.line(img, (x, int(yq * J.sy)), (x + int(35 * J.sx), int(yq * J.sy)), white, 2, cv2.LINE_AA)
        # north arm: centre line, lane line
        for du in (-7, 7):
            self._line(img, J._p(du, yn), J._p(du, 0), yellow, 7)
        for uu in (-L, L):
            y = yn - 10
            while y > 0:
                self._line(img, J._p(uu, y), J._p(uu, max(0, y - 25)), white, 8)
                y -= 55
        # no-parking zone: yellow outline with diagonal hatching, and the words
        zone = np.asarray(J.no_parking_zone)
        zmask = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(zmask, [zone.astype(np.int32)], 255)
        hatch = img.copy()
        x0, y0 = zone.min(axis=0)
        x1, y1 = zone.max(axis=0)
        step = int(26 * J.sy)
        for k in range(int(y0) - int(x1 - x0) - step, int(y1) + step, step):
            cv2.line(hatch, (int(x0), k), (int(x1), k + int(x1 - x0)), yellow, max(2, int(5 * J.sx)), cv2.LINE_AA)
        img[zmask > 0] = hatch[zmask > 0]
        cv2.polylines(img, [_poly(zone)], True, yellow, max(2, int(5 * J.sx)), cv2.LINE_AA, shift=4)
        self._text(img, "禁停", (int((x0 + x1) / 2), int(y1 + 28 * J.sy)), int(26 * J.sy), yellow)
        # the signal head's pole and mast
        hx, hy = J.signal_head
        pole_x = J._p(J.u_north_arm[1] + 80, yn)[0]
        cv2.line(img, (int(pole_x), int((yn - 8) * J.sy)), (int(pole_x), int(hy - 20 * J.sy)), (70, 70, 75),
                 max(2, int(6 * J.sx)), cv2.LINE_AA)
        cv2.line(img, (int(hx), int(hy - 44 * J.sy)), (int(pole_x), int(hy - 44 * J.sy)), (70, 70, 75),
                 max(2, int(5 * J.sx)), cv2.LINE_AA)
        cv2.line(img, (int(pole_x), int(hy - 44 * J.sy)), (int(pole_x), int(hy - 20 * J.sy)), (70, 70, 75),
                 max(2, int(6 * J.sx)), cv2.LINE_AA)
        cv2.rectangle(img, self._head_rect()[0], self._head_rect()[1], (25, 25, 25), -1)

    def _arrow(self, img, u: float, y: float, kind: str, color) -> None:
        J = self.junction
        s = 1.0
        pts_shaft = [(-6, 40), (-6, -10), (6, -10), (6, 40)]
        if kind == "straight":
            head = [(-16, -10), (0, -45), (16, -10)]
            shapes = [pts_shaft, head]
        elif kind == "left":
            shapes = [pts_shaft, [(-6, -10), (-6, -22), (-30, -22), (-30, -10)], [(-30, -34), (-50, -16), (-30, 2)]]
        else:
            shapes = [pts_shaft, [(6, -10), (6, -22), (30, -22), (30, -10)], [(30, -34), (50, -16), (30, 2)]]
        for shp in shapes:
            _fill(img, [J._p(u + dx * 2.2 * s, y + dy * J.FORESHORTEN * 1.6) for dx, dy in shp], color)

    def _head_rect(self) -> tuple[tuple[int, int], tuple[int, int]]:
        J = self.junction
        hx, hy = J.signal_head
        w, h = 30 * J.sx, 80 * J.sy
        return (int(hx - w / 2), int(hy - h / 2)), (int(hx + w / 2), int(hy + h / 2))

    def _text(self, img, text: str, centre: tuple[int, int], size: int, color) -> None:
        from PIL import Image, ImageDraw

        font = _font(max(8, size))
        bbox = font.getbbox(text)
        tw, th = bbox[2] - bbox[0] + 4, bbox[3] - bbox[1] + 4
        x0, y0 = centre[0] - tw // 2, centre[1] - th // 2
        if x0 < 0 or y0 < 0 or x0 + tw > img.shape[1] or y0 + th > img.shape[0]:
            return
        roi = img[y0:y0 + th, x0:x0 + tw]
        pil = Image.fromarray(roi[..., ::-1].copy())
        ImageDraw.Draw(pil).text((2 - bbox[0], 2 - bbox[1]), text, font=font, fill=tuple(reversed(color)))
        img[y0:y0 + th, x0:x0 + tw] = np.asarray(pil)[..., ::-1]

    # -- dynamic content --
    def _draw_signal(self, img: np.ndarray, state: str | None) -> None:
        (x0, y0), (x1, y1) = self._head_rect()
        cx = (x0 + x1) // 2
        r = max(2, int((x1 - x0) * 0.36))
        lamps = [("red", (30, 30, 235)), ("yellow", (30, 200, 245)), ("green", (110, 220, 40))]
        for i, (name, lit) in enumerate(lamps):
            cy = int(y0 + (y1 - y0) * (i + 0.5) / 3)
            on = state == name
            cv2.circle(img, (cx, cy), r, lit if on else _shade(lit, 0.22), -1, cv2.LINE_AA)
            if on:
                cv2.circle(img, (cx, cy), max(1, r // 2), _shade(lit, 1.25), -1, cv2.LINE_AA)

    def _geometry(self, v: Vehicle):
        """Footprint corners (front-left, front-right, rear-right, rear-left), roof corners, height."""
        h = math.radians(v.heading)
        fwd = np.array([math.sin(h), -math.cos(h)])
        right = np.array([math.cos(h), math.sin(h)])
        c = np.array([v.x, v.y])
        hl, hw = v.length / 2, v.width / 2
        foot = np.array([c + fwd * hl - right * hw, c + fwd * hl + right * hw,
                         c - fwd * hl + right * hw, c - fwd * hl - right * hw])
        bh = self.junction.body_height(v)
        roof = foot - np.array([0.0, bh])
        return foot, roof, bh, fwd, right

    def vehicle_box(self, v: Vehicle) -> tuple[float, float, float, float]:
        foot, roof, *_ = self._geometry(v)
        pts = np.vstack([foot, roof])
        x1, y1 = pts.min(axis=0)
        x2, y2 = pts.max(axis=0)
        return float(x1), float(y1), float(x2), float(y2)

    def plate_box(self, v: Vehicle) -> tuple[float, float, float, float]:
        """The plate's upright box in frame pixels (on the camera-facing end of the vehicle)."""
        foot, roof, bh, fwd, right = self._geometry(v)
        front_mid = (foot[0] + foot[1]) / 2
        rear_mid = (foot[2] + foot[3]) / 2
        end = front_mid if front_mid[1] > rear_mid[1] else rear_mid
        pw = 0.8 * v.width          # a real plate is ~0.24 of the width: drawn larger for OCR
        ph = pw / 3.0
        cx, cy = end[0], end[1] - 0.3 * bh
        return (float(cx - pw / 2), float(cy - ph / 2), float(cx + pw / 2), float(cy + ph / 2))

    def _draw_vehicle(self, img: np.ndarray, v: Vehicle) -> None:
        foot, roof, bh, fwd, right = self._geometry(v)
        color = tuple(int(c) for c in v.color)
        dark = _shade(color, 0.55)
        # shadow on the road, then the body's sides (hull of footprint and roof), then the roof
        shadow = foot + np.array([0.08 * v.width, 0.05 * v.width])
        _fill(img, shadow, (35, 35, 38), aa=False)
        hull = cv2.convexHull(np.vstack([foot, roof]).astype(np.float32)).reshape(-1, 2)
        _fill(img, hull, dark)
        # the camera-facing end face (the one whose footprint edge is lower in the image)
        front_face = foot[0][1] + foot[1][1] > foot[2][1] + foot[3][1]
        e0, e1 = (0, 1) if front_face else (3, 2)
        face = np.array([foot[e0], foot[e1], roof[e1], roof[e0]])
        _fill(img, face, _shade(color, 0.72))
        # lamps on the end face
        lamp = (225, 240, 250) if front_face else (40, 40, 210)
        for a, b in ((e0, e1), (e1, e0)):
            p = foot[a] + (foot[b] - foot[a]) * 0.06 - np.array([0, 0.62 * bh])
            q = foot[a] + (foot[b] - foot[a]) * 0.2 - np.array([0, 0.45 * bh])
            _fill(img, [p, (q[0], p[1]), q, (p[0], q[1])], lamp, aa=False)
        _fill(img, roof, color)
        L = v.length

        def band(f0: float, f1: float, inset: float, col) -> None:
            # a band across the roof between fractions f0..f1 of the length from the front
            a = roof[0] + (roof[3] - roof[0]) * f0
            b = roof[1] + (roof[2] - roof[1]) * f0
            c = roof[1] + (roof[2] - roof[1]) * f1
            d = roof[0] + (roof[3] - roof[0]) * f1
            ia, ib = (b - a) * inset, (c - d) * inset
            _fill(img, [a + ia, b - ia, c - ib, d + ib], col)

        glass = (70, 55, 45)
        if v.cls == "car":
            band(0.22, 0.38, 0.08, glass)                     # windscreen
            band(0.38, 0.72, 0.1, _shade(color, 0.9))         # roof panel
            band(0.72, 0.84, 0.1, glass)                      # rear window
        elif v.cls == "bus":
            band(0.02, 0.08, 0.06, glass)
            band(0.1, 0.95, 0.42, _shade(color, 0.85))       # roof ridge
            band(0.3, 0.45, 0.25, (190, 190, 195))            # roof AC unit
        else:  # truck: cab in the body colour, cargo box behind it
            cargo = (200, 200, 205) if sum(color) < 600 else (120, 130, 150)
            band(0.27, 1.0, 0.0, cargo)
            band(0.04, 0.14, 0.08, glass)
            band(0.27, 0.3, 0.0, _shade(cargo, 0.6))
        # the plate on the camera-facing end
        x1, y1, x2, y2 = self.plate_box(v)
        self._paste_plate(img, v.plate, x1, y1, x2, y2)

    def _paste_plate(self, img: np.ndarray, text: str, x1: float, y1: float, x2: float, y2: float) -> None:
        w, h = int(round(x2 - x1)), int(round(y2 - y1))
        if w < 6 or h < 3:
            return
        X1, Y1 = int(round(x1)), int(round(y1))
        H, W = img.shape[:2]
        cx0, cy0, cx1, cy1 = max(0, X1), max(0, Y1), min(W, X1 + w), min(H, Y1 + h)
        if cx0 >= cx1 or cy0 >= cy1:
            return
        patch = cv2.resize(_plate_patch(text), (w, h), interpolation=cv2.INTER_AREA)
        img[cy0:cy1, cx0:cx1] = patch[cy0 - Y1:cy1 - Y1, cx0 - X1:cx1 - X1]

    def _pedestrian_size(self, p: Pedestrian) -> tuple[float, float]:
        """(height, width) in pixels of a pedestrian's figure at its row: the one place both
        ``_draw_pedestrian`` and ``pedestrian_box`` take them from."""
        s = self.junction.scale(p.y) * self.junction.sx * p.size
        return 95 * s, 26 * s

    def _draw_pedestrian(self, img: np.ndarray, p: Pedestrian) -> None:
        h, w = self._pedestrian_size(p)
        r = random.Random(p.id * 7919 + self.seed)
        shirt = (r.randint(20, 230), r.randint(20, 230), r.randint(20, 230))
        trousers = (r.randint(20, 90),) * 3
        x, y = p.x, p.y
        cv2.ellipse(img, (int(x + 0.25 * w), int(y)), (int(w * 0.7), max(1, int(w * 0.2))), 0, 0, 360, (35, 35, 38), -1)
        _fill(img, [(x - w * 0.35, y), (x - w * 0.3, y - h * 0.45), (x + w * 0.3, y - h * 0.45), (x + w * 0.35, y)],
              trousers)
        _fill(img, [(x - w * 0.5, y - h * 0.42), (x - w * 0.45, y - h * 0.82), (x + w * 0.45, y - h * 0.82),
                    (x + w * 0.5, y - h * 0.42)], shirt)
        cv2.circle(img, (int(x), int(y - h * 0.9)), max(1, int(w * 0.28)), (120, 150, 185), -1, cv2.LINE_AA)

    def pedestrian_box(self, p: Pedestrian) -> tuple[float, float, float, float]:
        """The figure's box in frame pixels (shoulders to feet wide, top of the head to the feet;
        not its shadow), from the same size ``_draw_pedestrian`` draws it at."""
        h, w = self._pedestrian_size(p)
        return (p.x - w * 0.5, p.y - h * 0.9 - w * 0.28, p.x + w * 0.5, p.y)

    def hidden_fraction(self, p: Pedestrian, vehicles: list[Vehicle]) -> float:
        """How much of a pedestrian's figure (its box) the vehicles drawn over it cover, 0..1: the
        camera cannot see someone standing behind a bus, and neither can an annotator."""
        x1, y1, x2, y2 = self.pedestrian_box(p)
        w, h = max(1, int(math.ceil(x2 - x1))), max(1, int(math.ceil(y2 - y1)))
        mask = None
        for v in vehicles:
            if v.y <= p.y:              # drawn before the pedestrian (``render``'s order): behind
                continue
            vx1, vy1, vx2, vy2 = self.vehicle_box(v)
            if vx2 <= x1 or vx1 >= x2 or vy2 <= y1 or vy1 >= y2:
                continue
            foot, roof, *_ = self._geometry(v)
            hull = cv2.convexHull(np.vstack([foot, roof]).astype(np.float32)).reshape(-1, 2)
            if mask is None:
                mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [np.round(hull - (x1, y1)).astype(np.int32)], 1)
        return 0.0 if mask is None else float(mask.mean())

    def render(self, scene: Scene) -> np.ndarray:
        img = self.background.copy()
        self._draw_signal(img, scene.signal.get(self.junction.approach_phase))
        items: list[tuple[float, int, object]] = [(v.y, 0, v) for v in scene.vehicles]
        items += [(p.y, 1, p) for p in scene.pedestrians]
        items.sort(key=lambda it: (it[0], it[1]))       # far first: nearer things occlude
        for _, kind, obj in items:
            if kind == 0:
                self._draw_vehicle(img, obj)  # type: ignore[arg-type]
            else:
                self._draw_pedestrian(img, obj)  # type: ignore[arg-type]
        if scene.light != 1.0:
            light = float(scene.light)
            img = cv2.convertScaleAbs(img, alpha=light, beta=(1 - light) * 12)
        if self.noise:
            k = zlib.crc32(f"{self.seed}:{scene.t:.4f}".encode()) % self.N_NOISE
            cv2.add(img, self._noise_pos[k], dst=img)
            cv2.subtract(img, self._noise_neg[k], dst=img)
        return img

    def boxes(self, scene: Scene, min_visible: float = 0.35) -> list[tuple[str, float, float, float, float]]:
        """Ground-truth boxes (cls, x1, y1, x2, y2), clipped to the frame; vehicles as "car", "bus",
        "truck", pedestrians as "person". A box less than ``min_visible`` inside the frame is left
        out. Occlusion is not accounted for."""
        W, H = self.junction.width, self.junction.height
        out = []
        items = [(v.cls, self.vehicle_box(v)) for v in scene.vehicles]
        items += [(PERSON, self.pedestrian_box(p)) for p in scene.pedestrians]
        for cls, (x1, y1, x2, y2) in items:
            area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(W), x2), min(float(H), y2)
            if cx2 <= cx1 or cy2 <= cy1 or area <= 0:
                continue
            if (cx2 - cx1) * (cy2 - cy1) < min_visible * area:
                continue
            out.append((cls, cx1, cy1, cx2, cy2))
        return out


def make_vehicle(junction: Junction, id: int, cls: str, x: float, y: float, heading: float,
                 rng: random.Random, size_jitter: float = 0.08) -> Vehicle:
    """A vehicle of class cls at (x, y) with a plausible size for that row, a random colour and plate."""
    length, width = junction.vehicle_size(cls, y, heading)
    k = 1 + rng.uniform(-size_jitter, size_jitter)
    return Vehicle(id=id, cls=cls, x=x, y=y, heading=heading, length=length * k, width=width * k,
                   color=random_color(cls, rng), plate=random_plate(rng))


def lane_length(junction: Junction, lane: str) -> float:
    pts = np.asarray(junction.lanes[lane], dtype=np.float64)
    return float(np.hypot(*np.diff(pts, axis=0).T).sum())


def demo_scene(junction: Junction | None = None, seed: int = 0, t: float = 0.0) -> Scene:
    """A busy, plausible scene: traffic on every lane, spaced so that vehicles do not overlap,
    and a few people on the zebra crossing."""
    J = junction or Junction()
    rng = random.Random(seed)
    vehicles: list[Vehicle] = []
    for lane in ("nb_left", "nb_through", "nb_right", "sb_1", "sb_2", "wb", "eb"):
        total = lane_length(J, lane)
        d = rng.uniform(0.0, 0.25) * total
        while d < 0.97 * total:
            cls = rng.choices(VEHICLE_CLASSES, weights=(0.75, 0.12, 0.13))[0]
            x, y, hd = J.lane_point(lane, d / total)
            length, _ = J.vehicle_size(cls, y, hd)
            x, y, hd = J.lane_point(lane, min(1.0, (d + length / 2) / total))
            v = make_vehicle(J, len(vehicles), cls, x, y, hd, rng)
            vehicles.append(v)
            d += v.length * 1.35 + rng.uniform(0.05, 0.6) * total
    peds = [Pedestrian(id=k, x=J._p(rng.uniform(-450, 800), 280)[0], y=rng.uniform(255, 290) * J.sy)
            for k in range(rng.randint(0, 4))]
    return Scene(t=t, signal={J.approach_phase: rng.choice(["red", "yellow", "green"])},
                 vehicles=vehicles, pedestrians=peds)
