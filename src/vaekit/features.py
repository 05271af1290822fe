"""``--features RUN_DIR``: train M2 on the codes of a trained VAE (M1+M2, Kingma et al. 2014).

The new run models the same data as the M1 run; its model (``models.m1m2.StackedM2``) holds a
frozen copy of M1 and maps every input through M1's encoder itself, so ``evaluate``, ``classify
--input``, ``sample --label`` and the rest work on the run's own data (images in, images out)
with nothing else to keep. This module checks the M1 run against the data, records M1's
configuration in the new model's config (``extra["features"]``) and copies M1's weights in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import RunConfig
from .data.datasets import Data
from .errors import UsageError
from .models.base import ON_FEATURES, BaseModel, build_model
from .models.m1m2 import FEATURE_MODELS


def _describe(source: dict, shape: tuple[int, ...]) -> str:
    return f"{source.get('source', '?')} (examples of shape {tuple(shape)})"


def build_on_features(cfg: RunConfig, data: Data) -> BaseModel:
    """The model of a new M1+M2 run: check ``cfg.data.features`` (a run directory) against
    ``data``, fill ``cfg.model.extra["features"]`` and ``cfg.model.likelihood`` (M1's, the
    likelihood of x in the stack), build the model and load M1's best weights into it.

    Raises UsageError (one line) when the model is not m2, the run is not a one-layer VAE/IWAE,
    or it was trained on other data (another source or example shape); CheckpointError when
    the directory is not a run.
    """
    from .run import load, read_config

    run_dir = cfg.data.features
    if run_dir is None:
        raise UsageError("model.extra.features is filled in by --features RUN_DIR; give --features instead")
    if cfg.model.model not in ON_FEATURES:
        raise UsageError(f"--features trains M2 on a trained VAE's codes (M1+M2): use --model "
                         f"{' or '.join(sorted(ON_FEATURES))}, not {cfg.model.model!r}")
    m1_cfg, m1_spec, m1_source = read_config(run_dir)
    if m1_cfg.model.model not in FEATURE_MODELS or m1_cfg.model.latent_dim2:
        raise UsageError(f"--features {run_dir} is a {m1_cfg.model.model!r} run"
                         + (" with two stochastic layers" if m1_cfg.model.latent_dim2 else "")
                         + f"; M1 must be a one-layer {' or '.join(FEATURE_MODELS)} run")
    if m1_source.get("source") != data.source.get("source") or m1_spec.shape != data.spec.shape:
        raise UsageError(f"--features {run_dir} was trained on {_describe(m1_source, m1_spec.shape)}, but this "
                         f"run's data is {_describe(data.source, data.spec.shape)}; give the --data that run "
                         "was trained on, or train M1 on this data first")
    m1_lik = m1_cfg.model.likelihood
    if cfg.model.likelihood not in (None, m1_lik):
        raise UsageError(f"--likelihood: with --features the likelihood of x is M1's ({m1_lik}); drop --likelihood")
    cfg.model.likelihood = m1_lik
    cfg.model.extra = {**cfg.model.extra, "features": {
        "run": str(Path(run_dir).resolve()), "model": dataclasses.asdict(m1_cfg.model), "spec": m1_spec.to_dict(),
        "likelihood": cfg.model.extra.get("features_likelihood", "gaussian")}}
    model = build_model(cfg.model, data.spec)
    model.m1.load_state_dict(load(run_dir).state_dict())
    return model
