"""The camera's figures for the web console's rule editor: where in a ``cameras:`` entry its
stop lines, zones, lane directions and ignore areas are, and which new ones a technician may
draw. Read from the entry as written (not yet validated), so a half-finished edit still shows.

A direction written as a word (``down``) or a vector is drawn as an arrow from the middle of its
line (or zone); once moved it is written back as an arrow ``[[x1, y1], [x2, y2]]``, which the
options accept as well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from agent.core.driver import Shape, ShapeKind

ARROW_PX = 60.0
_NAMED = {"down": (0.0, 1.0), "up": (0.0, -1.0), "right": (1.0, 0.0), "left": (-1.0, 0.0)}

KINDS = [
    ShapeKind("stop_line", "Stop line (vehicles stopped over it on red)", "line", ("rules",),
              {"type": "stop_line", "direction": "down"}, "line"),
    ShapeKind("red_light", "Red-light line (vehicles crossing it on red)", "line", ("rules",),
              {"type": "red_light", "direction": "down"}, "line"),
    ShapeKind("zone_intrusion", "Zone (people entering it)", "polygon", ("rules",),
              {"type": "zone_intrusion"}, "zone"),
    ShapeKind("illegal_parking", "No-parking zone", "polygon", ("rules",), {"type": "illegal_parking"}, "zone"),
    ShapeKind("wrong_way", "Lane direction (drawn in the direction of travel)", "path", ("rules",),
              {"type": "wrong_way"}, "path"),
    ShapeKind("ignore", "Ignore area (detections there are dropped)", "polygon", ("detect", "ignore")),
    ShapeKind("motion_ignore", "Motion ignore area (an on-screen clock, a tree)", "polygon", ("motion", "ignore")),
]


def _points(value: Any, least: int) -> tuple[tuple[float, float], ...] | None:
    """Pixel points as written, or None when the value is not (yet) a list of them."""
    if not isinstance(value, (list, tuple)) or len(value) < least:
        return None
    points = []
    for item in value:
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in item)):
            return None
        points.append((float(item[0]), float(item[1])))
    return tuple(points)


def _arrow(direction: Any, origin: tuple[float, float]) -> tuple[tuple[float, float], ...] | None:
    """The direction as an arrow (tail, head) starting at ``origin``."""
    drawn = _points(direction, 2) if isinstance(direction, (list, tuple)) and direction and \
        isinstance(direction[0], (list, tuple)) else None
    if drawn is not None and len(drawn) == 2:
        (x1, y1), (x2, y2) = drawn
        dx, dy = x2 - x1, y2 - y1
    elif isinstance(direction, str) and direction in _NAMED:
        dx, dy = _NAMED[direction]
    else:
        vector = _points([direction], 1) if isinstance(direction, (list, tuple)) else None
        if vector is None:
            return None
        dx, dy = vector[0]
    norm = math.hypot(dx, dy)
    if norm < 1e-6:
        return None
    if drawn is not None:   # an arrow as drawn keeps its place
        return drawn
    return (origin, (origin[0] + dx / norm * ARROW_PX, origin[1] + dy / norm * ARROW_PX))


def _middle(points: tuple[tuple[float, float], ...]) -> tuple[float, float]:
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))


def shapes(entry: Mapping[str, Any]) -> list[Shape]:
    found: list[Shape] = []
    rules = entry.get("rules")
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, Mapping):
            continue
        kind = rule.get("type")
        name = rule.get("name") or f"{kind}{index}"
        where: tuple[Any, ...] = ("rules", index)
        if kind in ("red_light", "stop_line"):
            line = _points(rule.get("line"), 2)
            if line is not None and len(line) == 2:
                found.append(Shape((*where, "line"), "line", str(name), line, where))
                arrow = _arrow(rule.get("direction"), _middle(line))
                if arrow is not None:
                    found.append(Shape((*where, "direction"), "arrow", f"{name} direction", arrow, where))
        elif kind == "wrong_way":
            path = _points(rule.get("path"), 2)
            if path is not None:
                found.append(Shape((*where, "path"), "path", str(name), path, where))
            zone = _points(rule.get("zone"), 3)
            if zone is not None:
                found.append(Shape((*where, "zone"), "polygon", str(name), zone, where))
                arrow = _arrow(rule.get("direction"), _middle(zone))
                if arrow is not None:
                    found.append(Shape((*where, "direction"), "arrow", f"{name} direction", arrow, where))
        elif kind in ("zone_intrusion", "illegal_parking"):
            zone = _points(rule.get("zone"), 3)
            if zone is not None:
                found.append(Shape((*where, "zone"), "polygon", str(name), zone, where))
    for section, label in (("detect", "ignore"), ("motion", "motion ignore")):
        block = entry.get(section)
        areas = block.get("ignore") if isinstance(block, Mapping) else None
        for index, area in enumerate(areas if isinstance(areas, list) else []):
            polygon = _points(area, 3)
            if polygon is not None:
                where = (section, "ignore", index)
                found.append(Shape(where, "polygon", f"{label} {index}", polygon, where))
    return found
