"""Decoders for the common detector output layouts (vectorised numpy).

Every decoder turns the model's raw outputs into candidate boxes ``(N, 4)`` x1, y1, x2, y2 in
**model input pixels**, scores ``(N,)`` and class ids ``(N,)``, already filtered by the score
threshold. NMS (for the formats that need it) and the mapping back to frame pixels are the
runtime's job. ``C`` is the number of labels in the manifest.

| format  | outputs | layout |
| ------- | ------- | ------ |
| yolov5  | ``(1, N, 5+C)`` | cx, cy, w, h (input px), objectness, C class scores (sigmoided); score = obj * cls |
| yolov8  | ``(1, 4+C, N)`` (or ``(1, N, 4+C)``) | cx, cy, w, h (input px), C class scores; no objectness (also YOLO11) |
| yolox   | ``(1, N, 5+C)``, N = sum over strides of (H/s)(W/s) | raw grids: x, y offsets in cells, log w, log h, objectness, C class scores (sigmoided), grids in stride order, row-major |
| nx6     | ``(1, N, 6)`` or ``(N, 6)`` | x1, y1, x2, y2 (input px), score, class id: end-to-end, NMS done in the model |
| rtdetr  | ``labels (1, N)``, ``boxes (1, N, 4)``, ``scores (1, N)`` | boxes x1, y1, x2, y2 in input px (the runtime feeds ``orig_target_sizes`` = input size when the model asks for it) |
| rtdetr  | ``(1, N, 4+C)`` | cx, cy, w, h normalised to 0..1, C class scores (Ultralytics RT-DETR export) |
| nanodet | per stride s: ``(1, n_s, C)`` and ``(1, n_s, 4 (R+1))``, n_s = (H/s)(W/s) | NanoDet's GFL head: class scores (sigmoided) and, per side, a distribution over 0..R cells (softmax; its mean times the stride is the distance from the cell centre to the left, top, right, bottom edge), cells row-major |

For nanodet the outputs are matched to the strides by their shapes (in any order and with any
names); cell centres are at (col + 0.5, row + 0.5) * stride, as NanoDet's original GFL head has them.

``DecoderConfig.classes``, where set, limits the candidates to those class ids (a COCO model
whose class map keeps 6 of its 80 labels): a box is scored by its best class among them, so a
van that is a little more "train" than "truck" is still a truck.

For rtdetr the manifest's ``box_format`` (xyxy | cxcywh) and ``normalized`` override the defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from models.manifest import Manifest, ModelError

Shape = tuple[object, ...]


@dataclass(frozen=True)
class DecoderConfig:
    format: str
    num_classes: int
    input_w: int
    input_h: int
    score_threshold: float = 0.25
    strides: tuple[int, ...] = (8, 16, 32)
    box_format: str | None = None
    normalized: bool | None = None
    classes: tuple[int, ...] | None = None   # only these class ids are candidates (None: all)

    @classmethod
    def from_manifest(cls, m: Manifest) -> "DecoderConfig":
        classes = tuple(m.labels.index(label) for label in m.class_map) if m.class_map else None
        return cls(format=m.format, num_classes=len(m.labels), input_w=m.input.width, input_h=m.input.height,
                   score_threshold=m.score_threshold, strides=tuple(m.strides), box_format=m.box_format,
                   normalized=m.normalized, classes=classes)


@dataclass
class Decoded:
    boxes: np.ndarray      # (N, 4) float32, x1 y1 x2 y2, input pixels
    scores: np.ndarray     # (N,) float32
    class_ids: np.ndarray  # (N,) int64

    @classmethod
    def empty(cls) -> "Decoded":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _fmt(shape: Sequence[object]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _dims_match(shape: Shape, expected: Sequence[int | None]) -> bool:
    """True when the shape has the expected rank and every known dim equals the expected one
    (None in expected: any; a symbolic dim in shape (str / None): accepted)."""
    if len(shape) != len(expected):
        return False
    for d, e in zip(shape, expected):
        if e is None or not isinstance(d, int):
            continue
        if d != e:
            return False
    return True


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b, dtype=np.float32)
    half = b[:, 2:4] * 0.5
    out[:, 0:2] = b[:, 0:2] - half
    out[:, 2:4] = b[:, 0:2] + half
    return out


# -- yolov5 --

def check_yolov5(shapes: Sequence[Shape], names: Sequence[str], cfg: DecoderConfig) -> None:
    c = cfg.num_classes
    if not shapes or not _dims_match(shapes[0], (1, None, 5 + c)):
        raise ModelError(f"format yolov5 with {c} labels expects an output of shape (1, N, {5 + c}) "
                         f"[cx, cy, w, h, objectness, {c} class scores]; the model gives "
                         f"{', '.join(_fmt(s) for s in shapes) or 'no output'}")


def decode_yolov5(outputs: Sequence[np.ndarray], cfg: DecoderConfig, names: Sequence[str] = ()) -> Decoded:
    p = outputs[0][0]
    obj = p[:, 4]
    p = p[obj > cfg.score_threshold]
    if not p.shape[0]:
        return Decoded.empty()
    cls_scores = p[:, 5:] * p[:, 4:5]
    ids = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(ids.shape[0]), ids]
    keep = scores > cfg.score_threshold
    return Decoded(_cxcywh_to_xyxy(p[keep, :4]), scores[keep].astype(np.float32), ids[keep].astype(np.int64))


# -- yolov8 / yolo11 --

def check_yolov8(shapes: Sequence[Shape], names: Sequence[str], cfg: DecoderConfig) -> None:
    c = cfg.num_classes
    if not shapes or not (_dims_match(shapes[0], (1, 4 + c, None)) or _dims_match(shapes[0], (1, None, 4 + c))):
        raise ModelError(f"format yolov8 with {c} labels expects an output of shape (1, {4 + c}, N) "
                         f"[cx, cy, w, h, {c} class scores] (or its transpose (1, N, {4 + c})); the model gives "
                         f"{', '.join(_fmt(s) for s in shapes) or 'no output'}")


def decode_yolov8(outputs: Sequence[np.ndarray], cfg: DecoderConfig, names: Sequence[str] = ()) -> Decoded:
    out = outputs[0][0]
    c = cfg.num_classes
    if out.shape[0] == 4 + c:          # channels first: (4 + C, N), the usual export
        keep = np.flatnonzero(out[4:].max(axis=0) > cfg.score_threshold)
        kept = out[:, keep].T           # (K, 4 + C): one gather, then work on a small array
        ids = kept[:, 4:].argmax(axis=1)
        scores = kept[np.arange(keep.size), 4 + ids]
        boxes = kept[:, :4]
    else:                               # (N, 4 + C)
        cls_scores = out[:, 4:]
        keep = np.flatnonzero(cls_scores.max(axis=1) > cfg.score_threshold)
        kept = cls_scores[keep]
        ids = kept.argmax(axis=1)
        scores = kept[np.arange(keep.size), ids]
        boxes = out[keep, :4]
    return Decoded(_cxcywh_to_xyxy(boxes), scores.astype(np.float32), ids.astype(np.int64))


# -- yolox (raw grids) --

@lru_cache(maxsize=16)
def yolox_grids(width: int, height: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Cell origins (N, 2) and the stride of each row (N, 1) for the grids in order."""
    grids, st = [], []
    for s in strides:
        gy, gx = np.meshgrid(np.arange(height // s), np.arange(width // s), indexing="ij")
        grids.append(np.stack([gx, gy], axis=-1).reshape(-1, 2))
        st.append(np.full((grids[-1].shape[0], 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(st).astype(np.float32)


def check_yolox(shapes: Sequence[Shape], names: Sequence[str], cfg: DecoderConfig) -> None:
    c = cfg.num_classes
    n = sum((cfg.input_h // s) * (cfg.input_w // s) for s in cfg.strides)
    if not shapes or not _dims_match(shapes[0], (1, n, 5 + c)):
        raise ModelError(f"format yolox with {c} labels, input {cfg.input_w}x{cfg.input_h} and strides "
                         f"{list(cfg.strides)} expects an output of shape (1, {n}, {5 + c}) [raw grid x, y, "
                         f"log w, log h, objectness, {c} class scores]; the model gives "
                         f"{', '.join(_fmt(s) for s in shapes) or 'no output'}")


def decode_yolox(outputs: Sequence[np.ndarray], cfg: DecoderConfig, names: Sequence[str] = ()) -> Decoded:
    p = outputs[0][0]
    grid, stride = yolox_grids(cfg.input_w, cfg.input_h, tuple(cfg.strides))
    cls_scores = p[:, 5:] * p[:, 4:5]
    ids = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(ids.shape[0]), ids]
    keep = np.flatnonzero(scores > cfg.score_threshold)
    if not keep.size:
        return Decoded.empty()
    q = p[keep]
    xy = (q[:, 0:2] + grid[keep]) * stride[keep]
    wh = np.exp(np.clip(q[:, 2:4], -20.0, 20.0)) * stride[keep]
    return Decoded(_cxcywh_to_xyxy(np.concatenate([xy, wh], axis=1)), scores[keep].astype(np.float32),
                   ids[keep].astype(np.int64))


# -- end-to-end N x 6 --

def check_nx6(shapes: Sequence[Shape], names: Sequence[str], cfg: DecoderConfig) -> None:
    if not shapes or not (_dims_match(shapes[0], (1, None, 6)) or _dims_match(shapes[0], (None, 6))):
        raise ModelError("format nx6 expects an output of shape (1, N, 6) or (N, 6) [x1, y1, x2, y2, score, "
                         f"class id]; the model gives {', '.join(_fmt(s) for s in shapes) or 'no output'}")


def decode_nx6(outputs: Sequence[np.ndarray], cfg: DecoderConfig, names: Sequence[str] = ()) -> Decoded:
    p = outputs[0]
    p = p.reshape(-1, 6)
    p = p[p[:, 4] > cfg.score_threshold]
    return Decoded(p[:, :4].astype(np.float32), p[:, 4].astype(np.float32), p[:, 5].round().astype(np.int64))


# -- RT-DETR style --

def _rtdetr_roles(shapes: Sequence[Shape], names: Sequence[str]) -> dict[str, int] | None:
    """Which output is labels, boxes, scores (by name, else by shape), for the 3-output layout."""
    if len(shapes) < 3:
        return None
    roles: dict[str, int] = {}
    for i, n in enumerate(names):
        low = n.lower()
        for role in ("label", "box", "score"):
            if role in low and role not in roles:
                roles[role] = i
    if len(roles) == 3:
        return roles
    ranks = [len(s) for s in shapes[:3]]
    if ranks.count(3) == 1 and ranks.count(2) == 2:   # labels and scores by order otherwise
        b = ranks.index(3)
        two = [i for i in range(3) if i != b]
        return {"label": two[0], "box": b, "score": two[1]}
    return None


def check_rtdetr(shapes: Sequence[Shape], names: Sequence[str], cfg: DecoderConfig) -> None:
    c = cfg.num_classes
    roles = _rtdetr_roles(shapes, names)
    if roles is not None:
        b, lab, sc = shapes[roles["box"]], shapes[roles["label"]], shapes[roles["score"]]
        if _dims_match(b, (1, None, 4)) and _dims_match(lab, (1, None)) and _dims_match(sc, (1, None)):
            return
    elif shapes and _dims_match(shapes[0], (1, None, 4 + c)):
        return
    raise ModelError(f"format rtdetr expects outputs labels (1, N), boxes (1, N, 4), scores (1, N), or one output "
                     f"(1, N, {4 + c}) [cx, cy, w, h normalised, {c} class scores]; the model gives "
                     + (", ".join(f"{n} {_fmt(s)}" for n, s in zip(names, shapes)) if names else
                        ", ".join(_fmt(s) for s in shapes) or "no output"))


def decode_rtdetr(outputs: Sequence[np.ndarray], cfg: DecoderConfig, names: Sequence[str] = ()) -> Decoded:
    roles = _rtdetr_roles([o.shape for o in outputs], list(names) or [""] * len(outputs))
    if roles is not None:
        boxes = outputs[roles["box"]][0].astype(np.float32)
        scores = outputs[roles["score"]][0].astype(np.float32)
        ids = outputs[roles["label"]][0].astype(np.int64)
        box_format, normalized = cfg.box_format or "xyxy", bool(cfg.normalized) if cfg.normalized is not None else False
    else:
        out = outputs[0][0]
        cls_scores = out[:, 4:]
        ids = cls_scores.argmax(axis=1)
        scores = cls_scores[np.arange(ids.shape[0]), ids].astype(np.float32)
        boxes = out[:, :4].astype(np.float32)
        box_format = cfg.box_format or "cxcywh"
        normalized = cfg.normalized if cfg.normalized is not None else True
    keep = scores > cfg.score_threshold
    boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
    if box_format == "cxcywh":
        boxes = _cxcywh_to_xyxy(boxes)
    if normalized:
        boxes = boxes * np.array([cfg.input_w, cfg.input_h, cfg.input_w, cfg.input_h], np.float32)
    return Decoded(boxes.astype(np.float32), scores, ids)


# -- NanoDet (GFL head, one class and one box-distribution output per stride) --

def _nanodet_roles(shapes: Sequence[Shape], cfg: DecoderConfig) -> list[tuple[int, int]] | None:
    """For each stride, the index of its class-score output and of its box-distribution output."""
    c = cfg.num_classes
    roles = []
    for s in cfg.strides:
        n = (cfg.input_h // s) * (cfg.input_w // s)
        cls = [i for i, sh in enumerate(shapes) if _dims_match(sh, (1, n, c))]
        reg = [i for i, sh in enumerate(shapes) if len(sh) == 3 and _dims_match(sh, (1, n, None))
               and isinstance(sh[2], int) and sh[2] != c and sh[2] % 4 == 0 and sh[2] >= 8]
        if len(cls) != 1 or len(reg) != 1:
            return None
        roles.append((cls[0], reg[0]))
    return roles


def check_nanodet(shapes: Sequence[Shape], names: Sequence[str], cfg: DecoderConfig) -> None:
    if len(shapes) == 2 * len(cfg.strides) and _nanodet_roles(shapes, cfg) is not None:
        return
    c = cfg.num_classes
    want = ", ".join(f"(1, {(cfg.input_h // s) * (cfg.input_w // s)}, {c}) and (1, "
                     f"{(cfg.input_h // s) * (cfg.input_w // s)}, 4(R+1))" for s in cfg.strides)
    raise ModelError(f"format nanodet with {c} labels, input {cfg.input_w}x{cfg.input_h} and strides "
                     f"{list(cfg.strides)} expects {2 * len(cfg.strides)} outputs, a class-score and a box-"
                     f"distribution one per stride: {want}; the model gives "
                     f"{', '.join(_fmt(s) for s in shapes) or 'no output'}")


@lru_cache(maxsize=16)
def _nanodet_centres(width: int, height: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    grid, stride = yolox_grids(width, height, strides)
    return (grid + 0.5) * stride, stride


def decode_nanodet(outputs: Sequence[np.ndarray], cfg: DecoderConfig, names: Sequence[str] = ()) -> Decoded:
    roles = _nanodet_roles([o.shape for o in outputs], cfg)
    if roles is None:
        check_nanodet([o.shape for o in outputs], names, cfg)
    assert roles is not None
    cols = np.asarray(cfg.classes, np.int64) if cfg.classes is not None else None
    # the class map's columns only, taken per output before joining them (6 of 80: a small copy)
    scored = np.concatenate([outputs[c][0][:, cols] if cols is not None else outputs[c][0] for c, _ in roles])
    best = scored.max(axis=1)
    keep = np.flatnonzero(best > cfg.score_threshold)
    if not keep.size:
        return Decoded.empty()
    picked = scored[keep].argmax(axis=1)
    ids = cols[picked] if cols is not None else picked
    scores = best[keep]
    # the box distributions of the kept cells only (a few dozen of several thousand), output by
    # output: keep is sorted, so each output's cells are one run of it
    parts, start = [], 0
    for _, r in roles:
        n = outputs[r].shape[1]
        lo, hi = np.searchsorted(keep, (start, start + n))
        parts.append(outputs[r][0][keep[lo:hi] - start])
        start += n
    reg = np.concatenate(parts)                                              # (K, 4 (R+1))
    bins = reg.shape[1] // 4
    reg = reg.reshape(-1, 4, bins)
    reg = np.exp(reg - reg.max(axis=2, keepdims=True))
    dist = (reg / reg.sum(axis=2, keepdims=True)) @ np.arange(bins, dtype=np.float32)   # (K, 4) in cells
    centre, stride = _nanodet_centres(cfg.input_w, cfg.input_h, tuple(cfg.strides))
    c, st = centre[keep], stride[keep]
    boxes = np.concatenate([c - dist[:, :2] * st, c + dist[:, 2:] * st], axis=1)
    return Decoded(boxes.astype(np.float32), scores.astype(np.float32), ids.astype(np.int64))


Checker = Callable[[Sequence[Shape], Sequence[str], DecoderConfig], None]
DecodeFn = Callable[[Sequence[np.ndarray], DecoderConfig, Sequence[str]], Decoded]

DECODERS: dict[str, tuple[Checker, DecodeFn]] = {
    "yolov5": (check_yolov5, decode_yolov5),
    "yolov8": (check_yolov8, decode_yolov8),
    "yolox": (check_yolox, decode_yolox),
    "nx6": (check_nx6, decode_nx6),
    "rtdetr": (check_rtdetr, decode_rtdetr),
    "nanodet": (check_nanodet, decode_nanodet),
}


def check_outputs(cfg: DecoderConfig, shapes: Sequence[Shape], names: Sequence[str] = ()) -> None:
    DECODERS[cfg.format][0](shapes, names, cfg)


def decode(cfg: DecoderConfig, outputs: Sequence[np.ndarray], names: Sequence[str] = ()) -> Decoded:
    """Check the outputs' shapes against the format, then decode them."""
    check, fn = DECODERS[cfg.format]
    check([o.shape for o in outputs], names, cfg)
    return fn(outputs, cfg, names)
