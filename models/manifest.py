"""Model manifests: one YAML file beside each ONNX model, validated at load.

```yaml
name: vehicles
file: vehicles.onnx                 # relative to this manifest
sha256: 3f0c...                     # of the file; checked before the model is opened
input: {width: 320, height: 320}    # letterbox target; rgb, scale, mean, std, pad_value optional
labels: [car, bus, truck]
format: yolov8                      # yolov5 | yolov8 | yolox | nx6 | rtdetr | nanodet
score_threshold: 0.35
class_thresholds: {person: 0.5}     # optional: a label's own threshold
class_map: {motorcycle: motorcycle}  # optional: model label -> the rules' label; only these are reported
nms_iou: 0.5
licence: Apache-2.0
trained_on: synthetic junction scenes from tests/hardware_sim/junction.py
source: {package: ..., version: ...} # optional, free-form: where the weights came from
accuracy: {map50: 0.91, ...}        # free-form figures, recorded by whoever trained it
```

A bad manifest raises :class:`ModelError` naming the file, the key path and what was expected.
This module imports neither onnxruntime nor OpenCV.
"""

from __future__ import annotations

import hashlib
import reprlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from agent.core.config import Strict

FORMATS = ("yolov5", "yolov8", "yolox", "nx6", "rtdetr", "nanodet")
Format = Literal["yolov5", "yolov8", "yolox", "nx6", "rtdetr", "nanodet"]
# the labels the camera's rules know (a class map puts a model's own labels onto these)
ROAD_USERS = ("car", "bus", "truck", "motorcycle", "bicycle", "person")


class ModelError(Exception):
    """A model or its manifest cannot be used: the message says which file and why."""


class InputSpec(Strict):
    width: int = Field(gt=0, le=4096)
    height: int = Field(gt=0, le=4096)
    rgb: bool = True                    # channel order the model wants (frames arrive BGR)
    scale: float = 1 / 255              # pixel * scale, then (x - mean) / std
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_value: int = Field(default=114, ge=0, le=255)


class Manifest(Strict):
    name: str | None = None
    file: str
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    input: InputSpec
    labels: list[str] = Field(min_length=1)
    format: Format
    score_threshold: float = Field(default=0.25, ge=0.0, le=1.0)
    # a class's own threshold, where the rules after the detector want another balance (e.g. a
    # person missed costs more than a person imagined, which the zone rules filter out)
    class_thresholds: dict[str, float] = Field(default_factory=dict)
    # model label -> the rules' label (a COCO model's 80 labels onto car, bus, truck ...): where
    # set, the detector reports only the labels it names, under their new names
    class_map: dict[str, str] = Field(default_factory=dict)
    nms_iou: float = Field(default=0.45, gt=0.0, le=1.0)
    max_detections: int = Field(default=300, gt=0)
    class_agnostic_nms: bool = False
    strides: tuple[int, ...] = (8, 16, 32)   # yolox: the grids' strides, in output order
    # rtdetr: boxes are cx, cy, w, h (or x1, y1, x2, y2), normalised to 0..1 (or in input pixels)
    box_format: Literal["xyxy", "cxcywh"] | None = None
    normalized: bool | None = None
    licence: str
    trained_on: str
    source: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    notes: str | None = None

    # set by load_manifest: where the manifest was read from
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        return v

    @model_validator(mode="after")
    def _class_thresholds(self) -> "Manifest":
        for label, value in self.class_thresholds.items():
            if label not in self.labels:
                raise ValueError(f"class_thresholds: {label!r} is not one of the labels {self.labels}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"class_thresholds: {label}: {value} is not between 0 and 1")
        return self

    @model_validator(mode="after")
    def _class_map(self) -> "Manifest":
        for label, to in self.class_map.items():
            if label not in self.labels:
                raise ValueError(f"class_map: {label!r} is not one of the model's labels; expected one of "
                                 f"{reprlib.repr(self.labels)}")
            if to not in ROAD_USERS:
                raise ValueError(f"class_map: {label!r} -> {to!r}: expected one of the rules' labels {list(ROAD_USERS)}")
        return self

    @model_validator(mode="after")
    def _strides(self) -> "Manifest":
        if self.format in ("yolox", "nanodet"):
            for s in self.strides:
                if s <= 0 or self.input.width % s or self.input.height % s:
                    raise ValueError(f"{self.format} stride {s} must divide the input size "
                                     f"{self.input.width}x{self.input.height}")
        return self

    @property
    def model_path(self) -> Path:
        base = self.path.parent if self.path is not None else Path.cwd()
        return (base / self.file).resolve()

    @property
    def needs_nms(self) -> bool:
        return self.format in ("yolov5", "yolov8", "yolox", "nanodet")


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest. Raises ModelError naming the file, key path and expectation."""
    from agent.core.config import ConfigError, read_yaml   # the config's YAML reader and its limits

    path = Path(path)
    try:
        path.stat()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model manifest ({exc.strerror})") from exc
    try:
        data, _ = read_yaml(path, "a manifest")
    except ConfigError as exc:
        raise ModelError("; ".join(exc.problems)) from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a mapping of manifest keys, found {type(data).__name__}")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = [f"{path}: {_key_path(e['loc'])}: {e['msg']}" + (
            f" (got {reprlib.repr(e['input'])})" if e["type"] not in ("missing",) and not isinstance(e["input"], dict)
            else "") for e in exc.errors()]
        raise ModelError("invalid model manifest:\n  " + "\n  ".join(problems)) from None
    return manifest.model_copy(update={"path": path})


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(manifest: Manifest) -> Path:
    """The model file's path, after checking that it exists and its sha256 is the declared one."""
    where = manifest.path or "manifest"
    model = manifest.model_path
    if not model.is_file():
        raise ModelError(f"{where}: model file {model} does not exist")
    found = sha256_file(model)
    if found.lower() != manifest.sha256.lower():
        raise ModelError(f"{where}: model file {model} has sha256 {found}, but the manifest expects "
                         f"{manifest.sha256.lower()}: the file is corrupt, truncated or a different model "
                         f"(update 'sha256' only if you meant to replace the model)")
    return model
