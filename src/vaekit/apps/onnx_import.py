"""Read an ONNX classifier as a vaekit feature net (``--feature-net NET.onnx``; ``modules.onnx_graph``).

``read_onnx(path)`` parses the file with the ``onnx`` package (protobuf, nothing pickled; the
``vaekit[onnx]`` extra), checks it, and returns the net and its metadata like ``load_feature_net``
does for a directory written by ``vaekit features``. What it accepts: one input, a float tensor
(batch, *shape) with every dimension after the batch fixed; one output (batch, classes) first;
operators of the default domain that ``modules.onnx_graph.OPS`` runs. Before returning, the net
runs a batch of two random inputs, and where onnxruntime is installed its outputs are compared
with onnxruntime's on the same inputs: a graph vaekit would read differently is refused, not used.
Every refusal is one line naming the file, the problem and what to do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, UsageError
from ..modules.onnx_graph import ACTIVATIONS, LINEAR, ONNX_DTYPES, OPS, OnnxGraphNet

INSTALL = "pip install 'vaekit[onnx]'"
#: tensor *attributes* of other nodes than Constant (ConstantOfShape's value) up to this many values
#: are kept in the JSON description; Constant nodes become buffers, as initializers do
SMALL_TENSOR = 64
#: how far vaekit's outputs may be from onnxruntime's, relative to their scale
ORT_TOLERANCE = 1e-3


def _bad(path: Path, what: str) -> UsageError:
    return UsageError(f"feature net {path}: {what}")


def _line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 200 characters."""
    lines = str(e).splitlines()
    return (lines[0] if lines and lines[0].strip() else type(e).__name__)[:200]


def _attr(a: Any, path: Path, op: str) -> Any:
    """A node attribute as plain JSON: numbers, strings, lists, small tensors as {dtype, shape, data}."""
    from onnx import helper, numpy_helper

    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    if hasattr(value, "dims") and hasattr(value, "data_type"):  # a TensorProto
        arr = numpy_helper.to_array(value)
        if arr.size > SMALL_TENSOR:
            raise _bad(path, f"node {op} has a tensor attribute {a.name!r} of {arr.size} values, which vaekit's reader "
                             "does not keep; export the network with that tensor as an initializer")
        return {"dtype": int(value.data_type), "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}
    if isinstance(value, (int, float, str)):
        return value
    raise _bad(path, f"node {op} has an attribute {a.name!r} of a kind vaekit's reader does not run (a subgraph?)")


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def _nodes(g: Any, tensors: dict[str, np.ndarray], p: Path) -> list[dict[str, Any]]:
    """The graph's nodes as JSON ({"op", "inputs", "outputs", "attrs"}), in order; Constant nodes
    become entries of ``tensors`` instead. Refuses operators ``OPS`` does not run, naming them all."""
    from onnx import helper, numpy_helper

    nodes, unknown = [], set()
    for n in g.node:
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        if op == "Constant":
            a = n.attribute[0]
            if a.name == "value":
                tensors[n.output[0]] = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_floats"):
                tensors[n.output[0]] = np.asarray(helper.get_attribute_value(a), np.float32)
            elif a.name in ("value_int", "value_ints"):
                tensors[n.output[0]] = np.asarray(helper.get_attribute_value(a), np.int64)
            else:
                unknown.add(f"Constant({a.name})")
            continue
        if op not in OPS:
            unknown.add(op)
            continue
        nodes.append({"op": op, "inputs": list(n.input), "outputs": list(n.output),
                      "attrs": {a.name: _attr(a, p, op) for a in n.attribute}})
    if unknown:
        raise _bad(p, f"it uses ONNX operators vaekit's reader does not run: {', '.join(sorted(unknown))} "
                      f"(it runs {', '.join(sorted(OPS))}); export the network with these, or train a feature net "
                      "with vaekit features")
    return nodes


def _feature_names(nodes: list[dict[str, Any]], p: Path) -> tuple[str, list[str]]:
    """(embed, layers): the input of the last linear node, and the activation outputs before it
    (without a linear node: the last activation's output, and every activation's)."""
    linear = [i for i, n in enumerate(nodes) if n["op"] in LINEAR]
    if linear:
        embed = nodes[linear[-1]]["inputs"][0]
        layers = [n["outputs"][0] for n in nodes[:linear[-1]] if n["op"] in ACTIVATIONS]
    else:
        acts = [n["outputs"][0] for n in nodes if n["op"] in ACTIVATIONS]
        if not acts:
            raise _bad(p, "the graph has neither a linear layer (Gemm, MatMul) nor an activation to take features from")
        embed, layers = acts[-1], acts
    return embed, layers or [embed]


def read_onnx(path: str | Path) -> tuple[OnnxGraphNet, dict[str, Any]]:
    """(net in eval mode, metadata) from an .onnx classifier; UsageError / CheckpointError, one line."""
    p = Path(path)
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise UsageError(f"feature net {p}: reading ONNX files needs the onnx package: {INSTALL}") from None
    if not p.is_file():
        raise CheckpointError(f"feature net {p} not found")
    try:
        model = onnx.load(str(p))
    except FileNotFoundError as e:  # the weights in a separate file (external data) that is not there
        raise CheckpointError(f"feature net {p}: its weights are in a separate file that is missing ({_line(e)}); "
                              "keep the data file the exporter wrote beside the .onnx file") from None
    except Exception as e:  # protobuf DecodeError, ...
        raise CheckpointError(f"feature net {p} is not a valid ONNX model ({_line(e)})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # ValidationError
        raise CheckpointError(f"feature net {p} is not a valid ONNX model ({_line(e)})") from None
    external = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise _bad(p, "the model imports no opset of the default ONNX domain")
    g = model.graph

    tensors: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in tensors]
    if len(inputs) != 1:
        raise _bad(p, f"the graph takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); a feature net "
                      "takes one, the examples")
    x_info = inputs[0]
    if x_info.type.tensor_type.elem_type != 1:
        raise _bad(p, f"its input {x_info.name!r} is not a float32 tensor")
    dims = _dims(x_info)
    if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise _bad(p, f"its input {x_info.name!r} has shape {dims}; vaekit needs (batch, *shape) with every "
                      "dimension after the batch fixed (export with a fixed image size)")
    if isinstance(dims[0], int) and dims[0] > 0:
        raise _bad(p, f"its input {x_info.name!r} is fixed to a batch of {dims[0]}; export it with a dynamic batch axis "
                      "(torch.onnx.export(..., dynamic_axes={'x': {0: 'batch'}}), or dynamic_shapes with dynamo=True)")
    input_shape = [int(d) for d in dims[1:]]
    if not g.output:
        raise _bad(p, "the graph has no output")

    nodes = _nodes(g, tensors, p)
    embed, layers = _feature_names(nodes, p)

    names = sorted(tensors)
    specs, weights = [], {}
    for i, name in enumerate(names):
        arr = np.array(tensors[name], copy=True, order="C")  # (not ascontiguousarray: it makes 0-d arrays 1-d)
        try:
            t = torch.from_numpy(arr)
        except TypeError:  # numpy types torch has not (strings, ml_dtypes' bfloat16 / float8)
            t = None
        if t is None or t.dtype not in ONNX_DTYPES.values():
            raise _bad(p, f"its tensor {name!r} has the type {arr.dtype}, which vaekit's reader does not run")
        specs.append({"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")})
        weights[f"t{i}"] = t
    arch_args = {"opset": int(opset), "input": x_info.name, "output": g.output[0].name, "nodes": nodes,
                 "tensors": specs, "embed": embed, "layers": layers}

    gen = torch.Generator().manual_seed(0)
    probe = torch.rand(2, *input_shape, generator=gen)
    try:
        net = OnnxGraphNet(tuple(input_shape), 0, **arch_args)
        net.load_state_dict(weights)
    except (RuntimeError, ValueError) as e:
        raise _bad(p, f"vaekit could not build it ({_line(e)})") from None
    net.eval()
    try:
        with torch.no_grad():
            out = net(probe)
            embedded = net.embed(probe)
            net.layers(probe)
    except Exception as e:  # an operator the graph uses in a way vaekit's reader does not
        hint = ""
        try:
            with torch.no_grad():
                net(probe[:1])
            hint = ": it runs one example at a time; export it with a dynamic batch axis " \
                   "(torch.onnx.export(..., dynamic_axes={'x': {0: 'batch'}}))"
        except Exception:
            pass
        raise _bad(p, f"vaekit could not run it on a batch of 2 inputs of shape {tuple(input_shape)} "
                      f"({_line(e)}){hint}") from None
    if not bool(torch.isfinite(out).all()):
        raise _bad(p, "its outputs on random inputs in [0, 1) are not all finite; a feature net must give finite outputs")
    if out.dim() != 2:
        raise _bad(p, f"its output {g.output[0].name!r} has shape {tuple(out.shape)}; a feature net is a classifier "
                      "whose first output is (batch, classes)")
    checked = _check_with_onnxruntime(p, probe, out)
    net.num_classes = int(out.shape[1])
    meta = {"format": "onnx", "architecture": OnnxGraphNet.arch_name, "arch_args": arch_args,
            "input_shape": input_shape, "num_classes": int(out.shape[1]), "file": p.name, "external_data": external,
            "embed_dim": int(embedded.shape[1]),
            "checked_with_onnxruntime": checked, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return net, meta


def _check_with_onnxruntime(p: Path, probe: torch.Tensor, out: torch.Tensor) -> bool:
    """Compare vaekit's outputs with onnxruntime's on ``probe``; False when onnxruntime is absent."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    try:
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: probe.numpy()})[0]  # (the graph's one input)
    except Exception as e:
        raise _bad(p, f"onnxruntime could not run it on a batch of 2 ({_line(e)})") from None
    ours = out.detach().double().numpy()
    ref = np.asarray(ref, np.float64)
    if ref.shape != ours.shape:
        raise _bad(p, f"vaekit's reading gives outputs of shape {ours.shape}, onnxruntime {ref.shape}")
    if not np.isfinite(ref).all():  # (vaekit's own outputs were checked before)
        raise _bad(p, "onnxruntime's outputs on random inputs in [0, 1) are not all finite; "
                      "a feature net must give finite outputs")
    err = float(np.abs(ours - ref).max())
    if not err <= ORT_TOLERANCE * (1.0 + float(np.abs(ref).max())):
        raise _bad(p, f"vaekit's reading of the graph disagrees with onnxruntime (largest difference {err:.3g}); "
                      "train a feature net with vaekit features instead")
    return True
