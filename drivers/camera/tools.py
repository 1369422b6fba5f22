"""Technician tools: a snapshot with the rules drawn on it, and the detector on one image.

Wiring for ``agent/cli.py`` (owned by the agent core):

    edge-agent snapshot CAMERA [-c CONFIG] [-o FILE]   ->  snapshot(camera_config, out_path)
    edge-agent detect IMAGE [--model NAME|MANIFEST]    ->  print(json.dumps(detect(image_path, manifest)))
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivers.camera.options import (
    IllegalParkingRule, Options, RedLightRule, StopLineRule, WrongWayRule, ZoneIntrusionRule, resolve_manifest,
    rule_name,
)

COLOURS = {"red_light": (0, 0, 255), "stop_line": (0, 140, 255), "wrong_way": (255, 0, 255),
           "illegal_parking": (0, 255, 255), "zone_intrusion": (255, 160, 0)}


def _pts(points: Any) -> np.ndarray:
    return np.array([[int(round(x)), int(round(y))] for x, y in points], np.int32)


def _label(image: np.ndarray, text: str, at: tuple[float, float], colour: tuple[int, int, int]) -> None:
    x, y = int(at[0]), int(at[1])
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(image, (x, y - h - 6), (x + w + 6, y), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 3, y - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)


def _arrow(image: np.ndarray, start: tuple[float, float], direction: tuple[float, float], colour, length=50.0):
    end = (start[0] + direction[0] * length, start[1] + direction[1] * length)
    cv2.arrowedLine(image, (int(start[0]), int(start[1])), (int(end[0]), int(end[1])), colour, 2, cv2.LINE_AA,
                    tipLength=0.3)


def draw_rules(image: np.ndarray, options: Options) -> np.ndarray:
    """A copy of ``image`` with every rule's line, zone, lane and direction drawn and named."""
    out = image.copy()
    for index, rule in enumerate(options.rules):
        colour = COLOURS.get(rule.type, (255, 255, 255))
        name = rule_name(rule, index)
        if isinstance(rule, (RedLightRule, StopLineRule)):
            a, b = rule.line
            cv2.line(out, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), colour, 3, cv2.LINE_AA)
            mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
            _arrow(out, mid, rule.direction, colour)
            source = rule.signal or options.signal
            _label(out, f"{name} ({source.device}.{source.point_name})" if source else name, a, colour)
        elif isinstance(rule, WrongWayRule):
            if rule.path is not None:
                cv2.polylines(out, [_pts(rule.path)], False, colour, 2, cv2.LINE_AA)
                p, q = rule.path[-2], rule.path[-1]
                d = np.subtract(q, p)
                d = d / max(np.linalg.norm(d), 1e-6)
                _arrow(out, q, (float(d[0]), float(d[1])), colour, 30)
                _label(out, name, rule.path[0], colour)
            else:
                cv2.polylines(out, [_pts(rule.zone)], True, colour, 2, cv2.LINE_AA)
                centre = np.mean(np.array(rule.zone), axis=0)
                _arrow(out, (float(centre[0]), float(centre[1])), rule.direction, colour)
                _label(out, name, rule.zone[0], colour)
        elif isinstance(rule, (IllegalParkingRule, ZoneIntrusionRule)):
            overlay = out.copy()
            cv2.fillPoly(overlay, [_pts(rule.zone)], colour)
            cv2.addWeighted(overlay, 0.2, out, 0.8, 0, out)
            cv2.polylines(out, [_pts(rule.zone)], True, colour, 2, cv2.LINE_AA)
            _label(out, name, rule.zone[0], colour)
    return out


def grab_frame(options: Options, timeout: float | None = None) -> np.ndarray:
    """One fresh frame from the camera (opened like the driver does). Raises RuntimeError with the
    probe's explanation when it cannot."""
    from drivers.camera.reader import _open, display_url, probe
    timeout = timeout or options.open_timeout
    cap = _open(options.stream_url(), timeout, options.read_timeout)
    try:
        if not cap.isOpened():
            raise RuntimeError(probe(options.stream_url(), timeout))
        deadline = time.monotonic() + timeout + options.read_timeout
        image = None
        for _ in range(5):    # skip the first frames: the decoder may start before a key frame
            ok, frame = cap.read()
            if ok and frame is not None:
                image = frame
            if time.monotonic() > deadline:
                break
        if image is None:
            raise RuntimeError(f"{display_url(options.url)} opened but sent no frame")
        return image
    finally:
        cap.release()


def snapshot(camera_config: Any, out_path: str | Path, overlay: bool = True) -> dict[str, Any]:
    """Save one frame of the camera with its rules drawn on it. ``camera_config``: a DeviceConfig
    from load_config, or a camera entry as a dict. Returns what was saved, for the CLI to print."""
    options = _options(camera_config)
    image = grab_frame(options)
    if overlay:
        image = draw_rules(image, options)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), image):
        raise RuntimeError(f"cannot write {out} (use a .jpg or .png name)")
    h, w = image.shape[:2]
    return {"file": str(out), "width": w, "height": h, "rules": len(options.rules)}


def detect(image_path: str | Path, manifest: str | Path = "nanodet", threads: int = 1,
           score: float | None = None) -> list[dict[str, Any]]:
    """The detector's findings in one image, JSON-ready: [{label, score, box: [x1, y1, x2, y2]}]."""
    from models.runtime import Detector
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{image_path}: not an image OpenCV can read")
    path = manifest if isinstance(manifest, Path) else resolve_manifest(str(manifest), Path.cwd())
    detector = Detector(path, threads=threads, score_threshold=score)
    return [{"label": d.label, "score": round(float(d.score), 3), "box": [round(float(v), 1) for v in d.box]}
            for d in detector.detect(image)]


def _options(camera_config: Any) -> Options:
    if isinstance(camera_config, Options):
        return camera_config
    options = getattr(camera_config, "options", None)
    if isinstance(options, Options):
        return options
    if isinstance(camera_config, dict):
        extra = {k: v for k, v in camera_config.items() if k not in ("id", "driver", "name", "kind", "enabled",
                                                                      "poll", "location", "report", "alarms")}
        return Options.model_validate(extra)
    return Options.model_validate(camera_config.model_extra or {})
