"""Raw pixels in: move a float model's input conversion into its ONNX graph.

A detector exported from PyTorch takes a (1, 3, H, W) float32 tensor, RGB, scaled to 0..1. Making
that tensor for every frame in the pipeline (channel swap, HWC to CHW, uint8 to float, scale) costs
~0.4 ms of one core per 512 x 288 input (more, in proportion, for larger ones), a few % of a
model's inference, on one thread. ``embed_pixel_input`` rewrites the graph to take the letterboxed
BGR canvas as it is, (1, H, W, 3) uint8:

- a Cast to float and a Transpose to NCHW at the front, which onnxruntime runs on the session's own
  threads;
- the scale (1/255 or any other), the per-channel std and the BGR to RGB swap folded into the first
  convolution's weights. A convolution is linear in its input, and its zero padding is zero in both
  scales, so the outputs are the same up to float rounding (~1e-4 on the shipped model's scores).

A non-zero mean cannot be folded into the weights where the convolution pads (the padded border
would be shifted too), so such models are refused by ``embed_pixel_input``; ``normalise_in_graph``
instead puts the whole conversion in front of the graph as it is (Cast, Sub, Mul, Transpose: exact
for any mean and std, and one fused pass on onnxruntime's threads instead of the runtime's numpy). ``models.runtime.Detector`` reads the input's layout and type from the model:
a uint8 input gets the canvas unchanged (``rgb`` in the manifest still names the channel order).

    python -m models.pixel_input MODEL.onnx [--out NEW.onnx] [--bgr-trained] [--scale S] [--std R G B]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def embed_pixel_input(src: str | Path, dst: str | Path, scale: float = 1 / 255,
                      std: tuple[float, float, float] = (1.0, 1.0, 1.0), rgb: bool = True,
                      mean: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
    """Write ``dst``: the model ``src`` taking (1, H, W, 3) uint8 BGR pixels instead of its (1, 3, H, W)
    float input that is ``(pixel * scale - mean) / std`` in RGB (``rgb``) or BGR order (mean and std
    in that order, as in a manifest). Raises ValueError for a non-zero mean, or where the graph does
    not start with a convolution of the input alone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if any(m != 0.0 for m in mean):
        raise ValueError(f"{src}: a mean of {tuple(mean)} cannot be folded into a padded convolution; "
                         f"keep the model as it is (the runtime makes its float input)")

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{src}: expected one input, found {[i.name for i in inputs]}")
    old = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in old.type.tensor_type.shape.dim]
    if old.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        raise ValueError(f"{src}: input {old.name} is not a (1, 3, H, W) float32 tensor")
    users = [n for n in graph.node if old.name in n.input]
    if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != old.name:
        raise ValueError(f"{src}: the input {old.name} must feed one Conv and nothing else; "
                         f"it feeds {[n.op_type for n in users]}")
    conv = users[0]
    if any(a.name == "group" and a.i != 1 for a in conv.attribute):
        raise ValueError(f"{src}: the first Conv is grouped: its weights do not see the three channels apart")
    weight = next((i for i in graph.initializer if i.name == conv.input[1]), None)
    if weight is None or sum(conv.input[1] in n.input for n in graph.node) != 1:
        raise ValueError(f"{src}: the first Conv's weights must be a constant of its own")
    w = numpy_helper.to_array(weight).astype(np.float64)
    # input channel c of the old tensor is pixel channel c (RGB) or 2 - c (BGR) of the BGR canvas
    w = w * (scale / np.asarray(std, np.float64))[None, :, None, None]
    if rgb:
        w = w[:, ::-1]
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w, np.float32), weight.name))

    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, dims[2], dims[3], 3])
    as_float = helper.make_node("Cast", ["pixels"], ["pixels_float"], to=TensorProto.FLOAT, name="pixels_to_float")
    to_nchw = helper.make_node("Transpose", ["pixels_float"], [old.name], perm=[0, 3, 1, 2], name="pixels_to_nchw")
    graph.input.remove(old)
    graph.input.insert(0, pixels)
    graph.node.insert(0, to_nchw)
    graph.node.insert(0, as_float)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def normalise_in_graph(model, mean: tuple[float, float, float], std: tuple[float, float, float],
                       scale: float = 1.0, rgb: bool = False):
    """The ONNX model (a ModelProto, changed in place and returned) taking ``pixels``, the
    letterboxed canvas as (1, H, W, 3) uint8 BGR, in front of its (1, 3, H, W) float input that is
    ``(pixel * scale - mean) / std`` in BGR (or, ``rgb``, RGB) order: Cast, the channel swap where
    needed, Sub, Mul and Transpose, nothing folded into weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    old = next(i for i in graph.input if i.name not in initializers)
    dims = [d.dim_value for d in old.type.tensor_type.shape.dim]
    if old.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1] != 3:
        raise ValueError(f"input {old.name} is not a (1, 3, H, W) float32 tensor")
    # mean and std are in the model's channel order: the swap (rgb) comes first
    mean_px = np.asarray(mean, np.float32) / np.float32(scale)
    factor = np.float32(scale) / np.asarray(std, np.float32)
    consts = [numpy_helper.from_array(mean_px.reshape(1, 1, 1, 3), "pixels_mean"),
              numpy_helper.from_array(factor.reshape(1, 1, 1, 3).astype(np.float32), "pixels_factor")]
    nodes = [helper.make_node("Cast", ["pixels"], ["pixels_float"], to=TensorProto.FLOAT, name="pixels_to_float")]
    current = "pixels_float"
    if rgb:
        consts.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "pixels_rgb"))
        nodes.append(helper.make_node("Gather", [current, "pixels_rgb"], ["pixels_swapped"], axis=3, name="pixels_to_rgb"))
        current = "pixels_swapped"
    nodes += [helper.make_node("Sub", [current, "pixels_mean"], ["pixels_centred"], name="pixels_minus_mean"),
              helper.make_node("Mul", ["pixels_centred", "pixels_factor"], ["pixels_scaled"], name="pixels_over_std"),
              helper.make_node("Transpose", ["pixels_scaled"], [old.name], perm=[0, 3, 1, 2], name="pixels_to_nchw")]
    graph.input.remove(old)
    graph.input.insert(0, helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, dims[2], dims[3], 3]))
    graph.initializer.extend(consts)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--out", type=Path, help="where to write the new model (default: over MODEL)")
    ap.add_argument("--bgr-trained", action="store_true", help="the model was trained on BGR, not RGB")
    ap.add_argument("--scale", type=float, default=1 / 255)
    ap.add_argument("--mean", type=float, nargs=3, default=(0.0, 0.0, 0.0), help="after scaling (refused unless 0)")
    ap.add_argument("--std", type=float, nargs=3, default=(1.0, 1.0, 1.0), help="after scaling and the mean")
    args = ap.parse_args(argv)
    try:
        embed_pixel_input(args.model, args.out or args.model, scale=args.scale, std=tuple(args.std),
                          rgb=not args.bgr_trained, mean=tuple(args.mean))
    except Exception as exc:   # noqa: BLE001 - a missing or unreadable file too: one line, not a traceback
        print(f"error: {exc}")
        return 2
    print(f"wrote {args.out or args.model}: input (1, H, W, 3) uint8 BGR; set input.rgb: false in its manifest, "
          f"drop input.scale/mean/std, and update sha256")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
