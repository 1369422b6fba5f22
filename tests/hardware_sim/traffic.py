"""Deterministic traffic for the simulated intersection camera, with staged violations and their ground truth.

Vehicles enter on the lanes of a :class:`~tests.hardware_sim.junction.Junction` (polylines in the
direction of travel, extended beyond the frame so that queues and braking start out of view), follow
the vehicle ahead, stop at the stop line of the northbound approach (``Junction.stop_line``, NTCIP phase
``Junction.approach_phase``) on red, and on yellow when they can stop comfortably; on the other lanes
they stop before the junction box. They go on green. The signal is the signal-controller simulator's
fixed-time plan (:func:`tests.hardware_sim.signal_controller.signal_state_at`, by default
``DEFAULT_PLAN`` with scene time 0 at plan time 0), so the camera and the controller agree.

Dynamics are in metres and seconds, converted to pixels with the junction's perspective
(``Junction.scale``, ``PX_PER_M``, ``FORESHORTEN``); vehicle sizes come from ``Junction.vehicle_size``.

Violations are staged at configurable rates (events per minute of scene time, :class:`Rates`), or on
demand with :meth:`TrafficModel.stage`:

* ``red_light``: a vehicle that ignores the signal, launched early in a red into an empty approach lane,
  so that it crosses the stop line while the approach phase is red;
* ``illegal_parking``: a car pulls into ``Junction.no_parking_zone``, stays ``dwell`` seconds plus 5-15 s,
  then pulls out and leaves;
* ``wrong_way``: a straight approach lane is kept free of new traffic until it is empty, then a car
  drives it from its far end back to its start (southbound in a northbound lane);
* ``zone_intrusion``: a pedestrian steps from outside ``Junction.carriageway`` onto it, waits 2-4 s and
  walks back out (vehicles stop for pedestrians).

Ground truth is what *happened* in the simulated world, not what was intended: every front bumper
crossing the stop line while the approach phase is red is a ``red_light`` record (``staged`` tells
whether the vehicle was a staged runner; unstaged ones should not happen), every vehicle at rest with
its centre in the no-parking zone for ``dwell`` seconds is an ``illegal_parking`` record, every
vehicle driving a lane backwards a ``wrong_way`` record, every person whose feet reach the carriageway a
``zone_intrusion`` record (with ``hidden``, once the person is in view there: a camera cannot see
someone behind a bus). A record is made at its ``t_violation`` and appended (one JSON object a
line, UTF-8) to ``truth_path``::

    {"type": "red_light", "track": 12, "plate": "浙A3K772", "class": "car", "t_start": 40.1,
     "t_violation": 42.317, "staged": true, "lane": "nb_through", "x": 700.0, "y": 452.1,
     "signal": "red"}

Times are scene seconds (the argument of :meth:`TrafficModel.step`). ``t_start``/``t_violation`` by type:

=================  ==========================================  ===========================================
type               t_start                                     t_violation
=================  ==========================================  ===========================================
red_light          the vehicle first shows in the frame        its front bumper crosses the stop line (red)
illegal_parking    it came to rest in the zone                 t_start + dwell
wrong_way          it is first wholly inside the frame         it has driven one vehicle length further
zone_intrusion     the pedestrian appears                      the feet step onto the carriageway (in view)
=================  ==========================================  ===========================================

``x``/``y`` are the footprint centre (vehicles) or the feet (people) at ``t_violation``, in pixels of
the junction's frame. The model advances in fixed steps of ``dt`` (0.05 s) whatever times
:meth:`~TrafficModel.step` is called with, so a seed gives the same traffic and the same ground
truth at any frame rate.
"""

from __future__ import annotations

import bisect
import json
import math
import pathlib
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.hardware_sim.junction import Junction, Pedestrian, Scene, Vehicle
from tests.hardware_sim.signal_controller import DEFAULT_PLAN, Plan, signal_state_at

Point = tuple[float, float]
VIOLATIONS = ("red_light", "illegal_parking", "wrong_way", "zone_intrusion")

# Civil plates: province abbreviation, the issuing city's letter (never I or O), five characters (the
# first two sometimes letters, as on real plates and as the renderer's own generator makes them).
PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS = "0123456789"


def plate_ok(plate: str) -> bool:
    """Whether ``plate`` has the civil format: province + letter + 5 of digits and letters (no I, O)."""
    return (len(plate) == 7 and plate[0] in PROVINCES and plate[1] in PLATE_LETTERS
            and all(c in PLATE_LETTERS or c in DIGITS for c in plate[2:]))


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

class Path:
    """A polyline walked by arclength (pixels); extrapolated along its end segments beyond its ends."""

    def __init__(self, points: Sequence[Point]):
        pts: list[Point] = []
        for x, y in points:
            p = (float(x), float(y))
            if not pts or p != pts[-1]:
                pts.append(p)
        if len(pts) < 2:
            raise ValueError("a path needs two distinct points")
        self.points = pts
        self.cum = [0.0]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            self.cum.append(self.cum[-1] + math.hypot(x1 - x0, y1 - y0))
        self.length = self.cum[-1]

    def at(self, s: float) -> tuple[float, float, float, float]:
        """(x, y, ux, uy): the point at arclength ``s`` and the unit tangent there."""
        i = min(max(bisect.bisect_right(self.cum, s) - 1, 0), len(self.points) - 2)
        (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
        seg = self.cum[i + 1] - self.cum[i]
        ux, uy = (x1 - x0) / seg, (y1 - y0) / seg
        d = s - self.cum[i]
        return x0 + ux * d, y0 + uy * d, ux, uy

    def project(self, p: Point) -> tuple[float, float]:
        """(arclength of the nearest point, distance to it)."""
        best = (0.0, math.inf)
        for i, ((x0, y0), (x1, y1)) in enumerate(zip(self.points, self.points[1:])):
            seg = self.cum[i + 1] - self.cum[i]
            u = max(0.0, min(1.0, ((p[0] - x0) * (x1 - x0) + (p[1] - y0) * (y1 - y0)) / (seg * seg)))
            d = math.hypot(x0 + u * (x1 - x0) - p[0], y0 + u * (y1 - y0) - p[1])
            if d < best[1]:
                best = (self.cum[i] + u * seg, d)
        return best

    def project_window(self, p: Point, s0: float, s1: float) -> tuple[float, float, float, float]:
        """(arclength, distance, ux, uy) of the point nearest ``p`` between arclengths s0 and s1 (s0 < s1),
        the path extended straight beyond its ends."""
        i = min(max(bisect.bisect_right(self.cum, s0) - 1, 0), len(self.points) - 2)
        last = len(self.points) - 2
        best = (s0, math.inf, 0.0, 0.0)
        while True:
            (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
            c0 = self.cum[i]
            seg = self.cum[i + 1] - c0
            ux, uy = (x1 - x0) / seg, (y1 - y0) / seg
            lo = s0 - c0 if i == 0 or s0 > c0 else 0.0
            hi = s1 - c0 if i == last or s1 < c0 + seg else seg
            d = max(lo, min(hi, (p[0] - x0) * ux + (p[1] - y0) * uy))
            dist = math.hypot(x0 + ux * d - p[0], y0 + uy * d - p[1])
            if dist < best[1]:
                best = (c0 + d, dist, ux, uy)
            if i >= last or self.cum[i + 1] >= s1:
                return best
            i += 1

    def crossings(self, a: Point, b: Point) -> list[float]:
        """Arclengths where the path crosses segment a-b, in order."""
        out = []
        for i, (p, q) in enumerate(zip(self.points, self.points[1:])):
            u = _seg_intersect(p, q, a, b)
            if u is not None:
                out.append(self.cum[i] + u * (self.cum[i + 1] - self.cum[i]))
        return sorted(out)

    def turning(self) -> float:
        """Total heading change along the path, degrees."""
        total = 0.0
        for i in range(len(self.points) - 2):
            (x0, y0), (x1, y1), (x2, y2) = self.points[i:i + 3]
            a = math.atan2(y1 - y0, x1 - x0)
            b = math.atan2(y2 - y1, x2 - x1)
            total += abs((math.degrees(b - a) + 180) % 360 - 180)
        return total


def _seg_intersect(p: Point, q: Point, a: Point, b: Point) -> float | None:
    """Parameter along p-q where it meets a-b, or None."""
    rx, ry = q[0] - p[0], q[1] - p[1]
    sx, sy = b[0] - a[0], b[1] - a[1]
    den = rx * sy - ry * sx
    if abs(den) < 1e-12:
        return None
    u = ((a[0] - p[0]) * sy - (a[1] - p[1]) * sx) / den
    v = ((a[0] - p[0]) * ry - (a[1] - p[1]) * rx) / den
    return u if 0.0 <= u <= 1.0 and 0.0 <= v <= 1.0 else None


def point_in_polygon(x: float, y: float, polygon: Sequence[Point]) -> bool:
    inside = False
    n = len(polygon)
    for i in range(n):
        (x0, y0), (x1, y1) = polygon[i], polygon[(i + 1) % n]
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def polygon_centroid(polygon: Sequence[Point]) -> Point:
    area = cx = cy = 0.0
    n = len(polygon)
    for i in range(n):
        (x0, y0), (x1, y1) = polygon[i], polygon[(i + 1) % n]
        cross = x0 * y1 - x1 * y0
        area += cross
        cx += (x0 + x1) * cross
        cy += (y0 + y1) * cross
    if abs(area) < 1e-9:
        return sum(p[0] for p in polygon) / n, sum(p[1] for p in polygon) / n
    return cx / (3 * area), cy / (3 * area)


def reflex_vertices(polygon: Sequence[Point]) -> list[Point]:
    """The vertices where a polygon turns inwards: the corners of a cross-shaped road's junction box."""
    n = len(polygon)
    area = sum(polygon[i][0] * polygon[(i + 1) % n][1] - polygon[(i + 1) % n][0] * polygon[i][1]
               for i in range(n))
    out = []
    for i in range(n):
        (x0, y0), (x1, y1), (x2, y2) = polygon[i - 1], polygon[i], polygon[(i + 1) % n]
        cross = (x1 - x0) * (y2 - y1) - (y1 - y0) * (x2 - x1)
        if cross * area < 0:
            out.append(polygon[i])
    return out


def heading_of(ux: float, uy: float) -> float:
    """Heading in degrees of image direction (ux, uy): 0 up the image (north), 90 right (east)."""
    return math.degrees(math.atan2(ux, -uy)) % 360.0


def _smoothstep(a: float, b: float, x: float) -> float:
    if x <= a:
        return 0.0
    if x >= b:
        return 1.0
    u = (x - a) / (b - a)
    return u * u * (3 - 2 * u)


class GroundMap:
    """Image pixels <-> metres on the road plane (X east of the centre line, Y north of the bottom row).

    Uses the junction's perspective model (``x = VX + u * scale(y)`` with lengths along the road
    foreshortened by ``FORESHORTEN``) when it has one, else a flat view at ``px_per_m``.
    """

    def __init__(self, junction: Junction, px_per_m: float = 17.0):
        J = junction
        self.perspective = all(hasattr(J, a) for a in ("VX", "VY", "BASE_H", "PX_PER_M", "FORESHORTEN", "sx", "sy"))
        if self.perspective:
            self.sx, self.sy = float(J.sx), float(J.sy)
            self.vx, self.vy, self.base_h = float(J.VX), float(J.VY), float(J.BASE_H)
            self.p, self.f = float(J.PX_PER_M), float(J.FORESHORTEN)
            self.d = (self.base_h - self.vy) / (self.p * self.f)
        self.flat_ppm = px_per_m

    def _scale(self, y: float) -> float:
        return max((y / self.sy - self.vy) / (self.base_h - self.vy), 1e-4)

    def to_ground(self, x: float, y: float) -> Point:
        if not self.perspective:
            return x / self.flat_ppm, -y / self.flat_ppm
        sc = self._scale(y)
        return (x / self.sx - self.vx) / (sc * self.p), -self.d * math.log(sc)

    def to_image(self, X: float, Y: float) -> Point:
        if not self.perspective:
            return X * self.flat_ppm, -Y * self.flat_ppm
        sc = math.exp(-Y / self.d)
        return (self.vx + X * self.p * sc) * self.sx, (self.vy + sc * (self.base_h - self.vy)) * self.sy

    def ppm(self, y: float) -> float:
        """Image pixels per metre across the road at image row y."""
        return self.p * self._scale(y) * self.sx if self.perspective else self.flat_ppm

    def direction(self, X: float, Y: float, uX: float, uY: float) -> tuple[float, float, float, float]:
        """(x, y, ux, uy): the image point of (X, Y) and the image unit direction of ground direction (uX, uY)."""
        x0, y0 = self.to_image(X, Y)
        x1, y1 = self.to_image(X + 0.05 * uX, Y + 0.05 * uY)
        n = math.hypot(x1 - x0, y1 - y0) or 1.0
        return x0, y0, (x1 - x0) / n, (y1 - y0) / n


# --------------------------------------------------------------------------------------------
# Configuration and state
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Rates:
    """Staged violations per minute of scene time, per type (0 turns one off)."""

    red_light: float = 0.5
    illegal_parking: float = 0.2
    wrong_way: float = 0.2
    zone_intrusion: float = 0.3

    @classmethod
    def of(cls, value: "Rates | Mapping[str, float] | float | None") -> "Rates":
        if value is None:
            return cls()
        if isinstance(value, Rates):
            return value
        if isinstance(value, (int, float)):
            return cls(*(float(value),) * 4)
        unknown = set(value) - set(VIOLATIONS)
        if unknown:
            raise ValueError(f"unknown violation types {sorted(unknown)}; expected some of {list(VIOLATIONS)}")
        return cls(**{k: float(v) for k, v in value.items()})

    @classmethod
    def parse(cls, text: str) -> "Rates":
        """``"red_light=1,wrong_way=0.5"`` (the others keep their defaults), or one number for all four."""
        text = text.strip()
        try:
            return cls.of(float(text))
        except ValueError:
            pass
        rates = cls()
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            if key.strip() not in VIOLATIONS or not sep:
                raise ValueError(f"bad rate {item!r}: expected TYPE=PER_MINUTE with TYPE one of {list(VIOLATIONS)}")
            setattr(rates, key.strip(), float(value))
        return rates

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in VIOLATIONS}


SIZES_M = {"car": (4.6, 1.85), "bus": (11.5, 2.55), "truck": (8.5, 2.5)}   # length, width (as the renderer's)
CAR_COLOURS = [(235, 235, 235), (245, 245, 240), (30, 30, 30), (20, 22, 28), (180, 180, 185), (140, 140, 145),
               (40, 40, 190), (150, 70, 30), (90, 50, 20), (60, 110, 60), (40, 160, 220), (200, 170, 130)]
BUS_COLOURS = [(60, 140, 40), (40, 170, 230), (200, 120, 30), (235, 235, 235), (60, 60, 200)]
TRUCK_COLOURS = [(40, 120, 220), (160, 90, 30), (235, 235, 235), (50, 60, 180), (60, 130, 60)]
VIRTUAL_IN, VIRTUAL_OUT = 40.0, 15.0    # metres of road simulated beyond the ends of each lane, out of view


@dataclass(slots=True, eq=False)
class _Lane:
    name: str
    path: Path                   # metres on the ground
    phase: int | None
    gate: float | None           # where a front bumper must stop for the signal (None: no signal to obey)
    stop_s: float | None         # where the path crosses the stop line (approach lanes only)
    box_entry: float | None      # where the path enters the junction box
    box_exit: float | None       # where it leaves it
    s_in: float = -VIRTUAL_IN    # where vehicles appear
    s_out: float = 0.0           # where they go
    blocked: str | None = None   # a staged event holding the lane's entry
    next_arrival: float = 0.0


@dataclass(slots=True, eq=False)
class _Car:
    id: int
    cls: str
    plate: str
    color: tuple[int, int, int]
    size: float                          # size factor (0.93 .. 1.07)
    lane: _Lane
    path: Path
    s: float                             # centre, metres along path
    v: float                             # m/s
    v0: float                            # desired speed, m/s
    length_m: float = 4.6
    width_m: float = 1.85
    direction: int = 1                   # -1: drives the path backwards (wrong way)
    role: str = "normal"                 # normal, runner, parker, wrong_way
    t_spawn: float = 0.0
    first_seen: float | None = None
    decided: float | None = None         # the yellow onset it has decided for
    go_on: float | None = None           # the yellow onset it decided to drive on through
    crossed: bool = False                # front past the stop line
    committed: bool = False              # going through the junction box: crossing traffic waits
    stuck: float = 0.0                   # seconds held up by crossing traffic
    park_s: float | None = None
    park_state: str = ""                 # arriving, parked, leaving
    leave_after: float = 0.0
    parked_since: float = 0.0
    lane_s_park: float = 0.0
    still_since: float | None = None
    parking_recorded: bool = False
    ww_start: tuple[float, float] | None = None    # (time, metres driven) when wholly in frame, wrong way
    ww_recorded: bool = False
    driven: float = 0.0                  # metres
    # refreshed every step: ground and image pose
    X: float = 0.0
    Y: float = 0.0
    uX: float = 0.0
    uY: float = 1.0
    x: float = 0.0
    y: float = 0.0
    ux: float = 0.0
    uy: float = -1.0
    length: float = 1.0                  # px
    width: float = 1.0


@dataclass(slots=True, eq=False)
class _Walker:
    id: int
    path: Path                           # metres on the ground
    speed: float                         # m/s
    t_spawn: float
    stand: float
    s: float = 0.0
    state: str = "in"                    # in, stand, out
    until: float = 0.0
    X: float = 0.0
    Y: float = 0.0
    x: float = 0.0
    y: float = 0.0
    recorded: bool = False
    t_on: float | None = None            # when the feet first reached the carriageway


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class TrafficModel:
    """Seeded traffic on a junction; :meth:`step` returns the :class:`Scene` at a scene time.

    ``signal_at(t)`` (scene seconds -> {phase: colour}) defaults to
    ``signal_state_at(t + plan_offset, plan)``. Pass your own to follow a live controller, e.g.
    ``lambda t: sim.view().vehicles`` (preemption then shows; yellow decisions assume the plan's
    yellow time). ``annotate(record, obj)`` may add fields to a ground-truth record before it is
    kept and written; ``obj`` is the violator's ``Vehicle`` or ``Pedestrian`` at that moment.
    ``hidden(pedestrian, vehicles)`` (a renderer's ``hidden_fraction``) says how much of a person the
    vehicles in the frame hide: a person on the carriageway is recorded once in view (``HIDDEN_MAX``);
    one who is never in view there is kept in ``unseen``, not in the truth.
    ``flow`` is vehicles a minute entering each approach lane (60 % of that on the other lanes).
    """

    def __init__(self, junction: Junction | None = None, *, seed: int = 1, plan: Plan = DEFAULT_PLAN,
                 plan_offset: float = 0.0, signal_at: Callable[[float], Mapping[int, str]] | None = None,
                 rates: Rates | Mapping[str, float] | float | None = None, flow: float = 8.0,
                 dwell: float = 30.0, truth_path: str | pathlib.Path | None = None,
                 annotate: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None, dt: float = 0.05,
                 hidden: Callable[[Pedestrian, list[Vehicle]], float] | None = None):
        self.junction = junction or Junction()
        self.rng = random.Random(seed)
        self.seed = seed
        self.plan = plan
        self.plan_offset = plan_offset
        self.signal_at = signal_at or (lambda t: signal_state_at(t + self.plan_offset, self.plan))
        self.rates = Rates.of(rates)
        self.flow = flow
        self.dwell = dwell
        self.truth_path = pathlib.Path(truth_path) if truth_path else None
        self.annotate = annotate
        self.hidden = hidden
        self.dt = dt
        J = self.junction
        self.width, self.height = int(J.width), int(J.height)
        self.approach_phase = int(getattr(J, "approach_phase", 2))
        self.map = GroundMap(J)
        self.zone = [(float(x), float(y)) for x, y in getattr(J, "no_parking_zone", None) or []]
        self.carriageway = [(float(x), float(y)) for x, y in getattr(J, "carriageway", None) or []]
        self.accel, self.b_comfort, self.b_hard = 2.0, 3.0, 7.5     # m/s²
        self.min_gap = 2.0                                            # m, standing
        self.lanes = self._lanes()

        self.t = 0.0
        self.cars: list[_Car] = []
        self.walkers: list[_Walker] = []
        self.truth: list[dict[str, Any]] = []
        self.staged: dict[str, int] = {k: 0 for k in VIOLATIONS}    # stagings launched
        self.missed: list[tuple[float, str]] = []                   # stagings given up (no chance in 120 s)
        self.unseen: list[dict[str, Any]] = []                      # people on the carriageway never in view
        self._ids = 0
        self._plates: set[str] = set()
        self._lock = threading.RLock()
        self._colour: dict[int, str] = {}
        self._onset: dict[int, float] = {}
        self._red_at: dict[int, float] = {}       # phase -> when its current yellow turns red
        self._red_end: dict[int, float] = {}      # phase -> when its current red ends
        self._due: dict[str, float] = {}
        self._pending: dict[str, float] = {}      # type -> since when it waits for an opportunity
        self._wrong_lane: _Lane | None = None
        self._parker: _Car | None = None
        self._occupants: list[tuple[_Car, str, int]] = []
        for lane in self.lanes:
            lane.next_arrival = self._arrival(lane, 0.0)
        for kind in VIOLATIONS:
            self._schedule(kind, 0.0)

    # -- set-up --------------------------------------------------------------------------------

    def _ground(self, points: Sequence[Sequence[float]]) -> list[Point]:
        return [self.map.to_ground(float(p[0]), float(p[1])) for p in points]

    def _lanes(self) -> list[_Lane]:
        J = self.junction
        paths = {name: Path(self._ground(points)) for name, points in J.lanes.items()}
        a, b = self._ground(J.stop_line)
        main = next((s for s in self.plan.stages if self.approach_phase in s.phases), None)
        opposite = [p for p in (main.phases if main else ()) if p != self.approach_phase]
        side = [p for s in self.plan.stages if s is not main for p in s.phases]
        corners = reflex_vertices(self.carriageway) if len(self.carriageway) >= 3 else []
        box = self._ground(corners) if len(corners) >= 3 else []
        lanes = []
        for name, path in paths.items():
            (x0, y0), (x1, y1) = path.points[0], path.points[-1]
            vertical = abs(y1 - y0) >= abs(x1 - x0)
            crossing = path.crossings(a, b)
            if crossing:
                phase: int | None = self.approach_phase
            elif vertical:
                phase = self.approach_phase if y1 > y0 else (opposite[0] if opposite else None)
            else:
                phase = (side[0] if x1 > x0 else side[-1]) if side else None
            entry, exit_ = self._box_span(path, box, paths, vertical)
            stop_s = crossing[0] if crossing else None
            gate = stop_s if stop_s is not None else (entry - 1.0 if entry is not None and phase is not None else None)
            lane = _Lane(name, path, phase, gate, stop_s, entry, exit_)
            lane.s_out = path.length + VIRTUAL_OUT
            lanes.append(lane)
        self._conflicts = self._conflict_table(lanes)
        return lanes

    @staticmethod
    def _conflict_table(lanes: Sequence[_Lane]) -> dict[tuple[str, int], set[str]]:
        """(lane, direction) -> the lanes whose way through the box crosses or merges with it."""
        def samples(lane: _Lane, direction: int) -> list[tuple[float, float, float, float]]:
            if lane.box_entry is None or lane.box_exit is None:
                return []
            out, s = [], lane.box_entry - 1.0
            while s <= lane.box_exit + 1.0:
                X, Y, uX, uY = lane.path.at(s)
                out.append((X, Y, uX * direction, uY * direction))
                s += 0.5
            return out

        forward = {lane.name: samples(lane, 1) for lane in lanes}
        table: dict[tuple[str, int], set[str]] = {}
        for lane in lanes:
            for direction in (1, -1):
                mine = samples(lane, direction)
                table[(lane.name, direction)] = {
                    other.name for other in lanes if other is not lane and any(
                        math.hypot(X - x, Y - y) < 2.6 and uX * ux + uY * uy < 0.94
                        for X, Y, uX, uY in mine for x, y, ux, uy in forward[other.name])}
        return table

    @staticmethod
    def _box_span(path: Path, box: Sequence[Point], paths: Mapping[str, Path], vertical: bool
                  ) -> tuple[float | None, float | None]:
        """(where the path enters the junction box, where it leaves it), metres."""
        if box:
            cuts = sorted(s for i in range(len(box)) for s in path.crossings(box[i], box[(i + 1) % len(box)]))
            entries = [s for s in cuts if point_in_polygon(*path.at(s + 0.5)[:2], box)]
            exits = [s for s in cuts if not point_in_polygon(*path.at(s + 0.5)[:2], box)]
        else:   # no box: around the lanes of the other orientation that this one crosses
            cuts = []
            for other in paths.values():
                (x0, y0), (x1, y1) = other.points[0], other.points[-1]
                if (abs(y1 - y0) >= abs(x1 - x0)) != vertical:
                    cuts += [s for p, q in zip(other.points, other.points[1:]) for s in path.crossings(p, q)]
            entries, exits = [min(cuts) - 2.0] if cuts else [], [max(cuts) + 2.0] if cuts else []
        entry = min(entries) if entries else None
        exit_ = min((s for s in exits if entry is None or s > entry), default=None)
        return entry, exit_

    # -- public --------------------------------------------------------------------------------

    @property
    def approach_lanes(self) -> list[_Lane]:
        return [lane for lane in self.lanes if lane.stop_s is not None]

    def stage(self, kind: str) -> None:
        """Stage one ``kind`` violation as soon as there is an opportunity."""
        if kind not in VIOLATIONS:
            raise ValueError(f"unknown violation type {kind!r}; expected one of {list(VIOLATIONS)}")
        with self._lock:
            self._pending.setdefault(kind, self.t)

    def ground_truth(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.truth)

    def step(self, t: float) -> Scene:
        """Advance to scene time ``t`` (seconds; never backwards) and return the scene then."""
        while self.t + self.dt <= t + 1e-9:
            self._advance()
        return self.scene(t)

    def scene(self, t: float | None = None) -> Scene:
        t = self.t if t is None else t
        vehicles = [self._vehicle(c) for c in self.cars if self._visible(c, margin=0.5 * c.length)]
        peds = [Pedestrian(w.id, round(w.x, 2), round(w.y, 2)) for w in self.walkers]
        return Scene(t=t, signal=dict(self.signal_at(t)), vehicles=vehicles, pedestrians=peds)

    def _vehicle(self, c: _Car) -> Vehicle:
        return Vehicle(c.id, c.cls, round(c.x, 2), round(c.y, 2), round(heading_of(c.ux, c.uy), 2),
                       round(c.length, 2), round(c.width, 2), c.color, c.plate)

    # -- one step --------------------------------------------------------------------------------

    def _advance(self) -> None:
        t0, dt = self.t, self.dt
        t1 = t0 + dt
        sig = self.signal_at(t0)
        self._track_signal(sig, t0)
        self._spawn_traffic(t0)
        with self._lock:
            self._stage_violations(t0, sig)
        speeds = self._speeds(t0, sig)
        for c, v in zip(self.cars, speeds):
            s_prev, c.v = c.s, v
            c.s += c.direction * v * dt
            c.driven += v * dt
            self._place(c)
            self._events(c, s_prev, t0, t1)
        self._walk(t1)
        self._parking_truth(t1)
        self.cars = [c for c in self.cars if not self._gone(c)]
        lane = self._wrong_lane
        if lane is not None and lane.blocked == "wrong_way_out" and not any(c.role == "wrong_way" for c in self.cars):
            lane.blocked, self._wrong_lane = None, None
        if self._parker is not None and self._parker not in self.cars:
            self._parker = None
        self.t = round(t1, 9)

    def _track_signal(self, sig: Mapping[int, str], t: float) -> None:
        for phase, colour in sig.items():
            if self._colour.get(phase) == colour:
                continue
            self._colour[phase] = colour
            self._onset[phase] = t
            if colour == "yellow":
                self._red_at[phase] = t + self._probe(phase, t, lambda c: c == "red", 15.0, 0.05)
            elif colour == "red":
                self._red_end[phase] = t + self._probe(phase, t, lambda c: c != "red", 300.0, 0.25)

    def _probe(self, phase: int, t: float, until: Callable[[str], bool], horizon: float, step: float) -> float:
        k = 1
        while k * step <= horizon:
            if until(self.signal_at(t + k * step).get(phase, "red")):
                return k * step
            k += 1
        return horizon

    def _place(self, c: _Car) -> None:
        # both axles on the path (a long vehicle cuts a corner rather than swinging out of its lane)
        fX, fY, _, _ = c.path.at(c.s + c.direction * c.length_m / 2)
        rX, rY, _, _ = c.path.at(c.s - c.direction * c.length_m / 2)
        n = math.hypot(fX - rX, fY - rY) or 1.0
        X, Y = (fX + rX) / 2, (fY + rY) / 2
        c.X, c.Y, c.uX, c.uY = X, Y, (fX - rX) / n, (fY - rY) / n
        c.x, c.y, c.ux, c.uy = self.map.direction(X, Y, c.uX, c.uY)
        J = self.junction
        if hasattr(J, "vehicle_size"):
            length, width = J.vehicle_size(c.cls, c.y, heading_of(c.ux, c.uy))
            c.length, c.width = length * c.size, width * c.size
        else:
            ppm = self.map.ppm(c.y)
            c.length, c.width = c.length_m * ppm, c.width_m * ppm
        if c.first_seen is None and self._visible(c):
            c.first_seen = self.t

    def _extent(self, c: _Car) -> tuple[float, float]:
        hx = abs(c.ux) * c.length / 2 + abs(c.uy) * c.width / 2
        hy = abs(c.uy) * c.length / 2 + abs(c.ux) * c.width / 2
        return hx, hy

    def _visible(self, c: _Car, margin: float = 0.0) -> bool:
        hx, hy = self._extent(c)
        return (c.x + hx > -margin and c.x - hx < self.width + margin
                and c.y + hy > -margin and c.y - hy < self.height + margin)

    def _inside_frame(self, c: _Car) -> bool:
        hx, hy = self._extent(c)
        return c.x - hx >= 0 and c.x + hx <= self.width and c.y - hy >= 0 and c.y + hy <= self.height

    def _gone(self, c: _Car) -> bool:
        if c.direction < 0:
            return c.s < c.lane.s_in
        return c.s > (c.lane.s_out if c.role != "parker" else c.path.length + VIRTUAL_OUT)

    # -- speeds ----------------------------------------------------------------------------------

    @staticmethod
    def _safe(gap: float, b: float, dt: float) -> float:
        """Largest speed (m/s) from which braking at ``b`` after this step still stops within ``gap`` metres."""
        if gap <= 0:
            return 0.0
        return -b * dt + math.sqrt((b * dt) ** 2 + 2 * b * gap)

    def _speeds(self, t: float, sig: Mapping[int, str]) -> list[float]:
        dt = self.dt
        obstacles = [(c.id, c.X, c.Y, c.uX, c.uY, c.length_m / 2, c.width_m / 2, True) for c in self.cars]
        obstacles += [(w.id, w.X, w.Y, 0.0, 1.0, 0.4, 0.4, False) for w in self.walkers]
        nearest = {c.id: self._ahead(c, obstacles) for c in self.cars}
        self._occupants = [(c, c.lane.name, c.direction) for c in self.cars if self._in_box(c)]
        # two vehicles each waiting for the other (crossing paths): the lower id goes
        for c in self.cars:
            gap, other, _ = nearest[c.id]
            if other is not None and other in nearest and nearest[other][1] == c.id and c.id < other:
                nearest[c.id] = (math.inf, None, False)
        out = []
        for c in self.cars:
            gap, other, crossing = nearest[c.id]
            c.stuck = c.stuck + dt if (crossing and c.v < 0.1) else 0.0 if c.v > 1.0 else c.stuck
            v = min(c.v + self.accel * dt, c.v0)
            v = min(v, self._safe(gap, self.b_hard, dt))
            stop = self._stop_gap(c, t, sig)
            if stop is not None:
                v = min(v, self._safe(stop, self.b_hard, dt))
            out.append(max(0.0, v))
        return out

    def _ahead(self, c: _Car, obstacles: Sequence[tuple[int, float, float, float, float, float, float, bool]]
               ) -> tuple[float, int | None, bool]:
        """(gap in metres, id, whether it crosses this vehicle's way) of the nearest thing on its path ahead.

        A vehicle held up by crossing traffic for more than 6 s stops yielding to crossing vehicles
        (gridlock in the box cannot last)."""
        best: tuple[float, int | None, bool] = (math.inf, None, False)
        reach = 45.0
        s0, s1 = (c.s, c.s + reach) if c.direction > 0 else (c.s - reach, c.s)
        for oid, X, Y, eX, eY, hl, hw, is_car in obstacles:
            if oid == c.id:
                continue
            rX, rY = X - c.X, Y - c.Y
            if abs(rX) > reach or abs(rY) > reach or rX * c.uX + rY * c.uY < -hl:
                continue
            s_o, lat, tX, tY = c.path.project_window((X, Y), s0, s1)
            along = (s_o - c.s) * c.direction
            if along <= 0:
                continue
            tX, tY = tX * c.direction, tY * c.direction
            dot = eX * tX + eY * tY
            crossing = is_car and dot < 0.85
            if crossing and c.stuck > 6.0:
                continue
            cross = abs(eX * tY - eY * tX)
            o_lon, o_lat = hl * abs(dot) + hw * cross, hl * cross + hw * abs(dot)
            if lat > c.width_m / 2 + o_lat + 0.3:
                continue
            gap = along - c.length_m / 2 - o_lon - (self.min_gap if is_car else 1.5)
            if gap < best[0]:
                best = (gap, oid, crossing)
        return best

    def _stop_gap(self, c: _Car, t: float, sig: Mapping[int, str]) -> float | None:
        """Metres the front may still travel before a stop this vehicle must make, or None."""
        if c.role == "parker" and c.park_s is not None:
            if c.park_state == "arriving":
                return c.park_s - c.s        # the spot is on this side of the stop line
            if c.park_state == "parked":
                if t - c.parked_since < c.leave_after:
                    return 0.0
                c.lane.blocked = c.lane.blocked or "parker"     # no new arrivals until it has pulled out
                if not self._clear_to_leave(c):
                    return 0.0
                c.park_state = "leaving"
                if c.lane.blocked == "parker":
                    c.lane.blocked = None
        if c.direction < 0 or c.role == "runner":
            return None
        return self._gate_gap(c, t, sig)

    def _gate_gap(self, c: _Car, t: float, sig: Mapping[int, str]) -> float | None:
        lane = c.lane
        if lane.gate is None or lane.phase is None:
            return None
        front = self._front_on_lane(c, c.s)
        if front > lane.gate + 0.2:
            return None                                   # past it: clear the junction
        dist = lane.gate - front - 0.3
        colour = sig.get(lane.phase, "red")
        go = colour == "green"
        if colour == "yellow":
            onset = self._onset.get(lane.phase, t)
            if c.go_on != onset and c.decided != onset:
                c.decided = onset
                left = self._red_at.get(lane.phase, t + 3.0) - t
                comfortable = c.v * c.v / (2 * self.b_comfort) <= dist
                makes_it = c.v > 0.5 and (dist + 0.3) / c.v <= left - 0.4
                if not comfortable and makes_it:
                    c.go_on = onset
            go = c.go_on == onset
        if not go or self._box_full(c, lane) or (not c.committed and self._box_conflict(c)):
            c.committed = False
            return dist
        if not c.committed and front > lane.gate - c.v * c.v / (2 * self.b_comfort) - 3.0:
            # close enough to go through: the box is this vehicle's, crossing traffic waits
            c.committed = True
            self._occupants.append((c, lane.name, c.direction))
        return None

    def _in_box(self, c: _Car) -> bool:
        lane = c.lane
        if lane.box_entry is None or lane.box_exit is None:
            return False
        if c.direction < 0:
            return c.s - c.length_m / 2 < lane.box_exit and c.s + c.length_m / 2 > lane.box_entry
        front = self._front_on_lane(c, c.s)
        start = lane.box_entry if lane.gate is None else min(lane.gate + 0.2, lane.box_entry)
        return (c.committed or front > start) and front - c.length_m < lane.box_exit

    def _box_conflict(self, c: _Car) -> bool:
        """Whether a vehicle whose way crosses this one's is in the junction box."""
        return any(o is not c and c.lane.name in self._conflicts.get((name, direction), ())
                   for o, name, direction in self._occupants)

    def _box_full(self, c: _Car, lane: _Lane) -> bool:
        """Don't block the box: no room beyond it for this vehicle behind a slow one on the same lane."""
        if lane.box_exit is None or c.role == "parker":
            return False
        room = lane.box_exit + c.length_m + self.min_gap
        for o in self.cars:
            if o is not c and o.lane is lane and o.direction > 0 and o.role != "parker" \
                    and o.s > c.s and o.s - o.length_m / 2 < room and o.v < 2.0:
                return True
        return False

    def _front_on_lane(self, c: _Car, s: float) -> float:
        if c.role != "parker":
            return s + c.length_m / 2
        X, Y, uX, uY = c.path.at(s)
        return c.lane.path.project((X + uX * c.length_m / 2, Y + uY * c.length_m / 2))[0]

    def _clear_to_leave(self, c: _Car) -> bool:
        """Room to pull out: nothing alongside, nothing coming fast from behind."""
        for o in self.cars:
            if o is not c and o.lane is c.lane:
                ahead = o.s - c.lane_s_park
                if -7.0 < ahead < 7.0 or (-25.0 < ahead <= -7.0 and o.v > 3.0):
                    return False
        return True

    # -- events (ground truth) ----------------------------------------------------------------------

    def _events(self, c: _Car, s_prev: float, t0: float, t1: float) -> None:
        lane = c.lane
        if lane.stop_s is not None and c.direction > 0 and not c.crossed:
            front_prev = self._front_on_lane(c, s_prev)
            front = self._front_on_lane(c, c.s)
            if front_prev < lane.stop_s <= front:
                c.crossed = True
                tc = t0 + (lane.stop_s - front_prev) / (front - front_prev) * (t1 - t0)
                colour = self.signal_at(tc).get(lane.phase, "red")    # type: ignore[arg-type]
                if colour == "red":
                    self._record("red_light", c, c.first_seen if c.first_seen is not None else c.t_spawn, tc,
                                 lane=lane.name, x=c.x, y=c.y, signal=colour)
        if c.direction < 0:
            if c.ww_start is None and self._inside_frame(c):
                c.ww_start = (t1, c.driven)
            if c.ww_start is not None and not c.ww_recorded and c.driven - c.ww_start[1] >= c.length_m:
                c.ww_recorded = True
                self._record("wrong_way", c, c.ww_start[0], t1, lane=lane.name, x=c.x, y=c.y)

    def _parking_truth(self, t: float) -> None:
        if len(self.zone) < 3:
            return
        for c in self.cars:
            if c.v < 0.1 and point_in_polygon(c.x, c.y, self.zone):
                if c.still_since is None:
                    c.still_since = t
                    if c.park_state == "arriving":
                        c.park_state, c.parked_since = "parked", t
                elif not c.parking_recorded and t - c.still_since >= self.dwell - 1e-9:
                    c.parking_recorded = True
                    self._record("illegal_parking", c, c.still_since, c.still_since + self.dwell,
                                 lane=c.lane.name, x=c.x, y=c.y)
            else:
                c.still_since, c.parking_recorded = None, False

    def _record(self, kind: str, who: _Car | _Walker, t_start: float, t_violation: float, **extra: Any) -> None:
        if isinstance(who, _Car):
            obj: Any = self._vehicle(who)
            record: dict[str, Any] = {"type": kind, "track": who.id, "plate": who.plate, "class": who.cls,
                                      "t_start": round(t_start, 3), "t_violation": round(t_violation, 3),
                                      "staged": who.role != "normal"}
        else:
            obj = Pedestrian(who.id, round(who.x, 2), round(who.y, 2))
            record = {"type": kind, "track": who.id, "plate": None, "class": "person",
                      "t_start": round(t_start, 3), "t_violation": round(t_violation, 3), "staged": True}
        record.update({k: round(v, 1) if isinstance(v, float) else v for k, v in extra.items()})
        if self.annotate is not None:
            record = self.annotate(record, obj)
        with self._lock:
            self.truth.append(record)
        if self.truth_path is not None:
            with open(self.truth_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    # -- spawning ----------------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    def _plate(self) -> str:
        rng = self.rng
        while True:
            head = ("浙" + rng.choice("ABCDEFGHJKL")) if rng.random() < 0.7 else \
                rng.choice(PROVINCES) + rng.choice(PLATE_LETTERS)
            tail = "".join(rng.choice(PLATE_LETTERS[:10]) if i < 2 and rng.random() < 0.3 else rng.choice(DIGITS)
                           for i in range(5))
            if head + tail not in self._plates:
                self._plates.add(head + tail)
                return head + tail

    def _arrival(self, lane: _Lane, t: float) -> float:
        rate = self.flow * (1.0 if lane.stop_s is not None else 0.6) / 60.0
        return t + self.rng.expovariate(rate) if rate > 0 else math.inf

    def _entry_free(self, lane: _Lane, room: float = 14.0) -> bool:
        """Nothing on the lane within ``room`` metres of where vehicles appear, nor coming the wrong way."""
        return not any(c.lane is lane and (c.direction < 0 or c.s - c.length_m / 2 < lane.s_in + room)
                       for c in self.cars)

    def _make_car(self, lane: _Lane, role: str = "normal", cls: str | None = None) -> _Car:
        rng = self.rng
        if cls is None:
            r = rng.random()
            cls = "car" if r < 0.84 else "bus" if r < 0.92 else "truck"
        colours = {"car": CAR_COLOURS, "bus": BUS_COLOURS, "truck": TRUCK_COLOURS}[cls]
        v0 = rng.uniform(8.0, 11.0) if cls == "car" else rng.uniform(7.0, 9.0)
        size = rng.uniform(0.93, 1.07)
        length, width = SIZES_M[cls]
        car = _Car(self._new_id(), cls, self._plate(), rng.choice(colours), size, lane, lane.path, lane.s_in,
                   v0, v0, length * size, width * size, role=role, t_spawn=self.t)
        self._place(car)
        return car

    def _spawn_traffic(self, t: float) -> None:
        for lane in self.lanes:
            if lane.next_arrival > t:
                continue
            if lane.blocked:
                lane.next_arrival = self._arrival(lane, t)     # that driver takes another road
                continue
            if not self._entry_free(lane):
                continue                                        # waits out of view
            car = self._make_car(lane)
            ahead = [c for c in self.cars if c.lane is lane and c.direction > 0]
            if ahead:
                back = min(ahead, key=lambda c: c.s)
                gap = back.s - back.length_m / 2 - car.s - car.length_m / 2 - self.min_gap
                car.v = min(car.v, max(back.v, self._safe(gap, self.b_comfort, self.dt)))
            self.cars.append(car)
            lane.next_arrival = self._arrival(lane, t)

    # -- staging -------------------------------------------------------------------------------------

    def _schedule(self, kind: str, t: float) -> None:
        rate = getattr(self.rates, kind) / 60.0
        self._due[kind] = t + self.rng.expovariate(rate) if rate > 0 else math.inf

    def _stage_violations(self, t: float, sig: Mapping[int, str]) -> None:
        for kind in VIOLATIONS:
            if self._due[kind] <= t:
                self._pending.setdefault(kind, t)
                self._schedule(kind, t)
        for kind, since in list(self._pending.items()):
            if getattr(self, f"_try_{kind}")(t, sig):
                self.staged[kind] += 1
                del self._pending[kind]
            elif t - since > 120.0:
                self.missed.append((round(t, 2), kind))
                del self._pending[kind]
                lane = self._wrong_lane
                if kind == "wrong_way" and lane is not None and lane.blocked == "wrong_way":
                    lane.blocked, self._wrong_lane = None, None

    def _try_red_light(self, t: float, sig: Mapping[int, str]) -> bool:
        phase = self.approach_phase
        if sig.get(phase) != "red":
            return False
        left = self._red_end.get(phase, t) - t
        start = -12.0                       # metres before the bottom row: out of view, but near
        candidates = []
        for lane in self.approach_lanes:
            if lane.blocked or any(c.lane is lane and (c.direction < 0 or not c.crossed and c.s > start - 10.0)
                                   for c in self.cars):
                continue
            if 1.0 + (lane.stop_s - start) / 14.0 > left:      # type: ignore[operator]
                continue                   # even a fast runner would get there after the red
            candidates.append(lane)
        if not candidates:
            return False
        lane = self.rng.choice(candidates)
        car = self._make_car(lane, role="runner", cls="car")
        car.s = start
        distance = lane.stop_s - start - car.length_m / 2      # type: ignore[operator]
        car.v = car.v0 = max(self.rng.uniform(10.0, 12.0), distance / max(left - 1.0, 0.5))
        self._place(car)
        self.cars.append(car)
        return True

    def _try_wrong_way(self, t: float, sig: Mapping[int, str]) -> bool:
        if self._wrong_lane is None:
            if any(c.role == "wrong_way" for c in self.cars):
                return False
            pool = [lane for lane in self.approach_lanes or self.lanes if not lane.blocked]
            pool = [lane for lane in pool if lane.path.turning() < 20.0] or pool
            if not pool:
                return False
            self._wrong_lane = self.rng.choice(pool)
            self._wrong_lane.blocked = "wrong_way"
        lane = self._wrong_lane
        if lane.blocked != "wrong_way" or any(c.lane is lane for c in self.cars):
            return False
        car = self._make_car(lane, role="wrong_way", cls="car")
        car.direction = -1
        car.s = lane.s_out
        car.v = car.v0 = self.rng.uniform(6.0, 8.0)
        self._place(car)
        car.first_seen = None
        self.cars.append(car)
        lane.blocked = "wrong_way_out"
        return True

    def _try_illegal_parking(self, t: float, sig: Mapping[int, str]) -> bool:
        if len(self.zone) < 3 or self._parker is not None:
            return False
        zone = self._ground(self.zone)
        cX, cY = polygon_centroid(zone)
        if not point_in_polygon(cX, cY, zone):
            cX, cY = zone[0]
        lane = min(self.lanes, key=lambda l: l.path.project((cX, cY))[1])
        if lane.blocked or not self._entry_free(lane):
            return False
        car = self._make_car(lane, role="parker", cls="car")
        L = car.length_m
        # the spot: beside the lane, as near the zone's start (the lane's upstream end) as the car fits
        along = [lane.path.project(p)[0] for p in zone]
        s_c, _ = lane.path.project((cX, cY))
        s_z = min(s_c, min(along) + L / 2 + 0.4)
        pX, pY, uX, uY = lane.path.at(s_c)
        oX, oY = cX - pX, cY - pY
        pts: list[Point] = []
        park_s, acc, s = 0.0, 0.0, lane.s_in
        while s <= lane.path.length + 0.5:
            w = _smoothstep(s_z - 4 * L, s_z - 0.5 * L, s) * (1 - _smoothstep(s_z + 0.5 * L, s_z + 2.5 * L, s))
            X, Y, _, _ = lane.path.at(s)
            p = (X + oX * w, Y + oY * w)
            if pts:
                acc += math.hypot(p[0] - pts[-1][0], p[1] - pts[-1][1])
            if abs(s - s_z) <= 0.5:
                park_s = acc
            pts.append(p)
            s += 1.0
        car.path = Path(pts)
        car.s = 0.0
        car.park_s = park_s
        car.lane_s_park = s_z
        car.park_state = "arriving"
        car.leave_after = self.dwell + self.rng.uniform(5.0, 15.0)
        car.v = car.v0 = min(car.v0, 8.0)
        self._place(car)
        self.cars.append(car)
        self._parker = car
        return True

    def _try_zone_intrusion(self, t: float, sig: Mapping[int, str]) -> bool:
        poly = self.carriageway
        if len(poly) < 3:
            return False
        edges = [(poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly))]
        lengths = [math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in edges]
        m = 40.0
        for _ in range(40):
            (a, b), = self.rng.choices(edges, weights=lengths)
            u = self.rng.uniform(0.1, 0.9)
            px, py = a[0] + u * (b[0] - a[0]), a[1] + u * (b[1] - a[1])
            ln = math.hypot(b[0] - a[0], b[1] - a[1])
            nx, ny = (b[1] - a[1]) / ln, -(b[0] - a[0]) / ln
            if point_in_polygon(px + 3 * nx, py + 3 * ny, poly):
                nx, ny = -nx, -ny                                   # (nx, ny) points away from the road
            ppm = self.map.ppm(py)
            out = (px + nx * 1.5 * ppm, py + ny * 1.5 * ppm)
            into = (px - nx * self.rng.uniform(1.5, 3.5) * ppm, py - ny * self.rng.uniform(1.5, 3.5) * ppm)
            if not all(m <= q[0] <= self.width - m and 2 * m <= q[1] <= self.height - m for q in (out, into)):
                continue
            if point_in_polygon(*out, poly) or not point_in_polygon(*into, poly):
                continue
            if self.zone and point_in_polygon(*into, self.zone):
                continue
            walker = _Walker(self._new_id(), Path(self._ground([out, into])), self.rng.uniform(1.1, 1.6), t,
                             self.rng.uniform(2.0, 4.0))
            walker.X, walker.Y = walker.path.points[0]
            walker.x, walker.y = out
            self.walkers.append(walker)
            return True
        return False

    # -- pedestrians --------------------------------------------------------------------------------

    def _walk(self, t: float) -> None:
        keep = []
        for w in self.walkers:
            step = w.speed * self.dt
            if w.state == "in":
                w.s = min(w.path.length, w.s + step)
                if w.s >= w.path.length:
                    w.state, w.until = "stand", t + w.stand
            elif w.state == "stand":
                if t >= w.until:
                    w.state = "out"
            else:
                w.s = max(0.0, w.s - step)
            w.X, w.Y = w.path.at(w.s)[:2]
            w.x, w.y = self.map.to_image(w.X, w.Y)
            if not w.recorded and point_in_polygon(w.x, w.y, self.carriageway):
                w.t_on = t if w.t_on is None else w.t_on
                if self._in_view(w):
                    w.recorded = True
                    late = {"hidden_s": round(t - w.t_on, 2)} if t > w.t_on else {}   # was behind a vehicle
                    self._record("zone_intrusion", w, w.t_spawn, t, x=w.x, y=w.y, **late)
            if not (w.state == "out" and w.s <= 0.0):
                keep.append(w)
            elif w.t_on is not None and not w.recorded:
                with self._lock:
                    self.unseen.append({"type": "zone_intrusion", "track": w.id, "t_on": round(w.t_on, 3),
                                        "t_off": round(t, 3)})
        self.walkers = keep

    # the most of a person's figure vehicles may hide for them to count as in view: the shipped
    # detector is trained on people at most ~40 % hidden
    HIDDEN_MAX = 0.4

    def _in_view(self, w: _Walker) -> bool:
        if self.hidden is None:
            return True
        vehicles = [self._vehicle(c) for c in self.cars if self._visible(c, margin=0.5 * c.length)]
        return self.hidden(Pedestrian(w.id, w.x, w.y), vehicles) <= self.HIDDEN_MAX


def read_truth(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of a ground-truth JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
