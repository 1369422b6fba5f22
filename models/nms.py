"""Non-maximum suppression: greedy, per class by coordinate offset. OpenCV's C++ NMSBoxes when
OpenCV is there (~3x faster on a hundred boxes), the same algorithm in numpy otherwise."""

from __future__ import annotations

import numpy as np

try:
    import cv2
except ImportError:  # pragma: no cover - OpenCV is a dependency; numpy keeps working without it
    cv2 = None


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with many (N, 4), all x1, y1, x2, y2."""
    xx1 = np.maximum(box[0], boxes[:, 0])
    yy1 = np.maximum(box[1], boxes[:, 1])
    xx2 = np.minimum(box[2], boxes[:, 2])
    yy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4): (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None,
        use_cv2: bool = True) -> np.ndarray:
    """Indices of the boxes kept, best score first."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if use_cv2 and cv2 is not None and boxes.shape[0]:
        xywh = np.empty_like(boxes, dtype=np.float64)
        xywh[:, :2] = boxes[:, :2]
        xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
        # (OpenCV's top_k cuts the input, not the output: truncate here; scores of 0 are dropped)
        keep = cv2.dnn.NMSBoxes(xywh, np.asarray(scores, np.float32), 0.0, float(iou_threshold))
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        return keep[:max_keep] if max_keep else keep
    return nms_numpy(boxes, scores, iou_threshold, max_keep)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Indices of the boxes kept, best score first (pure numpy)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[i], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
                max_keep: int | None = None, agnostic: bool = False, use_cv2: bool = True) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other (unless agnostic)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if agnostic:
        return nms(boxes, scores, iou_threshold, max_keep, use_cv2)
    # shift each class into its own region of the plane
    offset = (float(np.abs(boxes).max()) + 1.0) * 2.0
    shifted = boxes + (np.asarray(class_ids, dtype=np.float32) * offset)[:, None]
    return nms(shifted, scores, iou_threshold, max_keep, use_cv2)
