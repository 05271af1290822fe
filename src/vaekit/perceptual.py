"""``--recon-loss perceptual --feature-net NET``: train a VAE on the pixel log-likelihood plus the
feature-space distance of DFC-VAE (Hou et al. 2017) in a frozen feature network.

This module checks the settings and the feature net against the data, records what rebuilds the
net in the model's config (``extra["perceptual"]``: its metadata, weight, source path and
fingerprint) and copies its weights into the model (``modules.perceptual``). The weights are then
part of every checkpoint of the run, so ``vaekit.load`` and every verb work without NET.
Not to be confused with ``--features RUN_DIR`` (M1+M2, ``vaekit.features``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .data.datasets import Data
from .errors import UsageError
from .models.base import BaseModel, build_model

RECON_LOSSES = ("likelihood", "perceptual")
#: models whose loss adds the perceptual term (``models.vae.VAE.loss``)
PERCEPTUAL_MODELS = ("vae",)


def check_recon_loss(cfg: RunConfig) -> bool:
    """Validate --recon-loss, --feature-net and --perceptual-weight together; True for a perceptual
    run. One-line UsageError naming the fix otherwise."""
    t = cfg.train
    if t.recon_loss not in RECON_LOSSES:
        raise UsageError(f"unknown --recon-loss {t.recon_loss!r}; valid: {', '.join(RECON_LOSSES)}")
    if t.recon_loss == "likelihood":
        if t.feature_net is not None:
            raise UsageError("--feature-net is the network of --recon-loss perceptual; add --recon-loss perceptual "
                             "or drop --feature-net")
        return False
    if t.feature_net is None:
        raise UsageError("--recon-loss perceptual needs --feature-net NET: a directory written by "
                         "`vaekit features --data DATA --out NET`, or a classifier exported to ONNX (NET.onnx)")
    if not t.perceptual_weight > 0:
        raise UsageError(f"--perceptual-weight must be positive, got {t.perceptual_weight}")
    m = cfg.model
    if m.model not in PERCEPTUAL_MODELS or m.latent_dim2 or m.extra.get("features") or cfg.data.features:
        raise UsageError(f"--recon-loss perceptual is offered by --model {' or '.join(PERCEPTUAL_MODELS)} "
                         f"(one stochastic layer), not {m.model!r}" + (" with --latent-dim2" if m.latent_dim2 else ""))
    return True


def file_fingerprint(path: Path, beside: list[str] | None = None) -> str:
    """sha256 of a file, or of a directory's files (name and content, sorted); ``beside``: names of
    further files in the same folder that belong to it (an ONNX file's external data)."""
    h = hashlib.sha256()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    files += [path.parent / name for name in beside or [] if (path.parent / name).is_file()]
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def build_perceptual(cfg: RunConfig, data: Data) -> BaseModel:
    """The model of a new perceptual run: load ``cfg.train.feature_net``, check its input shape
    against ``data``, fill ``cfg.model.extra["perceptual"]``, build the model and copy the net's
    weights in. Raises UsageError / CheckpointError (one line) before anything is written."""
    from .apps.feature_net import load_feature_net

    path = Path(cfg.train.feature_net).expanduser()
    net, meta = load_feature_net(path)
    shape = tuple(int(s) for s in meta["input_shape"])
    if shape != tuple(data.spec.shape):
        raise UsageError(f"--feature-net {path} takes inputs of shape {shape}, but this run's data "
                         f"({data.source.get('source')}) has examples of shape {tuple(data.spec.shape)}; train one "
                         f"on this data: vaekit features --data {data.source.get('source')}"
                         + (f" --image-size {data.source['image_size']}" if data.source.get("image_size") else "")
                         + " --out NET")
    net_meta: dict[str, Any] = {k: meta[k] for k in ("architecture", "input_shape", "num_classes") if k in meta}
    net_meta["arch_args"] = meta.get("arch_args") or {}
    for k in ("dataset", "test_accuracy", "format"):
        if k in meta:
            net_meta[k] = meta[k]
    cfg.model.extra = {**cfg.model.extra, "perceptual": {
        "weight": float(cfg.train.perceptual_weight), "net": net_meta,
        "source": str(path.resolve()), "fingerprint": file_fingerprint(path, meta.get("external_data"))}}
    model = build_model(cfg.model, data.spec)
    with torch.no_grad():
        theirs = net.state_dict()
        for name, buf in model.perceptual.net.state_dict().items():
            buf.copy_(theirs[name])
    return model
