"""TF.js graph model -> ONNX, for the ops a converted CNN detector uses (a development-time tool).

A TF.js graph model is a JSON graph (TensorFlow's GraphDef as JSON) plus a weights manifest
pointing into binary shards. TensorFlow (hundreds of MB) is not needed to read it: this module
decodes the weights with numpy, folds every constant subgraph (shape arithmetic such as
SparseToDense/AddV2 on int64) with numpy, and emits each remaining op as ONNX with the ``onnx``
helper API. The graphs ``onnx-tf`` produced keep NCHW tensors and wrap every NHWC op (Conv2D,
MaxPool, ResizeBilinear) in transposes; the converter does the same and then cancels each pair of
transposes that undo each other, so the ONNX graph is plain NCHW.

Only ``models/make_nanodet.py`` uses it, at development time; the agent never imports it (nor
``onnx``). Ops it does not know are refused by name, so a new graph fails loudly, not silently.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_DTYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64, "DT_BOOL": np.bool_}
_WEIGHT_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "float16": np.float16}


class ConversionError(Exception):
    pass


def read_weights(graph: dict, folder: Path) -> dict[str, np.ndarray]:
    """The manifest's weights, by name, as numpy arrays (fp16-quantised ones back to float32)."""
    out: dict[str, np.ndarray] = {}
    for group in graph["weightsManifest"]:
        data = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            count = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            stored = _WEIGHT_DTYPES[q["dtype"]] if q else _WEIGHT_DTYPES[w["dtype"]]
            if q and q["dtype"] != "float16":
                raise ConversionError(f"weight {w['name']}: quantisation {q['dtype']} is not supported")
            nbytes = count * np.dtype(stored).itemsize
            arr = np.frombuffer(data, stored, count, offset).reshape(shape)
            offset += nbytes
            out[w["name"]] = arr.astype(_WEIGHT_DTYPES[w["dtype"]])
        if offset != len(data):
            raise ConversionError(f"weights {group['paths']}: {len(data)} bytes, the manifest accounts for {offset}")
    return out


def _attr(node: dict, name: str, default=None):
    a = node.get("attr", {}).get(name)
    if a is None:
        return default
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "list" in a:
        return [int(i) for i in a["list"].get("i", [])]
    if "f" in a:
        return float(a["f"])
    if "i" in a:
        return int(a["i"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return a["type"]
    return a


def _ref(name: str) -> str:
    """A node input's tensor name: 'op' and 'op:0' are the same tensor; control inputs ('^op') dropped."""
    return name if ":" in name and not name.endswith(":0") else name.removesuffix(":0")


def _fold(op: str, node: dict, args: list[np.ndarray]) -> list[np.ndarray] | None:
    """numpy evaluation of an op whose inputs are all constant (None: leave it to the graph)."""
    if op == "Identity":
        return [args[0]]
    if op in ("Add", "AddV2"):
        return [args[0] + args[1]]
    if op == "SparseToDense":
        idx, shape, values, default = args
        out = np.full(shape.astype(np.int64), default, dtype=values.dtype)
        idx = idx if idx.ndim == 2 else idx.reshape(-1, 1)
        vals = np.broadcast_to(values, (idx.shape[0],))
        for i, v in zip(idx, vals):
            out[tuple(i)] = v
        return [out]
    if op == "Reshape":
        return [args[0].reshape(args[1].astype(np.int64))]
    if op == "Transpose":
        return [np.transpose(args[0], args[1].astype(np.int64))]
    if op == "Cast":
        return [args[0].astype(_DTYPES[_attr(node, "DstT")])]
    return None


@dataclass
class _Builder:
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    names: set = field(default_factory=set)

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.names:
            self.names.add(name)
            self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def add(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))


NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


def convert(json_path: str | Path, opset: int = 13) -> onnx.ModelProto:
    """The ONNX model of a TF.js graph model (float32 weights; inputs and outputs keep their names
    without the ':0')."""
    json_path = Path(json_path)
    graph = json.loads(json_path.read_text())
    if graph.get("format") != "graph-model":
        raise ConversionError(f"{json_path}: format {graph.get('format')!r}, expected 'graph-model'")
    weights = read_weights(graph, json_path.parent)
    tf_nodes = graph["modelTopology"]["node"]
    by_name = {n["name"]: n for n in tf_nodes}
    consts: dict[str, np.ndarray] = {}
    for n in tf_nodes:
        if n["op"] == "Const":
            if n["name"] not in weights:
                raise ConversionError(f"const {n['name']} has no weights")
            consts[n["name"]] = weights[n["name"]]
    b = _Builder()
    consumers: dict[str, list[dict]] = {}
    for n in tf_nodes:
        for i in n.get("input", []):
            consumers.setdefault(_ref(i), []).append(n)
    fused_bias: dict[str, str] = {}   # Add node name -> the Conv2D it is fused into

    # topological order: the JSON lists nodes in an order that is not always one
    order, seen = [], set()

    def visit(name: str) -> None:
        stack = [(name, False)]
        while stack:
            cur, done = stack.pop()
            if done:
                order.append(by_name[cur])
                continue
            if cur in seen:
                continue
            seen.add(cur)
            stack.append((cur, True))
            for i in by_name[cur].get("input", []):
                src = _ref(i).split(":")[0]
                if src not in seen:
                    stack.append((src, False))

    for n in tf_nodes:
        visit(n["name"])

    graph_inputs, graph_outputs = [], []
    for n in order:
        op, name = n["op"], n["name"]
        ins = [_ref(i) for i in n.get("input", []) if not i.startswith("^")]
        if op == "Const":
            continue
        if all(i in consts for i in ins):
            folded = _fold(op, n, [consts[i] for i in ins])
            if folded is not None:
                consts[name] = folded[0]
                continue
        if op == "Placeholder":
            dims = [int(d["size"]) for d in n["attr"]["shape"]["shape"]["dim"]]
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
            continue
        for i in ins:   # constant operands (ONNX wants int64 for shapes, pads, sizes)
            if i in consts:
                v = consts[i]
                b.const(i, v.astype(np.int64) if v.dtype == np.int32 else v)
        if name in fused_bias:
            continue
        if op == "Identity":
            b.add("Identity", ins[:1], [name], name)
            if not consumers.get(name):
                graph_outputs.append(name)
        elif op == "Conv2D":
            if _attr(n, "data_format", "NHWC") != "NHWC" or _attr(n, "padding") != "VALID":
                raise ConversionError(f"{name}: Conv2D only with NHWC and VALID padding (explicit Pad ops)")
            kernel = consts[ins[1]]                        # HWIO
            w = np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))   # OIHW
            inputs = [f"{name}/nchw", b.const(f"{name}/W", w)]
            out = name
            users = consumers.get(name, [])
            if len(users) == 1 and users[0]["op"] in ("Add", "AddV2"):
                add = users[0]
                other = [_ref(i) for i in add["input"] if _ref(i) != name]
                if len(other) == 1 and other[0] in consts and consts[other[0]].size == w.shape[0]:
                    inputs.append(b.const(f"{name}/B", consts[other[0]].reshape(-1).astype(np.float32)))
                    fused_bias[add["name"]] = name
                    out = add["name"]
            strides = _attr(n, "strides")
            dil = _attr(n, "dilations", [1, 1, 1, 1])
            b.add("Transpose", [ins[0]], [f"{name}/nchw"], f"{name}/to_nchw", perm=NHWC_TO_NCHW)
            b.add("Conv", inputs, [f"{out}/conv_nchw"], name, strides=strides[1:3], dilations=dil[1:3],
                  kernel_shape=list(kernel.shape[:2]))
            b.add("Transpose", [f"{out}/conv_nchw"], [out], f"{out}/to_nhwc", perm=NCHW_TO_NHWC)
        elif op in ("Add", "AddV2"):
            b.add("Add", ins, [name], name)
        elif op == "LeakyRelu":
            b.add("LeakyRelu", ins, [name], name, alpha=_attr(n, "alpha", 0.2))
        elif op == "Sigmoid":
            b.add("Sigmoid", ins, [name], name)
        elif op == "Transpose":
            b.add("Transpose", ins[:1], [name], name, perm=[int(p) for p in consts[ins[1]]])
        elif op == "Reshape":
            b.const(ins[1], consts[ins[1]].astype(np.int64))
            b.add("Reshape", ins, [name], name)
        elif op in ("Pad", "PadV2"):
            pads = consts[ins[1]].astype(np.int64)
            onnx_pads = np.concatenate([pads[:, 0], pads[:, 1]])
            extra = [b.const(f"{name}/pads", onnx_pads)]
            if op == "PadV2":
                extra.append(b.const(f"{name}/value", consts[ins[2]].astype(np.float32).reshape(())))
            b.add("Pad", [ins[0]] + extra, [name], name, mode="constant")
        elif op == "MaxPool":
            if _attr(n, "data_format", "NHWC") != "NHWC" or _attr(n, "padding") != "VALID":
                raise ConversionError(f"{name}: MaxPool only with NHWC and VALID padding")
            k, s = _attr(n, "ksize"), _attr(n, "strides")
            b.add("Transpose", ins, [f"{name}/nchw"], f"{name}/to_nchw", perm=NHWC_TO_NCHW)
            b.add("MaxPool", [f"{name}/nchw"], [f"{name}/pool_nchw"], name, kernel_shape=k[1:3], strides=s[1:3])
            b.add("Transpose", [f"{name}/pool_nchw"], [name], f"{name}/to_nhwc", perm=NCHW_TO_NHWC)
        elif op == "ConcatV2":
            axis = int(consts[ins[-1]])
            b.add("Concat", ins[:-1], [name], name, axis=axis)
        elif op == "SplitV":
            sizes = consts[ins[1]].astype(np.int64)
            axis = int(consts[ins[2]])
            outs = [name] + [f"{name}:{k}" for k in range(1, len(sizes))]
            b.add("Split", [ins[0], b.const(f"{name}/sizes", sizes)], outs, name, axis=axis)
        elif op == "ResizeBilinear":
            if _attr(n, "align_corners"):
                raise ConversionError(f"{name}: ResizeBilinear with align_corners is not supported")
            mode = "half_pixel" if _attr(n, "half_pixel_centers") else "asymmetric"
            size = consts[ins[1]].astype(np.int64).reshape(2)
            b.add("Transpose", ins[:1], [f"{name}/nchw"], f"{name}/to_nchw", perm=NHWC_TO_NCHW)
            # sizes for N, C, H, W: the batch and channels as they are, read from the tensor's shape
            shape = f"{name}/shape"
            b.add("Shape", [f"{name}/nchw"], [shape], f"{name}/shape_of")
            b.add("Slice", [shape, b.const(f"{name}/s0", np.array([0])), b.const(f"{name}/s2", np.array([2]))],
                  [f"{name}/nc"], f"{name}/nc_of")
            b.add("Concat", [f"{name}/nc", b.const(f"{name}/hw", size)], [f"{name}/sizes"], f"{name}/sizes_of",
                  axis=0)
            b.add("Resize", [f"{name}/nchw", "", "", f"{name}/sizes"], [f"{name}/resized"], name, mode="linear",
                  coordinate_transformation_mode=mode)
            b.add("Transpose", [f"{name}/resized"], [name], f"{name}/to_nhwc", perm=NCHW_TO_NHWC)
        else:
            raise ConversionError(f"{name}: op {op} is not supported by this converter")
    sig = {k.removesuffix(":0"): [int(d["size"]) for d in v["tensorShape"]["dim"]]
           for k, v in graph.get("signature", {}).get("outputs", {}).items()}
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, sig.get(o)) for o in sorted(graph_outputs)]
    g = helper.make_graph(b.nodes, json_path.stem, graph_inputs, outputs, b.initializers)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="models/tfjs_graph.py")
    model = cancel_transposes(model)
    onnx.checker.check_model(model)
    return model


def cancel_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove each Transpose whose input comes from a Transpose with the inverse permutation (the
    NHWC <-> NCHW round trips around every converted op), then drop nodes nobody reads."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    rename: dict[str, str] = {}

    def perm(n) -> list[int]:
        return list(next(a for a in n.attribute if a.name == "perm").ints)

    for n in g.node:
        if n.op_type != "Transpose":
            continue
        src = producer.get(n.input[0])
        if src is not None and src.op_type == "Transpose":
            p1, p2 = perm(src), perm(n)
            if [p1[i] for i in p2] == list(range(len(p1))):
                rename[n.output[0]] = src.input[0]
    if not rename:
        return model

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    outputs = {o.name for o in g.output}
    for n in g.node:
        for k, i in enumerate(n.input):
            n.input[k] = resolve(i)
    # a graph output that became an alias keeps its name through an Identity
    for o in outputs:
        if o in rename:
            g.node.append(helper.make_node("Identity", [resolve(o)], [o], name=f"{o}/out"))
    # dead code elimination, from the outputs back
    needed = set(outputs)
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output) and not (n.op_type == "Transpose" and n.output[0] in rename):
            keep.append(n)
            needed.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    live_inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(live_inits)
    return model


def store_weights_fp16(model: onnx.ModelProto, min_size: int = 16) -> onnx.ModelProto:
    """Store float32 weights that came from fp16 (every value exactly representable) as float16
    plus a Cast back to float32: the file halves and nothing changes numerically (onnxruntime
    folds the Casts when it loads the model, so inference is float32 as before)."""
    g = model.graph
    casts = []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(init)
        if w.size < min_size or not np.array_equal(w.astype(np.float16).astype(np.float32), w):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(w.astype(np.float16), f"{name}/fp16"))
        casts.append(helper.make_node("Cast", [f"{name}/fp16"], [name], name=f"{name}/to_fp32", to=TensorProto.FLOAT))
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model
