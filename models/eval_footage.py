"""The real detector on real footage: precision and recall at IoU 0.5 on hand-annotated frames.

    .venv/bin/python -m models.eval_footage            # print the figures on the reported frames
    .venv/bin/python -m models.eval_footage --tune     # choose thresholds on the tuning frames, then
                                                        # measure and write both into the manifest

Footage: ``vtest.avi`` of Debian's ``opencv-doc`` (people walking on a campus road, a parked van
and car; ``bash install.sh --dev`` installs it), annotated by hand in
``tests/data/vtest_annotations.json``. Its frames are split: thresholds are chosen on the
``tune`` frames only, and the figures recorded are those of the ``report`` frames, which no
choice saw. Nothing is trained here.

Counting: people at least 40 px tall (``MIN_HEIGHT``) and the parked vehicles are the ground
truth. Detections are matched greedily, best score first, to an unmatched box of their class at
IoU >= 0.5. An unmatched detection is a false one unless it lies mostly (>= 50 % of its area) in
an ``ignore`` box (a person half hidden or cut by the frame's edge) or is itself under 40 px tall
(a far-off person nobody annotated). Vehicles are also counted whatever their label (a van that
the model calls a truck was still found).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.nms import iou_matrix

ROOT = Path(__file__).resolve().parent.parent
ANNOTATIONS = ROOT / "tests" / "data" / "vtest_annotations.json"
MANIFEST = ROOT / "models" / "nanodet" / "manifest.yaml"
FOOTAGE_DIRS = ("/usr/share/doc/opencv-doc/examples/data", "/usr/share/opencv4/samples/data")
MIN_HEIGHT = 40
VEHICLES = ("car", "bus", "truck")


def footage(name: str = "vtest.avi") -> Path | None:
    """The sample footage, where opencv-doc (or EDGE_AGENT_FOOTAGE, a folder) has it."""
    for folder in filter(None, (os.environ.get("EDGE_AGENT_FOOTAGE"), *FOOTAGE_DIRS)):
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def open_without_stream_options(path: Path):
    """The file opened without the camera reader's FFmpeg options (drivers/camera/reader.py sets
    them for the whole process): with ``fflags;nobuffer``, right for a live RTSP stream, FFmpeg
    starts this MS-MPEG4 file without its key frame and its first seconds decode grey, only the
    moving parts drawn."""
    import cv2
    saved = os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
    try:
        return cv2.VideoCapture(str(path))
    finally:
        if saved is not None:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = saved


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    cap = open_without_stream_options(path)
    out, index, wanted = {}, 0, set(indices)
    try:
        while len(out) < len(wanted):
            ok, frame = cap.read()
            if not ok:
                break
            if index in wanted:
                out[index] = frame
            index += 1
    finally:
        cap.release()
    return out


def iou(a, b) -> float:
    """IoU of two (x1, y1, x2, y2) boxes, by the runtime's own NMS arithmetic."""
    return float(iou_matrix([a], [b])[0, 0])


def inside(det, box) -> float:
    """The fraction of det's area inside box."""
    iw = min(det[2], box[2]) - max(det[0], box[0])
    ih = min(det[3], box[3]) - max(det[1], box[1])
    area = (det[2] - det[0]) * (det[3] - det[1])
    return 0.0 if iw <= 0 or ih <= 0 or area <= 0 else iw * ih / area


@dataclass
class Count:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    misses: list = field(default_factory=list)
    false: list = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def figures(self) -> dict:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "ground_truth": self.tp + self.fn, "true_positives": self.tp, "false_positives": self.fp}


def match(dets: list[tuple[str, float, tuple]], truth: list[tuple], ignore: list[tuple], count: Count,
          frame: int) -> None:
    """Greedy matching of one class's detections (label, score, box) to its ground-truth boxes."""
    used = [False] * len(truth)
    for _, score, box in sorted(dets, key=lambda d: -d[1]):
        best, best_iou = -1, 0.5
        for k, gt in enumerate(truth):
            o = iou(box, gt)
            if not used[k] and o >= best_iou:
                best, best_iou = k, o
        if best >= 0:
            used[best] = True
            count.tp += 1
        elif box[3] - box[1] < MIN_HEIGHT or any(inside(box, ig) >= 0.5 for ig in ignore):
            continue
        else:
            count.fp += 1
            count.false.append((frame, round(score, 3), [round(v) for v in box]))
    for k, gt in enumerate(truth):
        if not used[k]:
            count.fn += 1
            count.misses.append((frame, gt))


def evaluate(detections: dict[int, list[tuple[str, float, tuple]]], annotations: dict,
             frames: list[int]) -> dict[str, Count]:
    """Counts per class (person, car) and for vehicles of any label, over ``frames``."""
    counts = {"person": Count(), "car": Count(), "vehicle": Count()}
    vehicles = [tuple(b) for b in annotations["vehicles"]["car"]]
    for f in frames:
        ann = annotations["frames"][str(f)]
        people = [tuple(b) for b in ann["person"]]
        ignore = [tuple(b) for b in ann.get("ignore", [])]
        ignore += [b for b in people if b[3] - b[1] < MIN_HEIGHT]
        people = [b for b in people if b[3] - b[1] >= MIN_HEIGHT]
        dets = detections[f]
        match([d for d in dets if d[0] == "person"], people, ignore, counts["person"], f)
        match([d for d in dets if d[0] == "car"], vehicles, [], counts["car"], f)
        match([d for d in dets if d[0] in VEHICLES], vehicles, [], counts["vehicle"], f)
    return counts


def detect_all(detector, frames: dict[int, np.ndarray], thresholds: dict[str, float], default: float):
    """Each frame's detections as (label, score, box), each label kept at its own threshold."""
    out = {}
    for index, frame in frames.items():
        out[index] = [(d.label, d.score, d.box) for d in detector.detect(frame)
                      if d.score >= thresholds.get(d.label, default)]
    return out


def load_annotations() -> dict:
    return json.loads(ANNOTATIONS.read_text())


def tune(manifest_path: Path, frames: dict[int, np.ndarray], annotations: dict) -> dict:
    """NMS IoU and thresholds with the best F1 on the tuning frames: the NMS IoU best for people,
    then for people and for vehicles the middle of the thresholds that reach their best F1 (a
    plateau's middle, not its edge, where a few frames would put it)."""
    from models.runtime import Detector
    tune_frames = annotations["tune"]
    grid = [round(float(t), 2) for t in np.arange(0.25, 0.751, 0.05)]

    def f1(c: Count) -> float:
        return round(2 * c.precision * c.recall / max(c.precision + c.recall, 1e-9), 4)

    results = {}
    for nms_iou in (0.4, 0.5, 0.6):
        det = Detector(manifest_path, threads=2, score_threshold=min(grid))
        det.manifest = det.manifest.model_copy(update={"nms_iou": nms_iou})
        raw = {i: [(d.label, d.score, d.box) for d in det.detect(frames[i])] for i in tune_frames}
        per = {t: evaluate({i: [d for d in ds if d[1] >= t] for i, ds in raw.items()}, annotations, tune_frames)
               for t in grid}
        results[nms_iou] = ({t: f1(c["person"]) for t, c in per.items()}, {t: f1(c["vehicle"]) for t, c in per.items()})
    nms_iou = max(results, key=lambda k: (max(results[k][0].values()), -abs(k - 0.5)))
    people, vehicles = results[nms_iou]

    def middle(scores: dict[float, float]) -> float:
        top = max(scores.values())
        best = [t for t, v in scores.items() if v == top]
        return best[len(best) // 2]

    return {"nms_iou": nms_iou, "person": middle(people), "vehicle": middle(vehicles),
            "f1_person": max(people.values()), "f1_vehicle": max(vehicles.values()),
            "person_f1_by_threshold": people, "vehicle_f1_by_threshold": vehicles}


def main(argv: list[str] | None = None) -> int:
    import yaml

    from models.runtime import Detector
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune", action="store_true", help="choose thresholds on the tuning frames and write the "
                                                        "manifest's thresholds and accuracy")
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    args = ap.parse_args(argv)
    path = footage()
    if path is None:
        print("vtest.avi not found: install Debian's opencv-doc (bash install.sh --dev) or set EDGE_AGENT_FOOTAGE")
        return 2
    annotations = load_annotations()
    frames = read_frames(path, annotations["tune"] + annotations["report"])
    doc = yaml.safe_load(args.manifest.read_text())
    if args.tune:
        best = tune(args.manifest, frames, annotations)
        print("tuned:", best)
        doc["score_threshold"] = best["vehicle"]
        doc["class_thresholds"] = {"person": best["person"]} if best["person"] != best["vehicle"] else {}
        doc["nms_iou"] = best["nms_iou"]
        args.manifest.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110))
    det = Detector(args.manifest, threads=2)
    report = annotations["report"]
    dets = {i: [(d.label, d.score, d.box) for d in det.detect(frames[i])] for i in report}
    counts = evaluate(dets, annotations, report)
    for name, c in counts.items():
        print(f"{name:8s} P {c.precision:.3f} R {c.recall:.3f}  ({c.tp} hits, {c.fp} false, {c.fn} missed)")
        for miss in c.misses:
            print("   missed", miss)
        for false in c.false:
            print("   false ", false)
    if args.tune:
        doc = yaml.safe_load(args.manifest.read_text())
        doc["accuracy"] = {
            "footage": "vtest.avi of Debian opencv-doc 4.6.0 (768 x 576, people on a campus road, a parked "
                       "van and car)",
            "annotations": "tests/data/vtest_annotations.json (by hand)",
            "frames_tuned": annotations["tune"], "frames_reported": report, "iou": 0.5,
            "min_person_height_px": MIN_HEIGHT,
            "thresholds_from": "best F1 on the tuning frames only (persons, then vehicles), NMS IoU too",
            "per_class": {"person": counts["person"].figures(), "car": counts["car"].figures(),
                          "vehicle_any_label": counts["vehicle"].figures()},
            "command": "python -m models.eval_footage --tune",
        }
        args.manifest.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110))
        from models.manifest import load_manifest
        load_manifest(args.manifest)   # still a valid manifest
        print(f"wrote thresholds and accuracy into {args.manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
