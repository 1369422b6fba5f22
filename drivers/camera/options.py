"""The camera driver's keys in a `cameras:` entry of the gateway config.

```yaml
cameras:
  - id: cam-01
    url: rtsp://192.0.2.30:554/Streaming/Channels/101
    username: admin
    password: {file: /etc/edge-agent/cam-01.pass}
    model: nanodet
    signal: {device: tsc-01, point: phase2}
    rules:
      - {type: red_light, line: [[100, 500], [1180, 500]], direction: down}
```

Everything is in image coordinates (pixels of the camera's own frame). Geometry is checked at
load: a polygon needs three points, a line two different ones, a direction a length.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from agent.core.backoff import Backoff
from agent.core.config import Secret, Strict
from agent.core.units import Duration
from drivers.camera.geometry import crossing_edges

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
VEHICLES = ("car", "bus", "truck", "motorcycle")

Pt = tuple[float, float]


def _point(value: Any) -> Pt:
    """[x, y] in pixels. A coordinate that is no finite float (an integer of 400 digits raised
    OverflowError out of the config loader, found by bench/fuzz.py; inf, nan) is refused."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"expected a point [x, y] in pixels, got {reprlib.repr(value)}")
    try:
        x, y = float(value[0]), float(value[1])
    except OverflowError:
        x = y = math.inf
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"expected a point [x, y] in pixels, got {reprlib.repr(value)}")
    return (x, y)


def _line(value: Any) -> tuple[Pt, Pt]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("expected a line as two points [[x1, y1], [x2, y2]] in pixels")
    a, b = _point(value[0]), _point(value[1])
    if math.dist(a, b) < 2:
        raise ValueError("the line's two points are the same (or closer than 2 px)")
    return (a, b)


def _polygon(value: Any) -> tuple[Pt, ...]:
    if not isinstance(value, (list, tuple)) or len(value) < 3:
        raise ValueError("expected a polygon of at least three points [[x, y], ...] in pixels")
    points = tuple(_point(v) for v in value)
    area = 0.5 * abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1])))
    if len(points) > 256:
        raise ValueError("a polygon of more than 256 points: draw it with fewer")
    crossing = crossing_edges(points)
    if crossing is not None:
        i, j = crossing
        raise ValueError(f"the polygon's edges cross (edge from point {i} and edge from point {j}): "
                         "its inside is not what it looks like; order the points around its outline")
    if area < 4:
        raise ValueError("the polygon has no area (its points are on one line)")
    return points


_NAMED_DIRECTIONS = {"down": (0.0, 1.0), "up": (0.0, -1.0), "right": (1.0, 0.0), "left": (-1.0, 0.0)}


def _direction(value: Any) -> Pt:
    """A unit vector from 'down'/'up'/'left'/'right', [dx, dy], or an arrow [[x1, y1], [x2, y2]]."""
    if isinstance(value, str):
        if value not in _NAMED_DIRECTIONS:
            raise ValueError(f"expected one of {', '.join(_NAMED_DIRECTIONS)}, [dx, dy] or an arrow "
                             f"[[x1, y1], [x2, y2]], got {value!r}")
        return _NAMED_DIRECTIONS[value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (list, tuple)) for v in value):
        (x1, y1), (x2, y2) = _line(value)
        dx, dy = x2 - x1, y2 - y1
    else:
        dx, dy = _point(value)
    norm = math.hypot(dx, dy)
    if norm < 1e-6:
        raise ValueError("a direction needs a length")
    return (dx / norm, dy / norm)


Line = Annotated[tuple[Pt, Pt], BeforeValidator(_line)]
Polygon = Annotated[tuple[Pt, ...], BeforeValidator(_polygon)]
Direction = Annotated[Pt, BeforeValidator(_direction)]
Severity = Literal["critical", "major", "minor", "info"]


class SignalSource(Strict):
    """Where the red-light rule reads the signal: a point of another device (a signal controller's
    ``phase2``), never the pixels of the lamp."""

    device: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    point: str | None = None          # default: phase<phase>
    phase: int | None = Field(default=None, ge=1, le=255)
    max_age: Duration = 2.0           # an older reading is treated as unknown (no violation decided on it)

    @model_validator(mode="after")
    def _point_or_phase(self) -> "SignalSource":
        if (self.point is None) == (self.phase is None):
            raise ValueError("give exactly one of 'point' (e.g. phase2) or 'phase' (e.g. 2)")
        return self

    @property
    def point_name(self) -> str:
        return self.point if self.point is not None else f"phase{self.phase}"


def _anchor(value: Any) -> float:
    """Which point of a box stands for the road user: 'bottom' (where it touches the road, the
    default), 'top', 'centre', or a fraction of the box height from its top (0..1). For traffic
    driving away from the camera the front bumper is about a quarter of the way down the box."""
    named = {"top": 0.0, "centre": 0.5, "center": 0.5, "bottom": 1.0}
    if isinstance(value, str) and value in named:
        return named[value]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise ValueError("expected 'bottom', 'top', 'centre' or a fraction of the box height from its top (0..1)")


Anchor = Annotated[float, BeforeValidator(_anchor)]


class _Rule(Strict):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,32}$")   # default: type + index
    classes: tuple[str, ...] = VEHICLES
    severity: Severity = "major"
    min_score: float = Field(default=0.0, ge=0, le=1)   # tracks whose best detection score is lower are ignored
    anchor: Anchor = 1.0                                 # the point of the box the rule follows


class RedLightRule(_Rule):
    """A vehicle crosses the stop line while its signal is red and goes on: three images (behind
    the line with the red signal, past it, further on)."""

    type: Literal["red_light"]
    line: Line
    direction: Direction                  # the way traffic crosses the line
    signal: SignalSource | None = None    # default: the camera's `signal`
    confirm_distance: float = Field(default=40.0, gt=0)   # px past the line along direction: "further on"
    confirm_within: Duration = 3.0        # not that far by then: stopped over the line, no red-light violation
    grace: Duration = 0.0                 # crossing within this long after the signal turned red is not counted
    extent: float = Field(default=0.1, ge=0, le=1)   # how far beyond the line's ends (fraction of its length) still counts


class StopLineRule(_Rule):
    """A vehicle stops past the stop line while its signal is red (over the line, not through)."""

    type: Literal["stop_line"]
    line: Line
    direction: Direction
    signal: SignalSource | None = None
    dwell: Duration = 2.0                 # stationary past the line, on red, this long
    max_distance: float = Field(default=150.0, gt=0)   # px past the line: further is in the junction, not at the line
    still_px: float = Field(default=6.0, gt=0)          # moved less than this over `dwell`: stationary
    extent: float = Field(default=0.1, ge=0, le=1)
    severity: Severity = "minor"


def _polyline(value: Any) -> tuple[Pt, ...]:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ValueError("expected a lane path of at least two points [[x, y], ...] in the direction of travel")
    points = tuple(_point(v) for v in value)
    if sum(math.dist(a, b) for a, b in zip(points, points[1:])) < 2:
        raise ValueError("the path has no length")
    return points


Polyline = Annotated[tuple[Pt, ...], BeforeValidator(_polyline)]


class WrongWayRule(_Rule):
    """A vehicle in a lane moves against the lane's direction. The lane is either a polygon with
    one direction (`zone` + `direction`) or a path in the direction of travel with a `width`
    (curved lanes: a turn lane, a roundabout)."""

    type: Literal["wrong_way"]
    zone: Polygon | None = None            # the lane, as a polygon ...
    direction: Direction | None = None     # ... and its legal direction of travel
    path: Polyline | None = None           # or the lane's centre line, in the direction of travel ...
    width: float = Field(default=60.0, gt=0)   # ... and how far from it (px) still counts as in the lane
    min_distance: float = Field(default=40.0, gt=0)   # px travelled against the direction inside the zone
    min_time: Duration = 0.5               # ... over at least this long (a jittery box is not a wrong-way driver)

    @model_validator(mode="after")
    def _lane(self) -> "WrongWayRule":
        if (self.path is None) == (self.zone is None):
            raise ValueError("give the lane as 'zone' + 'direction' or as 'path' (+ 'width')")
        if self.zone is not None and self.direction is None:
            raise ValueError("a 'zone' needs the lane's 'direction'")
        return self


class IllegalParkingRule(_Rule):
    """A vehicle stays in a no-parking zone longer than `dwell`."""

    type: Literal["illegal_parking"]
    zone: Polygon
    dwell: Duration = 60.0
    still_px: float = Field(default=15.0, gt=0)   # moved less than this (anchor) since it entered: parked
    severity: Severity = "minor"


class ZoneIntrusionRule(_Rule):
    """Something of `classes` (e.g. a person) inside a zone (e.g. the carriageway) for `min_time`."""

    type: Literal["zone_intrusion"]
    zone: Polygon
    classes: tuple[str, ...] = ("person",)
    min_time: Duration = 0.5
    # only road users seen outside the zone before they were in it (crossing its edge): a person
    # stepping off the kerb. Something that shows up in the middle of the zone (a detector's
    # mistake on a shadow or a vehicle's flank, or a track broken behind a bus) is not counted.
    from_outside: bool = True


_RULES: dict[str, type[_Rule]] = {
    "red_light": RedLightRule, "stop_line": StopLineRule, "wrong_way": WrongWayRule,
    "illegal_parking": IllegalParkingRule, "zone_intrusion": ZoneIntrusionRule,
}


def _rule(value: Any) -> Any:
    """Pick the rule model by ``type`` (errors keep the file's own keys, not a union tag)."""
    if isinstance(value, _Rule):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected a rule mapping with a 'type' ({', '.join(_RULES)})")
    kind = value.get("type")
    model = _RULES.get(kind) if isinstance(kind, str) else None   # a list as the type was unhashable: TypeError
    if model is None:
        raise ValueError(f"rule type must be one of {', '.join(_RULES)}, got {reprlib.repr(kind)}")
    return model.model_validate(value)


Rule = Annotated[Union[RedLightRule, StopLineRule, WrongWayRule, IllegalParkingRule, ZoneIntrusionRule],
                 BeforeValidator(_rule)]


class Detect(Strict):
    score: float = Field(default=0.4, gt=0, le=1)     # detections below are dropped
    classes: tuple[str, ...] | None = None             # keep only these labels (default: all the model has)
    threads: int = Field(default=1, ge=1, le=16)       # onnxruntime intra-op threads
    # areas that are not the road, in frame pixels: detections centred there are dropped (the
    # camera's OSD caption, a billboard with a car on it)
    ignore: tuple[Polygon, ...] = ()


class Motion(Strict):
    """Motion gate: frames without change skip the detector (a static scene costs little CPU)."""

    enabled: bool = True
    threshold: float = Field(default=0.001, ge=0, le=1)   # fraction of (downscaled) pixels that changed
    pixel_delta: int = Field(default=18, ge=1, le=255)     # grey-level change that counts
    # run the detector at least this often anyway: parked cars, slow creep, and someone far off
    # walking too few pixels a frame for the gate, who reaches the kerb in a second or two
    idle_interval: Duration = 0.5
    # areas whose changes never count as motion, in frame pixels: the camera's on-screen clock and
    # caption, a screen or a tree in the picture (a ticking OSD clock would otherwise wake the
    # detector on every frame of an empty street)
    ignore: tuple[Polygon, ...] = ()


class Tracker(Strict):
    iou: float = Field(default=0.2, ge=0, le=1)        # minimum overlap to continue a track
    max_gap: Duration = 1.0                            # a track unseen this long is ended
    min_hits: int = Field(default=2, ge=1, le=10)      # detections before a track counts for rules


class Evidence(Strict):
    clip_before: Duration = 6.0
    clip_after: Duration = 6.0
    clip_fps: float = Field(default=8.0, gt=0, le=30)
    clip_width: int = Field(default=640, ge=160, le=3840)
    clip_format: Literal["mp4", "mjpeg", "none"] = "mp4"   # mp4: MPEG-4 part 2 (mp4v) in .mp4; mjpeg: .avi
    jpeg_quality: int = Field(default=85, ge=30, le=100)
    crop: bool = True
    plate: bool = True        # read the plate text (OCR) from the vehicle crop
    repeat_window: Duration = 60.0   # the same plate with the same violation again within this: one violation


class Privacy(Strict):
    blur_faces: bool = False   # blur faces of people who are not the subject, in stills, crop and clip


class Options(Strict):
    url: str
    username: str | None = None
    password: Secret | None = None
    # a name under models/ or a manifest path. The default, nanodet, was trained on photographs (COCO)
    # and measured on real footage; vehicles (the simulated junction's renders only) is for the simulator
    model: Path = Field(default=Path("nanodet"), validate_default=True)
    fps: float = Field(default=10.0, gt=0, le=60)   # frames processed per second at most
    open_timeout: Duration = 5.0
    read_timeout: Duration = 3.0
    freeze_after: Duration = 3.0              # no frame for this long: the stream is frozen, reconnect
    backoff: Backoff = Backoff(initial=0.5)   # reconnect spacing after the stream drops or freezes: 0.5s .. 30s
    signal: SignalSource | None = None        # default signal source for red_light / stop_line rules
    rules: list[Rule] = []
    detect: Detect = Detect()
    motion: Motion = Motion()
    tracker: Tracker = Tracker()
    evidence: Evidence = Evidence()
    privacy: Privacy = Privacy()
    stats_interval: Duration = 10.0           # how often fps, inference time and track counts are read out

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff_initial(cls, value: Any) -> Any:
        """A stream is reopened sooner than a device is retried: ``initial`` is 0.5s here unless
        the entry sets it (``{max: 10s}`` keeps it)."""
        return {"initial": 0.5, **value} if isinstance(value, dict) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("rtsp", "rtsps", "http", "https", "file") and not Path(value).suffix:
            raise ValueError(f"expected an rtsp:// URL, got {value.split('@')[-1]!r}")
        if parts.password is not None:
            raise ValueError("the URL holds a password: put it in 'password: {file: ...}' (or {env: ...}) "
                             "so it stays out of the config and the logs")
        if parts.scheme in ("rtsp", "rtsps") and not parts.hostname:
            raise ValueError("the rtsp URL has no host")
        return value

    @field_validator("open_timeout", "read_timeout", "freeze_after")
    @classmethod
    def _timeouts(cls, value: float) -> float:
        if not 0.2 <= value <= 120:
            raise ValueError("must be between 200ms and 120s")
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, (str, Path)):
            raise ValueError("expected a model name (e.g. nanodet) or the path of its manifest.yaml")
        return resolve_manifest(str(value), (info.context or {}).get("config_dir"))

    @model_validator(mode="after")
    def _rules_need_signal(self) -> "Options":
        names: set[str] = set()
        for index, rule in enumerate(self.rules):
            if isinstance(rule, (RedLightRule, StopLineRule)) and rule.signal is None and self.signal is None:
                raise ValueError(f"rules[{index}] ({rule.type}) needs a signal: set 'signal: {{device: ..., "
                                 f"point: phase2}}' on the rule or on the camera")
            name = rule_name(rule, index)
            if name in names:
                raise ValueError(f"rules[{index}]: the rule name {name!r} is used twice")
            names.add(name)
        return self

    def stream_url(self) -> str:
        """The URL with the credentials in it, for the decoder only: never log it."""
        if self.username is None and self.password is None:
            return self.url
        from urllib.parse import quote
        parts = urlsplit(self.url)
        user = quote(self.username or "", safe="")
        secret = quote(self.password.reveal(), safe="") if self.password else ""
        netloc = f"{user}:{secret}@{parts.netloc}" if secret else f"{user}@{parts.netloc}"
        return parts._replace(netloc=netloc).geturl()

    def signal_for(self, rule: Any) -> SignalSource | None:
        return getattr(rule, "signal", None) or self.signal


def rule_name(rule: Any, index: int) -> str:
    return rule.name or f"{rule.type}{index}"


def resolve_manifest(value: str, config_dir: Any = None) -> Path:
    """A model name (``nanodet`` -> models/nanodet/manifest.yaml) or a manifest path."""
    path = Path(value)
    if not path.suffix and len(path.parts) == 1:
        candidate = MODELS_DIR / value / "manifest.yaml"
    else:
        candidate = path if path.is_absolute() or not config_dir else Path(config_dir) / path
    try:
        found = candidate.is_file()
    except OSError:   # a name too long for a file name (ENAMETOOLONG) escaped load_config (bench/fuzz.py)
        found = False
    if not found:
        raise ValueError(f"model {reprlib.repr(value)}: no manifest at {reprlib.repr(str(candidate))}")
    return candidate
