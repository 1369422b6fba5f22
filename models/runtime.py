"""Detector runtime: a manifest's ONNX model on onnxruntime's CPU provider, tuned for small gateways.

```python
from models.runtime import Detector

det = Detector("models/vehicles/manifest.yaml", threads=1)   # or Detector("vehicles")
for d in det.detect(frame_bgr):            # frame: H x W x 3 uint8 BGR, any size
    print(d.label, d.score, d.box)         # box: x1, y1, x2, y2 in frame pixels
det.last_timing                            # preprocess / infer / postprocess ms of the last call
```

At load the model file's sha256 is checked against the manifest, and one inference on a blank
input checks the outputs' shapes against the declared format: a wrong file or a wrong format is a
:class:`ModelError` that says what was expected, before the first frame.

Input: the model's own input says its layout and type: ``(1, 3, H, W)`` or ``(1, H, W, 3)``, float32
or float16 (made from the canvas with the manifest's rgb / scale / mean / std), or uint8 pixels (the
canvas handed over as it is, in the manifest's channel order; see ``models/pixel_input.py``).

Threads: ``threads`` is onnxruntime's intra-op pool (1 on a 2-core gateway that also runs the
agent; 2 when the detector may have both cores); inter-op is 1 and execution sequential, and the
pool's threads sleep instead of spinning between frames (``spin=False``) so an idle camera costs
no CPU. One Detector serves one thread at a time: give each camera worker its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from models.decoders import DECODERS, DecoderConfig, Decoded, check_outputs
from models.letterbox import Letterbox, letterbox
from models.manifest import Manifest, ModelError, load_manifest, verify_file
from models.nms import batched_nms

__all__ = ["Detection", "Detector", "ModelError", "Timing", "load_manifest", "Manifest", "resolve_manifest"]

MODELS_DIR = Path(__file__).resolve().parent


def shipped_models() -> list[str]:
    """Names of the models shipped in models/ (folders holding a manifest.yaml)."""
    return sorted(p.parent.name for p in MODELS_DIR.glob("*/manifest.yaml"))


def resolve_manifest(ref: str | Path) -> Path:
    """A config's model reference -> its manifest: a path to a manifest (.yaml/.yml) or to a folder
    holding manifest.yaml, or the name of a shipped model (``vehicles`` -> models/vehicles/manifest.yaml)."""
    p = Path(ref).expanduser()
    try:   # OSError: a name too long for a file name (ENAMETOOLONG) is no manifest either
        if p.is_file():
            return p
        if p.is_dir() and (p / "manifest.yaml").is_file():
            return p / "manifest.yaml"
        if isinstance(ref, str) and "/" not in ref and not ref.endswith((".yaml", ".yml")):
            shipped = MODELS_DIR / ref / "manifest.yaml"
            if shipped.is_file():
                return shipped
    except OSError:
        pass
    raise ModelError(f"model {str(ref)!r}: no such manifest file, and no shipped model of that name "
                     f"(shipped: {', '.join(shipped_models()) or 'none'})")


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]   # x1, y1, x2, y2 in frame pixels
    class_id: int = -1


@dataclass(frozen=True, slots=True)
class Timing:
    preprocess_ms: float = 0.0
    infer_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.infer_ms + self.postprocess_ms


def session_options(threads: int = 1, spin: bool = False) -> ort.SessionOptions:
    """Session options for a small CPU: a fixed intra-op pool, no inter-op parallelism."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class Detector:
    """Runs one manifest's model: letterbox, onnxruntime, decode, NMS, boxes in frame pixels."""

    def __init__(self, manifest_path: str | Path, threads: int = 1, spin: bool = False,
                 score_threshold: float | None = None) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.manifest: Manifest = load_manifest(resolve_manifest(manifest_path))
        m = self.manifest
        model_file = verify_file(m)
        # the labels reported: the model's own, or with a class map the rules' names for those it keeps
        self.labels = [m.class_map.get(label, label) for label in m.labels]
        self._reported = (np.array([label in m.class_map for label in m.labels]) if m.class_map else None)
        self.score_threshold = m.score_threshold if score_threshold is None else float(score_threshold)
        # each label's threshold: the manifest's per-class ones, unless the caller set one for all
        self.thresholds = [self.score_threshold if score_threshold is not None
                           else m.class_thresholds.get(label, m.score_threshold) for label in m.labels]
        self.decoder = DecoderConfig.from_manifest(m)
        self.decoder = DecoderConfig(**{**self.decoder.__dict__, "score_threshold": min(self.thresholds)})
        self._inv_std = (1.0 / np.asarray(m.input.std, np.float32)).reshape(1, 3, 1, 1)
        self._class_floor = np.asarray(self.thresholds, np.float32) if len(set(self.thresholds)) > 1 else None
        try:
            self.session = ort.InferenceSession(str(model_file), session_options(threads, spin),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:   # onnxruntime raises its own exception types
            raise ModelError(f"{m.path}: model file {model_file} cannot be loaded by onnxruntime: {exc}") from exc
        self._setup_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.last_timing = Timing()
        self._canvas: np.ndarray | None = None
        self._decode = DECODERS[m.format][1]
        self._checked_shapes: list[tuple[int, ...]] = []
        self._check_outputs()

    # -- load-time checks --
    def _setup_inputs(self) -> None:
        m = self.manifest
        inputs = self.session.get_inputs()
        image = [i for i in inputs if len(i.shape) == 4]
        if len(image) != 1:
            raise ModelError(f"{m.path}: expected one image input, (1, 3, H, W) or (1, H, W, 3); the model has "
                             + ", ".join(f"{i.name} {tuple(i.shape)}" for i in inputs))
        self.input_name = image[0].name
        shape = image[0].shape
        # channels last where the last dim is 3 and the second is not (models.pixel_input makes such)
        self.channels_last = shape[3] == 3 and shape[1] != 3
        h, w = m.input.height, m.input.width
        expected = (1, h, w, 3) if self.channels_last else (1, 3, h, w)
        for got, want in zip(shape, expected):
            if isinstance(got, int) and got != want:
                raise ModelError(f"{m.path}: the model's input {self.input_name} has shape {tuple(shape)}, but the "
                                 f"manifest's input is {m.input.width}x{m.input.height}: expected {expected}")
        kind = image[0].type
        self.input_dtype = np.uint8 if "uint8" in kind else (np.float16 if "float16" in kind else np.float32)
        if self.input_dtype == np.uint8:
            set_here = sorted({"scale", "mean", "std"} & m.input.model_fields_set)
            if set_here:
                raise ModelError(f"{m.path}: input.{set_here[0]}: the model's input {self.input_name} is uint8 pixels, "
                                 f"which the model converts itself; remove input.{', input.'.join(set_here)}")
        # RT-DETR exports take the original image size: feed the input size, so boxes come in input px
        self.extra_feeds: dict[str, np.ndarray] = {}
        for i in inputs:
            if i is image[0]:
                continue
            if len(i.shape) == 2 and ("size" in i.name.lower() or "shape" in i.name.lower()):
                dtype = np.int64 if "int64" in i.type else (np.int32 if "int32" in i.type else np.float32)
                self.extra_feeds[i.name] = np.array([[m.input.width, m.input.height]], dtype=dtype)
            else:
                raise ModelError(f"{m.path}: the model's input {i.name} {tuple(i.shape)} is not an image and not a "
                                 f"target size; only one image input (and RT-DETR's orig_target_sizes) is supported")

    def _check_outputs(self) -> None:
        m = self.manifest
        blank = np.full((m.input.height, m.input.width, 3), m.input.pad_value, np.uint8)
        blob = self._blob(blank)
        try:
            outs = self.session.run(None, {self.input_name: blob, **self.extra_feeds})
        except Exception as exc:
            raise ModelError(f"{m.path}: the model fails on a {m.input.width}x{m.input.height} input: {exc}") from exc
        try:
            check_outputs(self.decoder, [o.shape for o in outs], self.output_names)
        except ModelError as exc:
            raise ModelError(f"{m.path}: model {m.model_path.name}: output does not match its declared format: "
                             f"{exc}") from None
        self._checked_shapes = [o.shape for o in outs]

    # -- per frame --
    def _blob(self, canvas: np.ndarray) -> np.ndarray:
        spec = self.manifest.input
        if self.input_dtype == np.uint8:
            # the model converts its pixels itself (models/pixel_input.py): hand over the canvas
            img = canvas[..., ::-1] if spec.rgb else canvas
            img = img if self.channels_last else img.transpose(2, 0, 1)
            return np.ascontiguousarray(img[None])
        if self.input_dtype == np.float32 and not self.channels_last:
            # one C++ pass: (pixel - mean / scale) * scale, channel swap, HWC -> NCHW
            # (its mean is in the output's channel order, like the manifest's); a std, in place
            mean = tuple(float(m) / spec.scale for m in spec.mean)
            blob = cv2.dnn.blobFromImage(canvas, spec.scale, mean=mean, swapRB=spec.rgb)
            if spec.std != (1.0, 1.0, 1.0):
                blob *= self._inv_std
            return blob
        return self._blob_numpy(canvas)

    def _blob_numpy(self, canvas: np.ndarray) -> np.ndarray:
        spec = self.manifest.input
        img = canvas[..., ::-1] if spec.rgb else canvas
        x = img.astype(np.float32)
        x *= spec.scale
        if spec.mean != (0.0, 0.0, 0.0):
            x -= np.asarray(spec.mean, np.float32)
        if spec.std != (1.0, 1.0, 1.0):
            x /= np.asarray(spec.std, np.float32)
        x = x if self.channels_last else x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None], dtype=self.input_dtype)

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """The model's input tensor for a BGR frame, and its letterbox mapping. The tensor may share
        memory with the detector's canvas: it is valid until the next call."""
        if frame_bgr.ndim == 2:
            frame_bgr = np.repeat(frame_bgr[..., None], 3, axis=2)
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
        spec = self.manifest.input
        self._canvas, lb = letterbox(frame_bgr, spec.width, spec.height, spec.pad_value, out=self._canvas)
        return self._blob(self._canvas), lb

    def infer(self, blob: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: blob, **self.extra_feeds})

    def postprocess(self, outputs: list[np.ndarray], lb: Letterbox) -> list[Detection]:
        shapes = [o.shape for o in outputs]
        if shapes != self._checked_shapes:      # a model with dynamic outputs: check each new shape
            try:
                check_outputs(self.decoder, shapes, self.output_names)
            except ModelError as exc:
                raise ModelError(f"{self.manifest.path}: model {self.manifest.model_path.name}: {exc}") from None
            self._checked_shapes = shapes
        d: Decoded = self._decode(outputs, self.decoder, self.output_names)
        if len(d) and self._reported is not None:
            # a class map keeps only the labels it names (the nanodet decoder never proposes the
            # others; the other formats' decoders do)
            ids = d.class_ids
            keep = (ids >= 0) & (ids < len(self._reported))
            keep[keep] = self._reported[ids[keep]]
            d = Decoded(d.boxes[keep], d.scores[keep], d.class_ids[keep])
        if len(d) and self._class_floor is not None:
            # each class's own threshold, before NMS: a box under its own must not suppress others
            ids = np.clip(d.class_ids, 0, len(self._class_floor) - 1)
            keep = (d.scores >= self._class_floor[ids]) | (d.class_ids >= len(self._class_floor))
            d = Decoded(d.boxes[keep], d.scores[keep], d.class_ids[keep])
        m = self.manifest
        if len(d) and m.needs_nms:
            keep = batched_nms(d.boxes, d.scores, d.class_ids, m.nms_iou, m.max_detections, m.class_agnostic_nms)
            d = Decoded(d.boxes[keep], d.scores[keep], d.class_ids[keep])
        elif len(d) > m.max_detections:
            top = np.argsort(-d.scores, kind="stable")[: m.max_detections]
            d = Decoded(d.boxes[top], d.scores[top], d.class_ids[top])
        boxes = lb.to_frame(d.boxes)
        out: list[Detection] = []
        n = len(self.labels)
        for box, score, cid in zip(boxes.tolist(), d.scores.tolist(), d.class_ids.tolist()):
            if box[2] <= box[0] or box[3] <= box[1]:
                continue        # nothing left after clipping to the frame
            label = self.labels[cid] if 0 <= cid < n else f"class_{cid}"
            out.append(Detection(label, float(score), (box[0], box[1], box[2], box[3]), int(cid)))
        out.sort(key=lambda det: -det.score)
        return out

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Detections in a BGR frame, best first, boxes in frame pixels."""
        t0 = time.perf_counter()
        blob, lb = self.preprocess(frame_bgr)
        t1 = time.perf_counter()
        outputs = self.infer(blob)
        t2 = time.perf_counter()
        dets = self.postprocess(outputs, lb)
        t3 = time.perf_counter()
        self.last_timing = Timing((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return dets

    def __repr__(self) -> str:
        m = self.manifest
        return f"Detector({m.name or m.file}, format={m.format}, input={m.input.width}x{m.input.height})"
