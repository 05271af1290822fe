"""A feature network given as an ONNX graph, run by PyTorch: ``--feature-net NET.onnx``.

The perceptual loss needs gradients through the feature net into the decoder's output, which
onnxruntime does not give, so the graph is run here, operator by operator, in PyTorch. (The usual
converter, onnx2torch, imports torchvision, whose PyPI wheels need a CUDA build of torch.)

``OnnxGraphNet`` is built from a JSON description of the graph (``arch_args``, written by
``apps.onnx_import.read_onnx``): its nodes in the file's (topological) order, each with its operator,
input and output names and plain attributes, and the shapes and dtypes of its constant tensors.
Those tensors (initializers and Constant nodes) are buffers named ``t0``, ``t1``, ...: they travel
in a run's checkpoints like the built-in nets' weights, and nothing is trained. So a run that uses
an ONNX net records only this description in its config and needs the file no more.

The feature-net contract (``modules.feature_nets``): ``forward`` gives the graph's output (class
logits), ``embed`` the input of the graph's last linear node (Gemm or MatMul: the penultimate layer
of a classifier), ``layers`` the outputs of its activation nodes before that node, input side
first (what the perceptual loss compares). Only operators in ``OPS`` are run; the reader refuses a
graph with any other before anything is built.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

#: ONNX TensorProto element types vaekit reads, by number
ONNX_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
               9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
#: nodes whose outputs are "hidden layers" for the perceptual loss
ACTIVATIONS = ("Relu", "LeakyRelu", "Elu", "Selu", "Gelu", "Sigmoid", "Tanh", "Softplus", "HardSigmoid",
               "HardSwish", "PRelu", "Clip")
#: nodes whose input is taken as the penultimate layer (the last one in the graph)
LINEAR = ("Gemm", "MatMul")

Ins = list  # a node's inputs: tensors, None where an optional input is left out
Op = Callable[[Ins, dict[str, Any], int], Any]
OPS: dict[str, Op] = {}


def _op(*names: str) -> Callable[[Op], Op]:
    def deco(fn: Op) -> Op:
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _spatial_pads(x: torch.Tensor, a: dict[str, Any], kernel: list[int]) -> list[int]:
    """ONNX pads [b1, .., bn, e1, .., en] of the spatial dims, with auto_pad resolved."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
        begins, ends = [], []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dil):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
        return begins + ends
    if auto == "VALID":
        return [0] * (2 * n)
    return list(a.get("pads", [0] * (2 * n)))


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, .., bn, e1, .., en] -> F.pad's (bn, en, .., b1, e1)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _symmetric(pads: list[int]) -> list[int] | None:
    n = len(pads) // 2
    return pads[:n] if pads[:n] == pads[n:] else None


@_op("Conv")
def _conv(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n = w.dim() - 2
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    pads = _spatial_pads(x, a, kernel)
    sym = _symmetric(pads)
    if sym is None:
        x, sym = F.pad(x, _torch_pad(pads)), [0] * n
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return conv(x, w, b, a.get("strides", [1] * n), sym, a.get("dilations", [1] * n), a.get("group", 1))


def _pool_args(x: torch.Tensor, a: dict[str, Any]) -> tuple[list[int], list[int], list[int], list[int] | None]:
    """kernel, strides, ONNX pads, and the per-dim padding torch's pooling takes itself (symmetric,
    at most half the kernel), or None where the pads must be applied beforehand."""
    kernel = list(a["kernel_shape"])
    pads = _spatial_pads(x, a, kernel)
    sym = _symmetric(pads)
    if sym is not None and any(p > k // 2 for p, k in zip(sym, kernel)):
        sym = None
    return kernel, list(a.get("strides", [1] * len(kernel))), pads, sym


@_op("MaxPool")
def _max_pool(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x = ins[0]
    kernel, strides, pads, sym = _pool_args(x, a)
    n = len(kernel)
    if sym is None:
        if a.get("ceil_mode", 0):  # torch would keep windows that start in the right padding; ONNX drops them
            raise ValueError(f"MaxPool with ceil_mode and pads {pads} (asymmetric or over half the kernel) "
                             "is not supported")
        x, sym = F.pad(x, _torch_pad(pads), value=-math.inf), [0] * n
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    return pool(x, kernel, strides, sym, a.get("dilations", [1] * n), bool(a.get("ceil_mode", 0)))


@_op("AveragePool")
def _avg_pool(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x = ins[0]
    kernel, strides, pads, sym = _pool_args(x, a)
    n = len(kernel)
    if any(d != 1 for d in a.get("dilations", [1] * n)):
        raise ValueError("AveragePool with dilations is not supported")
    if sym is None:
        if a.get("count_include_pad", 0):
            x, sym = F.pad(x, _torch_pad(pads)), [0] * n
        else:
            raise ValueError(f"AveragePool with pads {pads} (asymmetric or over half the kernel) is not supported")
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    return pool(x, kernel, strides, sym, bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))


@_op("GlobalAveragePool")
def _gap(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    return ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)


@_op("GlobalMaxPool")
def _gmp(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    return ins[0].amax(dim=tuple(range(2, ins[0].dim())), keepdim=True)


@_op("BatchNormalization")
def _batch_norm(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, scale, bias, mean, var = ins[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


@_op("LayerNormalization")
def _layer_norm(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, a.get("epsilon", 1e-5))


@_op("Gemm")
def _gemm(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, w = ins[0], ins[1]
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    out = a.get("alpha", 1.0) * (x @ w)
    c = ins[2] if len(ins) > 2 else None
    return out if c is None else out + a.get("beta", 1.0) * c


@_op("MatMul")
def _matmul(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    return torch.matmul(ins[0], ins[1])


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    return lambda ins, a, opset: fn(ins[0], ins[1])


def _div(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point() or y.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")  # ONNX integer division truncates


OPS.update({"Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
            "Pow": _binary(torch.pow)})


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda ins, a, opset: fn(ins[0])


OPS.update({"Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
            "Softplus": _unary(F.softplus), "HardSwish": _unary(F.hardswish),
            "Erf": _unary(torch.erf), "Sqrt": _unary(torch.sqrt), "Exp": _unary(torch.exp), "Log": _unary(torch.log),
            "Abs": _unary(torch.abs), "Neg": _unary(torch.neg), "Reciprocal": _unary(torch.reciprocal),
            "Identity": _unary(lambda x: x), "Dropout": _unary(lambda x: x)})  # a frozen net: dropout is off


@_op("LeakyRelu")
def _leaky(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    return F.leaky_relu(ins[0], a.get("alpha", 0.01))


@_op("Elu")
def _elu(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    return F.elu(ins[0], a.get("alpha", 1.0))


@_op("Selu")
def _selu(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    x = ins[0]
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@_op("Gelu")
def _gelu(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    return F.gelu(ins[0], approximate=a.get("approximate", "none"))


@_op("HardSigmoid")
def _hard_sigmoid(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    return (a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5)).clamp(0, 1)


@_op("PRelu")
def _prelu(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, slope = ins
    return torch.where(x >= 0, x, x * slope)


@_op("Clip")
def _clip(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
    lo = lo.item() if isinstance(lo, torch.Tensor) else lo
    hi = hi.item() if isinstance(hi, torch.Tensor) else hi
    return ins[0] if lo is None and hi is None else ins[0].clamp(lo, hi)


def _softmax_like(fn: Callable[..., torch.Tensor]) -> Op:
    def run(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
        x = ins[0]
        if opset >= 13:
            return fn(x, dim=a.get("axis", -1))
        axis = a.get("axis", 1) % x.dim()  # before opset 13: over all dims from axis on, flattened
        return fn(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)
    return run


OPS.update({"Softmax": _softmax_like(torch.softmax), "LogSoftmax": _softmax_like(torch.log_softmax)})


@_op("Flatten")
def _flatten(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x = ins[0]
    axis = a.get("axis", 1)
    axis += x.dim() if axis < 0 else 0  # in [-r, r]: -1 is r - 1
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@_op("Reshape")
def _reshape(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, shape = ins[0], _ints(ins[1]) or []
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@_op("Transpose")
def _transpose(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x = ins[0]
    return x.permute(a.get("perm", list(reversed(range(x.dim())))))


def _axes(ins: Ins, a: dict[str, Any]) -> list[int] | None:
    return _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else a.get("axes")


@_op("Squeeze")
def _squeeze(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, axes = ins[0], _axes(ins, a)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(ax % x.dim() for ax in axes))


@_op("Unsqueeze")
def _unsqueeze(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, axes = ins[0], _axes(ins, a) or []
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


@_op("Concat")
def _concat(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    return torch.cat([t for t in ins if t is not None], dim=a["axis"])


@_op("Shape")
def _shape(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    dims = list(ins[0].shape)[a.get("start", 0):a.get("end", None)]
    return torch.tensor(dims, dtype=torch.int64, device=ins[0].device)


@_op("Gather")
def _gather(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x, idx = ins
    axis = a.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    out = x.movedim(axis, 0)[idx]  # (*idx.shape, the other dims of x in order)
    k = idx.dim()
    return out.movedim(tuple(range(k)), tuple(range(axis, axis + k))) if k else out


@_op("Slice")
def _slice(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x = ins[0]
    if opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 else None
        steps = _ints(ins[4]) if len(ins) > 4 else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = steps or [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise ValueError("Slice with a non-positive step is not supported")
        size = x.shape[ax % x.dim()]
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        index[ax % x.dim()] = slice(s, e, st)
    return x[tuple(index)]


@_op("Cast")
def _cast(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    to = a["to"]
    if to not in ONNX_DTYPES:
        raise ValueError(f"Cast to ONNX type {to} is not supported")
    return ins[0].to(ONNX_DTYPES[to])


@_op("ConstantOfShape")
def _constant_of_shape(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    value = a.get("value", {"dtype": 1, "data": [0.0]})
    return torch.full(_ints(ins[0]) or [], value["data"][0], dtype=ONNX_DTYPES[value["dtype"]], device=ins[0].device)


def _reduce(fn: Callable[..., torch.Tensor], axes_input_from: int) -> Op:
    def run(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
        x = ins[0]
        axes = (_ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None) if opset >= axes_input_from \
            else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(ax % x.dim() for ax in axes), keepdim=keep)
    return run


OPS.update({"ReduceMean": _reduce(torch.mean, 18), "ReduceSum": _reduce(torch.sum, 13),
            "ReduceMax": _reduce(torch.amax, 18), "ReduceMin": _reduce(torch.amin, 18)})


@_op("Pad")
def _pad(ins: Ins, a: dict[str, Any], opset: int) -> torch.Tensor:
    x = ins[0]
    pads = _ints(ins[1]) if opset >= 11 else a["pads"]
    value = (ins[2].item() if len(ins) > 2 and ins[2] is not None else 0.0) if opset >= 11 else a.get("value", 0.0)
    if opset >= 11 and len(ins) > 3 and ins[3] is not None:
        raise ValueError("Pad with axes is not supported")
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(a.get("mode", "constant"))
    if mode is None:
        raise ValueError(f"Pad mode {a.get('mode')!r} is not supported")
    torch_pads = _torch_pad(pads)  # F.pad: the last dim first; leading dims left unpadded are trimmed
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    return F.pad(x, torch_pads, mode=mode, value=value) if mode == "constant" else F.pad(x, torch_pads, mode=mode)


class OnnxGraphNet(nn.Module):
    """Runs the graph described by ``arch_args`` (see the module docstring); shapes x (B, *input_shape),
    logits (B, K), embedding (B, F).

    arch_args: "opset" (int), "input" and "output" (tensor names), "nodes" ([{"op", "inputs",
    "outputs", "attrs"}]), "tensors" ([{"name", "shape", "dtype"}], the buffers t0, t1, ...),
    "embed" (a tensor name) and "layers" (tensor names).
    """

    arch_name = "onnx"
    #: its shape arithmetic reads integer tensors back to the host: a step that runs it cannot be
    #: recorded as a CUDA graph (``training.trainer``)
    graph_safe = False

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, **arch_args: Any) -> None:
        super().__init__()
        if not arch_args.get("nodes"):
            raise ValueError("the 'onnx' architecture is read from an .onnx file (--feature-net NET.onnx), "
                             "not trained: use --arch small-cnn or mlp")
        self.input_shape, self.num_classes = tuple(int(s) for s in input_shape), int(num_classes)
        self.arch_args = arch_args
        self.opset = int(arch_args["opset"])
        self.nodes = [(n["op"], list(n["inputs"]), list(n["outputs"]), dict(n.get("attrs") or {}))
                      for n in arch_args["nodes"]]
        unknown = sorted({op for op, *_ in self.nodes} - set(OPS))
        if unknown:
            raise ValueError(f"ONNX operators not supported: {', '.join(unknown)}")
        self.buffer_of: dict[str, str] = {}
        for i, t in enumerate(arch_args["tensors"]):
            dtype = getattr(torch, t["dtype"])
            self.register_buffer(f"t{i}", torch.zeros(t["shape"], dtype=dtype))
            self.buffer_of[t["name"]] = f"t{i}"
        self.input_name, self.output_name = arch_args["input"], arch_args["output"]
        self.embed_name, self.layer_names = arch_args["embed"], list(arch_args["layers"])

    def _run(self, x: torch.Tensor, wanted: list[str]) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor] = {name: getattr(self, buf) for name, buf in self.buffer_of.items()}
        env[self.input_name] = x
        missing = set(wanted)
        for op, inputs, outputs, attrs in self.nodes:
            if not missing:
                break
            out = OPS[op]([env[n] if n else None for n in inputs], attrs, self.opset)
            for name, value in zip(outputs, out if isinstance(out, (tuple, list)) else (out,)):
                if name:
                    env[name] = value
                    missing.discard(name)
        return {n: env[n] for n in wanted}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's output (B, K)."""
        return self._run(x, [self.output_name])[self.output_name]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the graph's last linear node (B, F)."""
        return self._run(x, [self.embed_name])[self.embed_name].flatten(1)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the activation nodes before the last linear node, input side first."""
        got = self._run(x, self.layer_names)
        return [got[n] for n in self.layer_names]
