"""Export a trained run to ONNX: ``export_onnx(run_dir, out_dir)`` (``vaekit export RUN --format onnx``).

Writes, into one folder, a self-contained ``.onnx`` file per network (weights inline, no external
data, opset 17 (``OPSETS``), float32, a dynamic batch axis named "batch") and ``export.json``, which says
what each file takes and gives (names, shapes, dtypes), the likelihood and prior, and how raw data
become model inputs (the scaling recorded with the run). The graphs:

- ``encoder.onnx``: x -> ``mean``, ``logvar`` of q(z|x) (diagonal Gaussian);
- ``decoder.onnx``: z -> the likelihood's parameters of p(x|z) (``LIKELIHOOD_OUTPUTS``: Bernoulli
  ``logits``; Gaussian ``loc`` and ``scale``; ...) and ``mean``, E[x|z], in model units;
- ``prior.onnx`` where p(z) is a network: a learned conditional prior p(z|c) (cvae
  ``--conditional-prior``), p(z1|z2) of a two-layer model, p(z|x_given) of a completion model;
- ``classifier.onnx`` for semi-supervised runs (m2, M1+M2): x -> ``probs``, q(y|x).

Models that differ from that shape, and what they export (``export.json`` records the choice in
``encoder_kind``, ``decoder_kind`` and ``not_exported``):

- conditional models take their condition as an extra input of every graph: ``y`` (int64 class
  indices) or ``c`` (the condition, prepared like the training conditions);
- m2 / M1+M2: the encoder q(z|x,y) takes the class ``y`` (classify first where it is unknown);
- aae ``--encoder deterministic``: no q(z|x); ``encoder.onnx`` gives the ``code`` z = mu(x) alone;
- avb: the encoder is implicit (z = f(x, eps), no density and no mean or variance), so
  ``encoder.onnx`` is the sampler itself: inputs x and ``noise`` ~ N(0, I) -> one draw ``z``;
- completion: every graph reads the given part as (x, ``mask``), 1 = missing: the encoder is
  q(z|x_given, x_missing), the prior p(z|x_given), the decoder p(x|z, x_given);
- sequence models (gru, lstm): the decoder is autoregressive, p(x|z) = prod_t p(x_t|x_<t, z),
  so ``decoder.onnx`` takes z, x and ``mask`` and gives every step's parameters given the steps
  before (teacher forcing, as vaekit scores sequences); free-running generation, a loop that feeds
  each step's output back, is not a graph (call the decoder once per step, filling in x).

Adversaries, discriminators and other training-only networks are not exported. Every graph is
checked with onnxruntime against PyTorch before anything is written (``CHECK_BATCHES``); files
are written whole or not at all. ``onnx`` and ``onnxruntime`` (and ``onnxscript`` for the dynamo
exporter) are imported on first use: ``pip install 'vaekit[onnx]'``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__
from .data.spec import DataSpec
from .errors import UsageError, VaekitError
from .io import _umask, atomic_path, write_json
from .models.base import BaseModel

FORMATS = ("onnx",)
#: "torchscript": torch.onnx's TorchScript exporter (dynamo=False; fast, and the default); "dynamo":
#: the torch.export-based one (needs onnxscript; about 50x slower per graph, and torch's future default)
EXPORTERS = ("torchscript", "dynamo")
#: ONNX opset per exporter: 17 runs on onnxruntime >= 1.14; the dynamo exporter writes 18 (asked for 17, its
#: down-conversion left Split nodes with an attribute that opset lacks: invalid models, torch 2.13)
OPSETS = {"torchscript": 17, "dynamo": 18}
BATCH = "batch"  # the name of the dynamic batch axis
CHECK_BATCHES = (1, 3)  # batch sizes at which each exported graph is compared with PyTorch
CHECK_ATOL, CHECK_RTOL = 1e-4, 1e-4
MAX_BYTES = 2**31 - 2**24  # protobuf's 2 GiB limit on one file, with room for the graph itself
GRAPH_FILES = ("encoder", "decoder", "prior", "classifier")
INSTALL = "pip install 'vaekit[onnx]'"

#: the decoder's outputs per likelihood, before the ``mean`` every decoder has (see ``_likelihood_outputs``)
LIKELIHOOD_OUTPUTS = {
    "bernoulli": ("logits",),
    "gaussian": ("loc", "scale"),
    "gaussian-fixed": ("loc",),
    "discretized-logistic": ("loc", "log_scale"),
    "categorical": ("logits",),
}


@dataclass
class Port:
    """One input or output of a graph: ``shape`` with "batch" first, ``dtype`` "float32" or "int64".
    ``role`` says what check inputs to draw ("x", "z", "y", "c", "mask", "noise"); ``high``: the
    number of classes of an int64 input."""

    name: str
    shape: tuple[int | str, ...]
    doc: str
    dtype: str = "float32"
    role: str = ""
    high: int = 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "doc": self.doc}


class _Graph(nn.Module):
    """One exported network: ``fn(model, *inputs)`` returns its outputs in order. The model is a
    registered child, so the weights that ``fn`` reads become the graph's initializers."""

    def __init__(self, model: nn.Module, fn: Callable[..., Sequence[torch.Tensor]]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.fn(self.model, *inputs))


@dataclass
class Graph:
    """What one ``.onnx`` file holds: ``name`` (the file's stem), the network, its ports and a line of doc."""

    name: str
    module: nn.Module
    inputs: list[Port]
    outputs: list[Port]
    doc: str


@dataclass
class Plan:
    """Everything a model exports: its graphs; export.json's "likelihood" and "prior"; how its
    encoder ("gaussian": mean and logvar, "deterministic": a code, "implicit": a sampler) and decoder
    ("z": from codes (and a condition), "completion": from codes and the given part,
    "autoregressive": teacher-forced) are to be read; what was left out and why (``not_exported``,
    one sentence each); ``info``: further export.json entries."""

    graphs: list[Graph]
    likelihood: dict[str, Any]
    prior: dict[str, Any]
    encoder_kind: str = "gaussian"
    decoder_kind: str = "z"
    not_exported: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


# -- the pieces every plan uses -------------------------------------------------------------------------
def _batch(shape: Sequence[int]) -> tuple[int | str, ...]:
    return (BATCH, *(int(s) for s in shape))


def _x(spec: DataSpec) -> Port:
    what = "token ids as float32" if spec.kind == "tokens" else f"{spec.kind} data in model units"
    return Port("x", _batch(spec.shape), f"examples: {what} (see data.preprocessing)", role="x")


def _z(dim: int, name: str = "z", doc: str = "latent codes") -> Port:
    return Port(name, _batch((dim,)), doc, role="z")


def _gaussian_out(dim: int, of: str) -> list[Port]:
    return [Port("mean", _batch((dim,)), f"mean of {of}"),
            Port("logvar", _batch((dim,)), f"log variance of {of} (diagonal; std = exp(logvar / 2))")]


def _label(k: int) -> Port:
    return Port("y", (BATCH,), f"class indices in 0..{k - 1} (data.classes in that order)", "int64", "y", k)


def _likelihood_ports(lik: nn.Module, name: str, spec: DataSpec) -> list[Port]:
    """The decoder's outputs for likelihood ``name``: its parameters, then ``mean``."""
    shape = _batch(spec.shape)
    mean = Port("mean", shape, "E[x|z] in model units (see data.preprocessing)")
    if name == "categorical":
        v = int(lik.num_params)
        return [Port("logits", (*shape, v), f"unnormalised log-probabilities of the {v} tokens (last axis)"),
                Port("mean", shape, "the most likely token id of each step, as float32")]
    docs = {"logits": "log-odds of each value being 1", "loc": "location of each value's distribution",
            "scale": "standard deviation of each value", "log_scale": "log scale of each value's logistic (>= -7)"}
    names = LIKELIHOOD_OUTPUTS.get(name)
    if names is None:  # a likelihood the exporter does not know: its raw parameters as the decoder gives them
        return [Port("params", (BATCH, int(lik.num_params), *spec.shape), f"raw parameters of the {name} likelihood"),
                mean]
    return [*(Port(n, shape, docs[n]) for n in names), mean]


def _likelihood_outputs(lik: nn.Module, name: str, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The values ``_likelihood_ports`` names, from the decoder's raw parameters (B, P, *shape)."""
    mean = lik.mean(params)
    if name in ("bernoulli", "gaussian-fixed"):
        return params[:, 0], mean
    if name == "gaussian":
        return params[:, 0], lik.min_std + F.softplus(params[:, 1]), mean
    if name == "discretized-logistic":
        return params[:, 0] + 0.5, params[:, 1].clamp(min=-7.0), mean
    if name == "categorical":
        return params.movedim(1, -1), mean
    return params, mean


def _likelihood_info(lik: nn.Module, name: str) -> dict[str, Any]:
    """export.json's description of p(x|z)."""
    info: dict[str, Any] = {"name": name}
    if name == "bernoulli":
        info["doc"] = "independent Bernoulli per value: p(x=1) = sigmoid(logits); mean = sigmoid(logits)"
    elif name == "gaussian":
        info["doc"] = "independent Gaussian per value, N(loc, scale^2); mean = loc"
        info["min_std"] = float(lik.min_std)
    elif name == "gaussian-fixed":
        info["doc"] = "independent Gaussian per value with a fixed standard deviation, N(loc, sigma^2); mean = loc"
        info["sigma"] = float(lik.sigma)
    elif name == "discretized-logistic":
        info["doc"] = ("discretized logistic per value over the 256 levels k/255 in [0, 1] (loc, exp(log_scale)); "
                       "mean = loc clamped to [0, 1]")
        info["bins"] = 256
    elif name == "categorical":
        info["doc"] = "categorical over the vocabulary per step: softmax(logits); mean = argmax"
        info["categories"] = int(lik.num_params)
    else:
        info["doc"] = f"raw parameters of vaekit's {name!r} likelihood; mean = its mean"
    info["outputs"] = [*LIKELIHOOD_OUTPUTS.get(name, ("params",)), "mean"]
    return info


def _decoder_graph(model: nn.Module, lik: nn.Module, lik_name: str, spec: DataSpec, inputs: list[Port],
                   params: Callable[..., torch.Tensor], doc: str) -> Graph:
    """decoder.onnx: ``params(model, *inputs)`` -> raw parameters, then the likelihood's outputs."""
    def fn(m: nn.Module, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _likelihood_outputs(lik, lik_name, params(m, *args))
    return Graph("decoder", _Graph(model, fn), inputs, _likelihood_ports(lik, lik_name, spec), doc)


def _prior_info(model: nn.Module) -> dict[str, Any]:
    cfg = model.config
    if cfg.prior == "gmm-ring":
        from .modules.priors import RingMixturePrior as R
        return {"name": "gmm-ring", "components": R.components, "shift": R.shift, "radial_std": R.radial_std,
                "tangential_std": R.tangential_std,
                "doc": "the AAE's ring of 10 Gaussians in each pair of dimensions (vaekit.modules.priors)"}
    return {"name": cfg.prior, "doc": "z ~ N(0, I)"}


# -- plans, one per kind of model ----------------------------------------------------------------------
def _plan_vae(model: nn.Module, spec: DataSpec) -> Plan:
    """VAE, IWAE, VAE-GAN, AAE, AVB and the two-layer models: x -> q(z|x), z -> p(x|z)."""
    from .models.aae import AAE
    from .models.avb import AVB, ENCODE_SAMPLES
    from .models.hierarchical import TwoLayerVAE

    d, lik = model.latent_dim, model.likelihood
    name = model.config.likelihood
    plan = Plan([], _likelihood_info(lik, name), _prior_info(model))
    if isinstance(model, AVB):
        e = model.noise_dim
        plan.encoder_kind = "implicit"
        plan.graphs.append(Graph(
            "encoder", _Graph(model, lambda m, x, eps: (m.encoder.tail(m.encoder.features(x), eps),)),
            [_x(spec), Port("noise", _batch((e,)), f"noise eps ~ N(0, I), {e} values per example", role="noise")],
            [_z(d, "z", "one draw z ~ q(z|x)")],
            "AVB's implicit encoder: one draw z = f(x, eps) per example; average many draws for a code "
            f"(vaekit uses {ENCODE_SAMPLES})"))
        plan.not_exported.append("AVB's q(z|x) is implicit (no mean or log variance): encoder.onnx is its sampler "
                                 "(x, noise -> z)")
    elif isinstance(model, AAE) and model.deterministic:
        plan.encoder_kind = "deterministic"
        plan.graphs.append(Graph("encoder", _Graph(model, lambda m, x: (m.encoder(x)[0],)), [_x(spec)],
                                 [_z(d, "code", "the code z = mu(x)")],
                                 "the AAE's deterministic encoder: x -> its code (no q(z|x), no variance)"))
        plan.not_exported.append("a deterministic AAE has no q(z|x): encoder.onnx gives the code alone")
    else:
        plan.graphs.append(Graph("encoder", _Graph(model, lambda m, x: m.encoder(x)), [_x(spec)],
                                 _gaussian_out(d, "q(z|x)"), "q(z|x)"))
    plan.graphs.append(_decoder_graph(model, lik, name, spec, [_z(d)], lambda m, z: m.decoder(z), "p(x|z)"))
    if isinstance(model, TwoLayerVAE):
        d2 = model.latent_dim2
        plan.graphs.append(Graph("prior", _Graph(model, lambda m, z2: m.decoder2(z2)),
                                 [_z(d2, "z2", "codes of the top layer, z2 ~ N(0, I)")], _gaussian_out(d, "p(z1|z2)"),
                                 "p(z1|z2) of the two-layer model: draw z2 ~ N(0, I), then z1 from it, decode z1"))
        plan.prior = {"name": "two-layer", "doc": "z2 ~ N(0, I), then z1 ~ p(z1|z2) (prior.onnx); z is z1"}
    return plan


def _cvae_condition(model: nn.Module, value: torch.Tensor) -> torch.Tensor:
    """The CVAE's embedded condition (``ConditionEmbedding``) from an int64 y or a float32 c, in
    operations an exporter keeps general in the batch size."""
    emb = model.cond
    if emb.field == "y":
        return F.one_hot(value.long(), emb.dim).to(torch.float32)
    return emb.net(value) if emb.net is not None else value.flatten(1)


def _plan_cvae(model: nn.Module, spec: DataSpec) -> Plan:
    d, emb = model.latent_dim, model.cond
    cond = (_label(emb.dim) if emb.field == "y" else
            Port("c", _batch(spec.cond_shape), "conditions, prepared as data.condition says", role="c"))
    lik, name = model.likelihood, model.config.likelihood

    def encode(m: nn.Module, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return m.encoder(x, _cvae_condition(m, c))

    def params(m: nn.Module, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return m.decoder(torch.cat([z, _cvae_condition(m, c)], -1))

    plan = Plan([Graph("encoder", _Graph(model, encode), [_x(spec), cond], _gaussian_out(d, "q(z|x,c)"), "q(z|x,c)"),
                 _decoder_graph(model, lik, name, spec, [_z(d), cond], params, "p(x|z,c)")],
                _likelihood_info(lik, name), _prior_info(model))
    if model.prior_net is not None:
        plan.graphs.append(Graph("prior", _Graph(model, lambda m, c: m.prior_net(_cvae_condition(m, c)).chunk(2, -1)),
                                 [cond], _gaussian_out(d, "p(z|c)"), "the learned conditional prior p(z|c)"))
        plan.prior = {"name": "conditional", "doc": "z ~ p(z|c), a diagonal Gaussian (prior.onnx)"}
    return plan


def _m2_parts(m2: nn.Module) -> tuple[Callable, Callable, Callable]:
    """(q(y|x) probabilities, q(z|x,y) (mean, logvar), p(x|y,z)'s raw parameters) of an M2 model."""
    def classify(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(m2.classifier(x), dim=-1)

    def encode(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return m2.enc_rest(m2.enc_x(x) + m2.enc_y(y)).chunk(2, dim=-1)

    def params(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return m2.decoder(m2.dec_act(m2.dec_z(z) + m2.dec_y(y)))

    return classify, encode, params


def _plan_m2(model: nn.Module, spec: DataSpec) -> Plan:
    """M2, and M1+M2 (its inputs mapped through M1's encoder means, its outputs through M1's decoder)."""
    from .models.m1m2 import StackedM2

    stacked = isinstance(model, StackedM2)
    m2 = model.m2 if stacked else model
    k, d = m2.num_classes, m2.latent_dim
    classify, encode, params = _m2_parts(m2)
    if stacked:
        m1 = model.m1
        lik, name = m1.likelihood, m1.config.likelihood

        def feat(x: torch.Tensor) -> torch.Tensor:
            return m1.encoder(x)[0]

        def dec(m: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return m1.decoder(m2.likelihood.mean(params(z, y)))
    else:
        lik, name = m2.likelihood, m2.config.likelihood

        def feat(x: torch.Tensor) -> torch.Tensor:
            return x

        def dec(m: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return params(z, y)
    y = _label(k)
    plan = Plan([
        Graph("encoder", _Graph(model, lambda m, x, y_: encode(feat(x), y_)), [_x(spec), y],
              _gaussian_out(d, "q(z|x,y)"), "q(z|x,y) at the given class (classify first where it is unknown)"),
        _decoder_graph(model, lik, name, spec, [_z(d), y], dec,
                       "p(x|y,z)" + (" through M1: M1's decoder at M2's mean code E[z1|y,z]" if stacked else "")),
        Graph("classifier", _Graph(model, lambda m, x: (classify(feat(x)),)), [_x(spec)],
              [Port("probs", _batch((k,)), "class probabilities q(y|x)")],
              "q(y|x)" + (" on M1's posterior means E[z1|x]" if stacked else ""))],
        _likelihood_info(lik, name), {"name": m2.config.prior, "doc": "z ~ N(0, I), y uniform over the classes"})
    if stacked:
        plan.info["m1_latent_dim"] = int(m1.latent_dim)
    return plan


def _plan_completion(model: nn.Module, spec: DataSpec) -> Plan:
    d = model.latent_dim
    mask = Port("mask", _batch(spec.shape), "1 where a value is missing (to complete), 0 where it is given",
                role="mask")
    x = Port("x", _batch(spec.shape), "examples in model units; values at missing places are ignored (0 or NaN) "
             "except by the encoder, which reads the whole example", role="x")

    def encode(m: nn.Module, x_: torch.Tensor, mask_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return m.recognize(x_, mask_ != 0)

    def prior(m: nn.Module, x_: torch.Tensor, mask_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar, _ = m.prior_given(x_, mask_ != 0)
        return mu, logvar

    def params(m: nn.Module, z: torch.Tensor, x_: torch.Tensor, mask_: torch.Tensor) -> torch.Tensor:
        return m.generate(z, m.prior_given(x_, mask_ != 0)[2])

    plan = Plan([Graph("encoder", _Graph(model, encode), [x, mask], _gaussian_out(d, "q(z|x_given, x_missing)"),
                       "the recognition network q(z|x_given, x_missing) (training and scoring)"),
                 _decoder_graph(model, model.likelihood, model.config.likelihood, spec, [_z(d), x, mask], params,
                                "p(x|z, x_given): complete with mean where mask is 1, keep x where it is 0"),
                 Graph("prior", _Graph(model, prior), [x, mask], _gaussian_out(d, "p(z|x_given)"),
                       "the prior network p(z|x_given): to complete x, draw z from it and decode")],
                _likelihood_info(model.likelihood, model.config.likelihood),
                {"name": "p(z|x_given)", "doc": "the prior network, a diagonal Gaussian (prior.onnx)"},
                decoder_kind="completion")
    return plan


class _Directions(nn.Module):
    """The layers of a bidirectional ``nn.GRU``/``nn.LSTM`` as unidirectional one-layer copies
    (forward, reverse per layer), with the same weights."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        cells = []
        for layer in range(rnn.num_layers):
            for suffix in ("", "_reverse"):
                size = rnn.input_size if layer == 0 else 2 * rnn.hidden_size
                one = type(rnn)(size, rnn.hidden_size, batch_first=True)
                with torch.no_grad():
                    for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(one, f"{w}_l0").copy_(getattr(rnn, f"{w}_l{layer}{suffix}"))
                cells.append(one)
        self.cells = nn.ModuleList(cells)


def _sequence_encode(model: nn.Module, dirs: _Directions, x: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``RecurrentEncoder.forward`` without packed sequences (which no exporter takes): each example
    is read up to its last step with something observed, as packing does, by running the reverse
    direction on the example reversed within its length (a gather), and picking both directions'
    final states at that length."""
    enc = model.encoder
    m = mask.to(x.dtype)
    h = enc.inputs(x, m)  # (B, T, F)
    t = x.shape[1]
    steps = torch.arange(1, t + 1, device=x.device)
    seen = (m.amax(-1) > 0).to(torch.int64)  # (B, T)
    length = (seen * steps).amax(1).clamp(min=1)  # one past the last observed step (1 when none is)
    pos = steps - 1
    rev = torch.where(pos[None] < length[:, None], length[:, None] - 1 - pos[None], pos[None])  # (B, T), an involution
    last = (length - 1)[:, None, None]
    finals: list[torch.Tensor] = []
    for layer in range(enc.layers):
        fwd, bwd = dirs.cells[2 * layer], dirs.cells[2 * layer + 1]
        out_f, _ = fwd(h)
        idx = rev[..., None].expand(-1, -1, h.shape[-1])
        out_r, _ = bwd(h.gather(1, idx))
        w = out_f.shape[-1]
        finals = [out_f.gather(1, last.expand(-1, 1, w))[:, 0], out_r.gather(1, last.expand(-1, 1, w))[:, 0]]
        h = torch.cat([out_f, out_r.gather(1, rev[..., None].expand(-1, -1, w))], -1)
    return enc.head(torch.cat(finals, -1)).chunk(2, -1)


def _plan_sequence(model: nn.Module, spec: DataSpec) -> Plan:
    d = model.latent_dim
    tokens = spec.kind == "tokens"
    mask = Port("mask", _batch(spec.shape), "1 where a value is observed, 0 where it is missing or padding",
                role="mask")
    dirs = _Directions(model.encoder.rnn)
    holder = nn.ModuleDict({"model": model, "directions": dirs})

    def encode(h: nn.ModuleDict, x: torch.Tensor, mask_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _sequence_encode(h["model"], h["directions"], x, mask_)

    def params(h: nn.ModuleDict, z: torch.Tensor, x: torch.Tensor, mask_: torch.Tensor) -> torch.Tensor:
        return h["model"].decoder(z, x, mask_)

    step = "token" if tokens else "value"
    enc = Graph("encoder", _Graph(holder, encode), [_x(spec), mask], _gaussian_out(d, "q(z|x)"),
                "q(z|x): a bidirectional recurrent encoder reading each sequence up to its last observed step")
    dec = _decoder_graph(holder, model.likelihood, model.config.likelihood, spec, [_z(d), _x(spec), mask], params,
                         f"p(x_t | x_<t, z) for every step t, each fed the previous step's {step} from x "
                         "(teacher forcing): score x with it, or generate by calling it once per step")
    return Plan([enc, dec], _likelihood_info(model.likelihood, model.config.likelihood), _prior_info(model),
                decoder_kind="autoregressive", not_exported=[
        "free-running generation (each step's output fed back: a loop) is not a graph; decoder.onnx is "
        "teacher-forced (z, x, mask): generate by calling it once per step, filling in x"])


def plan(model: BaseModel) -> Plan:
    """What ``model`` exports (see the module docstring). Raises UsageError for a model the exporter
    does not know (a model registered outside vaekit)."""
    from .models.completion import CompletionVAE
    from .models.cvae import CVAE
    from .models.m1m2 import StackedM2
    from .models.m2 import M2
    from .models.sequence import _SequenceModel
    from .models.vae import VAE

    spec = model.spec
    if isinstance(model, (M2, StackedM2)):
        return _plan_m2(model, spec)
    if isinstance(model, CVAE):
        return _plan_cvae(model, spec)
    if isinstance(model, CompletionVAE):
        return _plan_completion(model, spec)
    if isinstance(model, _SequenceModel):
        if "y" in model.batch_fields:
            raise UsageError("ONNX export of a conditional sequence run (--model cvae on sequences) is not offered: "
                             "its graphs would need the label as an input, which the sequence exporter does not lay "
                             "out; export a --model vae or iwae sequence run, or use the run through vaekit itself")
        return _plan_sequence(model, spec)
    if isinstance(model, VAE):
        return _plan_vae(model, spec)
    raise UsageError(f"model {model.config.model!r} ({type(model).__name__}) cannot be exported to ONNX: the exporter "
                     "knows vaekit's models (vae, iwae, cvae, m2, completion, aae, avb, vaegan, sequence and two-layer "
                     "variants) and not how this one's networks are laid out")


# -- exporting and checking one graph ---------------------------------------------------------------------
def _require_onnx(exporter: str) -> None:
    """Import what ONNX export needs, or one line saying how to install it."""
    names = ["onnx", "onnxruntime"] + (["onnxscript"] if exporter == "dynamo" else [])
    for name in names:
        try:
            __import__(name)
        except ImportError:
            raise UsageError(f"ONNX export needs the {name} package, which is not installed: {INSTALL}") from None


def _example(port: Port, n: int, spec: DataSpec, gen: torch.Generator) -> torch.Tensor:
    """Inputs to trace and check a graph with: plausible values for each port's role."""
    shape = (n, *port.shape[1:])
    if port.dtype == "int64":
        return torch.randint(max(port.high, 1), shape, generator=gen)
    if port.role == "x" and spec.kind == "tokens":
        return torch.randint(int(spec.vocab_size or 2), shape, generator=gen).to(torch.float32)
    if port.role == "x" and spec.kind == "binary":
        return torch.bernoulli(torch.full(shape, 0.5), generator=gen)
    if port.role == "x" and spec.kind in ("8bit", "unit"):
        return torch.rand(shape, generator=gen)
    if port.role == "mask":
        m = (torch.rand(shape, generator=gen) < 0.7).to(torch.float32)
        if spec.is_sequence and n > 1:  # trailing steps with nothing observed (padding) in some examples
            m[0] = 1.0
            m[1, shape[1] // 2:] = 0.0
        return m
    return torch.randn(shape, generator=gen)


def examples(graph: Graph, n: int, spec: DataSpec, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A batch of ``n`` inputs for ``graph`` (seeded): what the export traces and checks with."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(_example(p, n, spec, gen) for p in graph.inputs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' deprecation and tracer warnings and log lines ("torchvision is not installed")
    are about their internals, not the user's run: silenced while exporting."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _to_onnx(graph: Graph, args: tuple[torch.Tensor, ...], exporter: str) -> bytes:
    """The graph as a serialised ONNX model with a dynamic batch axis on every input and output."""
    names_in = [p.name for p in graph.inputs]
    names_out = [p.name for p in graph.outputs]
    module = graph.module.eval()
    try:
        with _quiet(), torch.no_grad():
            if exporter == "torchscript":
                buf = io.BytesIO()
                torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSETS[exporter],
                                  input_names=names_in, output_names=names_out,
                                  dynamic_axes={n: {0: BATCH} for n in names_in + names_out}, do_constant_folding=True)
                return buf.getvalue()
            batch = torch.export.Dim(BATCH)
            program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSETS[exporter],
                                        input_names=names_in, output_names=names_out,
                                        dynamic_shapes={"inputs": tuple({0: batch} for _ in args)},
                                        external_data=False, verbose=False, report=False, optimize=True)
            return program.model_proto.SerializeToString()
    except Exception as e:  # the exporter's limits (an operator, a shape), said in one line; nothing is written
        other = EXPORTERS[1 - EXPORTERS.index(exporter)]
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise VaekitError(f"torch.onnx's {exporter} exporter could not export the {graph.name} ({type(e).__name__}: "
                          f"{first}); nothing written; try --exporter {other}") from e


def _check(graph: Graph, blob: bytes, spec: DataSpec) -> dict[str, Any]:
    """Validate the ONNX model, make sure it is one self-contained file, and compare onnxruntime's
    outputs with PyTorch's at ``CHECK_BATCHES``; returns the largest differences."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load_from_string(blob)
    onnx.checker.check_model(proto)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise VaekitError(f"the exported {graph.name} refers to external data files; please report this")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in CHECK_BATCHES:
        args = examples(graph, n, spec, seed=n)
        with torch.no_grad():
            ref = graph.module(*args)
        got = session.run([p.name for p in graph.outputs], {p.name: a.numpy() for p, a in zip(graph.inputs, args)})
        for port, r, g in zip(graph.outputs, ref, got):
            r = r.detach().numpy()
            if g.shape != r.shape or not np.allclose(g, r, atol=CHECK_ATOL, rtol=CHECK_RTOL):
                diff = float(np.abs(g - r).max()) if g.shape == r.shape else float("nan")
                raise VaekitError(f"the exported {graph.name}'s output {port.name} differs from PyTorch's at batch "
                                  f"size {n} (shape {g.shape} vs {r.shape}, max |diff| {diff:.3g}); nothing written "
                                  "(please report this)")
            worst = max(worst, float(np.abs(g - r).max()) if r.size else 0.0)
    return {"batch_sizes": list(CHECK_BATCHES), "max_abs_diff": worst}


# -- the data: how raw inputs become model inputs ----------------------------------------------------------
def data_description(spec: DataSpec, source: dict[str, Any]) -> dict[str, Any]:
    """export.json's "data": the example shape and kind, and the steps (recorded with the run) that
    turn raw data into the model's x (and back, for the decoder's outputs)."""
    kind_of_source = source.get("kind_of_source")
    d: dict[str, Any] = {"shape": list(spec.shape), "kind": spec.kind, "source": source.get("source"),
                         "kind_of_source": kind_of_source}
    steps: list[str] = []
    if spec.is_image:
        d["layout"] = "channels, height, width (NCHW with the batch)"
        d["color"] = source.get("color")
        if kind_of_source == "images":
            steps.append(f"read each image as {source.get('color') or 'L'} and resize it to "
                         f"{spec.shape[1]}x{spec.shape[2]}")
    raw_kind = source.get("kind", spec.kind)
    if source.get("source") == "digits":
        steps.append("scikit-learn's digits: divide the values 0..16 by 16")
    elif raw_kind == "8bit":
        steps.append("divide 8-bit values by 255 (to [0, 1]; the decoder's mean is in these units too)")
    std = source.get("standardize")
    if std:
        d["standardize"] = std
        d["columns"] = source.get("columns")
        steps.append("subtract standardize.mean and divide by standardize.std, per value of the flattened example "
                     "(columns in data.columns order); the decoder's mean comes back in these units: multiply by "
                     "std and add mean")
    if source.get("binarize", "none") != "none":
        d["binarize"] = source["binarize"]
        steps.append("binarize: the model was trained on 0/1 values (vaekit draws x ~ Bernoulli(grey level) with a "
                     "fixed seed; thresholding at 0.5 is the deterministic alternative)")
    if source.get("scaler"):
        d["scaler"] = source["scaler"]
        d["channels"] = source.get("channels")
        steps.append("sequences (steps, channels): subtract scaler.mean and divide by scaler.std per channel "
                     "(the decoder's mean: multiply by std and add mean); missing values: set x to 0 and mask to 0")
    if kind_of_source == "series":
        d["window"], d["stride"] = source.get("window"), source.get("stride")
        steps.append("cut the series (rows in time order) into windows of data.window rows, data.stride apart")
    if spec.kind == "tokens":
        d.update(tokens=source.get("tokens"), vocab=source.get("vocab"), max_len=source.get("max_len"))
        steps.append(f"split each sentence into {source.get('tokens')}s, map them to ids with data.vocab (unknown: "
                     "<unk>), append <eos>, cut or pad to the length; mask 1 on tokens, 0 on padding; ids as float32")
    elif spec.is_sequence and not source.get("scaler"):
        steps.append("mask: 1 where a value is observed, 0 where it is missing (x: 0 there)")
    if source.get("classes") is not None:
        d["classes"] = source.get("classes")
        d["label_column"] = source.get("label_column")
    if spec.cond_shape is not None:
        d["condition"] = {"shape": list(spec.cond_shape), "kind": source.get("condition_kind"),
                          "columns": source.get("condition_columns"),
                          "standardize": source.get("condition_standardize")}
        steps.append("condition c: " + ("subtract condition.standardize.mean and divide by its std"
                                        if source.get("condition_standardize") else "as given (images: divide 8-bit "
                                                                                    "values by 255)"))
    if not steps:
        steps.append("none: the values go in as they are")
    d["preprocessing"] = steps
    return d


# -- the whole export ---------------------------------------------------------------------------------------
def check_out_dir(out: str | Path) -> Path:
    """Refuse an export folder that cannot be one, before any work: a file, or a missing parent."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {p} is a file; give a folder (for encoder.onnx, decoder.onnx and export.json)")
    if not p.exists() and not p.parent.is_dir():
        raise UsageError(f"--out {p}: folder {p.parent} does not exist")
    return p


def export_model(model: BaseModel, out_dir: str | Path, *, source: dict[str, Any] | None = None,
                 run: dict[str, Any] | None = None, exporter: str = "torchscript") -> dict[str, Any]:
    """Export ``model`` (any device; exported on the CPU, float32) into ``out_dir`` and return the
    export.json it wrote. ``source``: the data source description of the run (the scaling of the
    inputs); ``run``: what to record about the run. Every graph is exported and checked before any
    file is written; the folder is created whole, or its files replaced one by one (export.json
    last, stale graph files of an earlier export removed)."""
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    out = check_out_dir(out_dir)
    _require_onnx(exporter)
    import onnx
    import onnxruntime

    model = copy.deepcopy(model).to("cpu", torch.float32).eval()  # the caller's model stays where and as it was
    spec = model.spec
    p = plan(model)
    size = 4 * sum(t.numel() for t in model.parameters())
    if size > MAX_BYTES:
        raise UsageError(f"this model's weights ({size / 2**30:.1f} GiB) are too large for single-file ONNX graphs "
                         "(2 GiB each)")
    blobs: dict[str, bytes] = {}
    graphs: dict[str, Any] = {}
    for g in p.graphs:
        blobs[g.name] = _to_onnx(g, examples(g, 2, spec), exporter)
        graphs[g.name] = {"file": f"{g.name}.onnx", "doc": g.doc, "inputs": [q.describe() for q in g.inputs],
                          "outputs": [q.describe() for q in g.outputs], "check": _check(g, blobs[g.name], spec)}
    cfg = model.config
    doc: dict[str, Any] = {
        "format": "onnx", "vaekit_version": __version__, "exporter": exporter, "opset": OPSETS[exporter],
        "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__, "run": run or {},
        "model": cfg.model, "class": type(model).__name__, "arch": cfg.arch, "hidden": cfg.hidden,
        "activation": cfg.activation, "latent_dim": int(model.latent_dim), "latent_dim2": int(cfg.latent_dim2),
        "dtype": "float32", "batch_axis": BATCH, "likelihood": p.likelihood, "prior": p.prior,
        "encoder_kind": p.encoder_kind, "decoder_kind": p.decoder_kind,
        "partial": bool(p.not_exported), "not_exported": p.not_exported,
        "graphs": graphs, "data": data_description(spec, source or {}), **p.info}
    _write(out, blobs, doc)
    return doc


def _write(out: Path, blobs: dict[str, bytes], doc: dict[str, Any]) -> None:
    """A new folder appears whole (built beside it, then renamed); an existing one gets each file
    replaced atomically, export.json last, and stale graph files of an earlier export removed."""
    if not out.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for name, blob in blobs.items():
                (tmp / f"{name}.onnx").write_bytes(blob)
            write_json(tmp / "export.json", doc)
            for f in tmp.iterdir():
                f.chmod(0o666 & ~_umask())
            tmp.chmod(0o777 & ~_umask())
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    for name, blob in blobs.items():
        with atomic_path(out / f"{name}.onnx") as t:
            t.write_bytes(blob)
    write_json(out / "export.json", doc)
    for name in GRAPH_FILES:
        if name not in blobs:
            (out / f"{name}.onnx").unlink(missing_ok=True)


def export_onnx(run_dir: str | Path, out_dir: str | Path | None = None, *, exporter: str = "torchscript"
                ) -> dict[str, Any]:
    """Export the run at ``run_dir`` (its best weights) to ONNX in ``out_dir`` (default
    ``run_dir/onnx``): encoder.onnx, decoder.onnx (and prior.onnx / classifier.onnx where the model
    has them) and export.json, which is returned. Raises CheckpointError for a missing or broken
    run, UsageError for a bad folder, a model that cannot be exported or missing onnx packages."""
    from .apps.common import open_run
    from .run import read_config

    read_config(run_dir)  # a missing or broken run is named as such, before the folder's checks
    out = check_out_dir(Path(run_dir) / "onnx" if out_dir is None else out_dir)
    _require_onnx(exporter)
    loaded = open_run(run_dir, device="cpu")
    try:
        recorded = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        recorded = {}
    run = {"dir": str(Path(run_dir).resolve()), "vaekit_version": recorded.get("vaekit_version"),
           "created": recorded.get("created"), "weights": "model.safetensors"}
    return export_model(loaded.model, out, source=loaded.source, run=run, exporter=exporter)


def summary(doc: dict[str, Any]) -> str:
    """The graphs in one line for the command's output: "encoder.onnx: x, y -> mean, logvar; ..."."""
    parts = [f"{g['file']}: {', '.join(p['name'] for p in g['inputs'])} -> {', '.join(p['name'] for p in g['outputs'])}"
             for g in doc["graphs"].values()]
    return "; ".join(parts)


__all__ = ["EXPORTERS", "FORMATS", "Graph", "Plan", "Port", "data_description", "examples", "export_model",
           "export_onnx", "plan", "summary"]
