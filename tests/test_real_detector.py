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
FIXTURE = ROOT / "tests" / "data" / "nanodet_reference.npz"


def test_onnx_model_agrees_with_tensorflow_js_within_1e_3():
    """The fixture holds rows of each output of the package's own graph run by TensorFlow.js on the
    fixture photograph (python -m models.make_nanodet --reference); the shipped ONNX model, run by
    onnxruntime on the same input, gives the same numbers."""
    import onnxruntime as ort

    from models.make_nanodet import fixture_input
    session = ort.InferenceSession(str(load_manifest(NANODET).model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, {session.get_inputs()[0].name: fixture_input()})))
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
