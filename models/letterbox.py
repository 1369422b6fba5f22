"""Letterbox: resize a frame into the model's input keeping its aspect ratio, pad the rest, and map
boxes back to frame pixels."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How a frame of ``frame_w`` x ``frame_h`` was placed in the model input: scaled by ``sx``, ``sy``
    (equal up to rounding of the resized size) and shifted by ``left``, ``top`` pixels."""

    frame_w: int
    frame_h: int
    sx: float
    sy: float
    left: int
    top: int

    @classmethod
    def fit(cls, frame_w: int, frame_h: int, width: int, height: int) -> "Letterbox":
        r = min(width / frame_w, height / frame_h)
        new_w = max(1, min(width, int(round(frame_w * r))))
        new_h = max(1, min(height, int(round(frame_h * r))))
        left = (width - new_w) // 2
        top = (height - new_h) // 2
        return cls(frame_w, frame_h, new_w / frame_w, new_h / frame_h, left, top)

    @property
    def new_size(self) -> tuple[int, int]:
        return int(round(self.frame_w * self.sx)), int(round(self.frame_h * self.sy))

    def to_frame(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Boxes (N, 4) x1, y1, x2, y2 in input pixels -> frame pixels (new array)."""
        out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        out[:, 0::2] -= self.left
        out[:, 1::2] -= self.top
        out[:, 0::2] /= self.sx
        out[:, 1::2] /= self.sy
        if clip:
            np.clip(out[:, 0::2], 0, self.frame_w, out=out[:, 0::2])
            np.clip(out[:, 1::2], 0, self.frame_h, out=out[:, 1::2])
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) in frame pixels -> input pixels (the inverse of to_frame)."""
        out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        out[:, 0::2] = out[:, 0::2] * self.sx + self.left
        out[:, 1::2] = out[:, 1::2] * self.sy + self.top
        return out


def letterbox(frame: np.ndarray, width: int, height: int, pad_value: int = 114,
              out: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
    """The frame resized into a ``height`` x ``width`` canvas (uint8, same channels), and the mapping.
    ``out``, when given, is reused as the canvas."""
    h, w = frame.shape[:2]
    lb = Letterbox.fit(w, h, width, height)
    new_w, new_h = lb.new_size
    if out is None or out.shape[:2] != (height, width) or out.shape[2:] != frame.shape[2:]:
        out = np.empty((height, width) + frame.shape[2:], np.uint8)
    top, left = lb.top, lb.left
    out[:top] = pad_value
    out[top + new_h:] = pad_value
    out[top:top + new_h, :left] = pad_value
    out[top:top + new_h, left + new_w:] = pad_value
    if (new_w, new_h) == (w, h):
        out[top:top + new_h, left:left + new_w] = frame
    else:
        # bilinear, as the shipped model was trained (INTER_AREA costs ~10x more at 1280 -> 384)
        view = out[top:top + new_h, left:left + new_w]
        if view.flags.c_contiguous:     # full-width rows (a 16:9 frame into a 16:9 input): resize in place
            cv2.resize(frame, (new_w, new_h), dst=view, interpolation=cv2.INTER_LINEAR)
        else:
            view[:] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return out, lb
