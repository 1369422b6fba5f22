"""Image-plane geometry for the rules: points in polygons, signed distances to a line, boxes."""

from __future__ import annotations

import math

Pt = tuple[float, float]
Box = tuple[float, float, float, float]   # x1, y1, x2, y2 in pixels


def anchor(box: Box, at: float = 1.0) -> Pt:
    """A point on the box's vertical centre line, ``at`` of its height from the top: 1.0 (the
    default) is where a road user touches the ground."""
    return ((box[0] + box[2]) / 2.0, box[1] + at * (box[3] - box[1]))


def centre(box: Box) -> Pt:
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)


def iou(a: Box, b: Box) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def cover(a: Box, b: Box) -> float:
    """How much of the smaller box the other covers: their intersection over the smaller's area."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    return ix * iy / max(min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])), 1e-6)


def inside(point: Pt, polygon: tuple[Pt, ...]) -> bool:
    """Ray casting; a point on an edge may fall either way (harmless for zones of many pixels)."""
    x, y = point
    result = False
    j = len(polygon) - 1
    for i in range(len(polygon)):
        xi, yi = polygon[i]
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            result = not result
        j = i
    return result


class DirectedLine:
    """A line with a crossing direction: ``side(p)`` is the signed distance in pixels, negative
    before the line, positive past it (along ``direction``); ``within(p)`` whether p lies beside
    the segment (extended by ``extent`` of its length at each end), not off to one side of it."""

    def __init__(self, line: tuple[Pt, Pt], direction: Pt, extent: float = 0.1):
        (x1, y1), (x2, y2) = line
        self.a, self.b = line
        length = math.hypot(x2 - x1, y2 - y1)
        self.length = length
        self.u = ((x2 - x1) / length, (y2 - y1) / length)          # along the line
        normal = (-self.u[1], self.u[0])
        if normal[0] * direction[0] + normal[1] * direction[1] < 0:
            normal = (-normal[0], -normal[1])
        if abs(normal[0] * direction[0] + normal[1] * direction[1]) < 0.1:
            raise ValueError("the direction runs along the line: it must cross it")
        self.n = normal
        self.extent = extent

    def side(self, p: Pt) -> float:
        return (p[0] - self.a[0]) * self.n[0] + (p[1] - self.a[1]) * self.n[1]

    def within(self, p: Pt) -> bool:
        along = (p[0] - self.a[0]) * self.u[0] + (p[1] - self.a[1]) * self.u[1]
        margin = self.extent * self.length
        return -margin <= along <= self.length + margin


class Path:
    """A lane's centre line in its direction of travel: ``locate(p)`` gives (arclength, distance)."""

    def __init__(self, points: tuple[Pt, ...]):
        self.points = points
        self.starts = [0.0]
        for a, b in zip(points, points[1:]):
            self.starts.append(self.starts[-1] + math.dist(a, b))

    def locate(self, p: Pt) -> tuple[float, float]:
        best = (math.inf, 0.0)
        for i, (a, b) in enumerate(zip(self.points, self.points[1:])):
            dx, dy = b[0] - a[0], b[1] - a[1]
            length2 = dx * dx + dy * dy
            u = 0.0 if length2 == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / length2))
            q = (a[0] + u * dx, a[1] + u * dy)
            distance = math.dist(p, q)
            if distance < best[0]:
                best = (distance, self.starts[i] + u * math.sqrt(length2))
        return best[1], best[0]


def _cross(o: Pt, a: Pt, b: Pt) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _segments_cross(p1: Pt, p2: Pt, q1: Pt, q2: Pt) -> bool:
    """Whether two segments properly cross (touching at an end does not count)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    return (d1 > 0) != (d2 > 0) and (d3 > 0) != (d4 > 0) and d1 != 0 and d2 != 0 and d3 != 0 and d4 != 0


def crossing_edges(polygon: tuple[Pt, ...]) -> tuple[int, int] | None:
    """The first two edges of a polygon that cross each other (a zone drawn as a bow tie, whose
    inside is not what it looks like), as the indices of their first points; None for a simple one."""
    n = len(polygon)
    edges = [(polygon[i], polygon[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue   # neighbours through the closing edge
            if _segments_cross(*edges[i], *edges[j]):
                return (i, j)
    return None
