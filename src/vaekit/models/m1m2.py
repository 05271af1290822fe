"""M1+M2 (Kingma et al. 2014): the semi-supervised M2 trained on the codes z1 of a trained VAE (M1).

The stacked generative model is p(y) p(z2) p(z1|y,z2) p(x|z1): M1's decoder below M2, which
models M1's codes as data (a Gaussian likelihood on z1 by default). M1 is frozen; only M2 trains.
The model works on x, as any other: it reads images (or rows) and maps them through M1's encoder
itself, so evaluation, classification and generation need no separate feature files, and the
run's weights hold both models (a run stays usable when the M1 run is moved or deleted).

- Training and the bounds draw z1 ~ q(z1|x) afresh each time (Kingma et al.'s M1 features are
  samples; each epoch sees new ones, which also regularises the classifier on the few labels).
- ``classify`` uses the posterior mean E[z1|x] (deterministic predictions), as does the
  validation accuracy that picks the best epoch.
- The bound on log p(x): log p(x|z1) + [M2's marginal bound on log p(z1)] - log q(z1|x), with
  z1 ~ q(z1|x); ``log_weights`` nests M2's exact-in-y importance weights inside M1's, so
  exp(weight) is an unbiased estimate of p(x) and the NLL is an honest estimate of the stack's.
- Generation decodes M2's mean code E[z1|y,z2] through M1's decoder (``sample``, ``decode``).

``config.extra["features"]`` describes M1: {"model": its ModelConfig dict, "spec": its DataSpec
dict, "likelihood": M2's likelihood of z1, "run": where it came from}; ``vaekit.features`` fills it
from ``--features RUN_DIR`` and copies M1's weights in.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from torch.distributions import Distribution

from ..data.spec import DataSpec
from ..errors import UsageError
from ..functional.kl import gaussian_log_prob_at_eps
from .base import ON_FEATURES, BaseModel, ModelConfig, build_model
from .m2 import M2

#: Models whose codes M2 can be stacked on: one Gaussian stochastic layer with encoder/decoder.
FEATURE_MODELS = ("vae", "iwae")


class StackedM2(BaseModel):
    """M2 on the codes of a frozen M1. Shapes: x (B, *spec.shape); y (B,) int64, -1 unlabelled;
    z1 (B, D1) M1's codes; z (B, D) M2's latent. Same methods as ``models.m2.M2``."""

    batch_fields = ("y",)
    selection_metric = "val_accuracy"

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        feat = config.extra["features"]
        m1_cfg, m1_spec = ModelConfig(**feat["model"]), DataSpec.from_dict(feat["spec"])
        if m1_cfg.model not in FEATURE_MODELS or m1_cfg.latent_dim2:
            raise UsageError(f"--features needs a run of a one-layer {' or '.join(FEATURE_MODELS)} (M1), "
                             f"not {m1_cfg.model!r}" + (" with --latent-dim2" if m1_cfg.latent_dim2 else ""))
        if m1_spec.shape != spec.shape:
            raise UsageError(f"--features: that run's examples have shape {m1_spec.shape}, this data's {spec.shape}")
        if config.arch != "mlp":
            raise UsageError("--features: M2 models M1's codes, which are vectors; use --arch mlp")
        self.m1 = build_model(m1_cfg, m1_spec)
        self.m1.requires_grad_(False)
        inner = dataclasses.replace(config, model="m2", likelihood=feat.get("likelihood", "gaussian"),
                                    extra={k: v for k, v in config.extra.items() if k != "features"})
        self.m2 = build_model(inner, DataSpec((m1_cfg.latent_dim,), "continuous", spec.num_classes))
        self.labelled_per_batch = self.m2.labelled_per_batch
        self.num_classes, self.latent_dim = self.m2.num_classes, self.m2.latent_dim

    check_data = M2.check_data

    def train(self, mode: bool = True) -> "StackedM2":
        super().train(mode)
        self.m1.eval()  # frozen: always in evaluation mode
        return self

    # -- M1's side ------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """M1's posterior means E[z1|x]: (B, D1)."""
        return self.m1.encode(x)[0]

    def _m1_terms(self, x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, ...]:
        """z1 ~ q(z1|x) ((B, D1), or (k, B, D1) for k draws) with log p(x|z1) and log q(z1|x)
        ((B,) or (k, B)); no gradient (M1 is frozen)."""
        with torch.no_grad():
            mu, logvar = self.m1.encode(x)
            eps = torch.randn((k or 1, *mu.shape), device=mu.device, dtype=mu.dtype)
            z1 = mu + torch.exp(0.5 * logvar) * eps
            log_q = gaussian_log_prob_at_eps(eps, logvar).sum(-1)
            log_px = self.m1.likelihood.log_prob_k(self.m1.decoder(z1.reshape(-1, mu.shape[-1])), x)
        if k is None:
            return z1[0], log_px[0], log_q[0]
        return z1, log_px, log_q

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """M2's decoder starts at the marginal of M1's codes of ``x`` (M1 is already trained)."""
        self.m2.init_from_data(self.features(x))

    # -- training and evaluation ----------------------------------------------------------------
    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0, y: torch.Tensor | None = None
             ) -> dict[str, torch.Tensor]:
        """M2's objective on z1 ~ q(z1|x); "elbo", "recon", "kl" are the stack's bound on log p(x)
        ("recon" is M1's -log p(x|z1)); "accuracy" (outside training) classifies E[z1|x]."""
        z1, log_px, log_q = self._m1_terms(x)
        out = self.m2.loss(z1, kl_weight=kl_weight, y=y)
        recon = -log_px.mean()
        elbo = out["elbo"] - recon - log_q.mean()
        out.update(elbo=elbo, recon=recon, kl=-(elbo + recon))
        if y is not None and not self.training and bool((y >= 0).any()):
            lab = y >= 0
            pred = self.m2.classifier(self.features(x[lab])).argmax(-1)
            out["accuracy"] = (pred == y[lab]).to(x.dtype).mean()
        return out

    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per example (labels ignored): "recon" -log p(x|z1) (B,), "kl" (B,) the rest of the
        stack's bound, "kl_dims" (B, D) M2's z part, "kl_extra" (B,) = "kl" minus that, "mu" (B, D)."""
        z1, log_px, log_q = self._m1_terms(x)
        t = self.m2.elbo_terms(z1)
        kl = t["recon"] + t["kl"] + log_q
        return {"recon": -log_px, "kl": kl, "kl_dims": t["kl_dims"], "kl_extra": kl - t["kl_dims"].sum(-1),
                "mu": t["mu"]}

    def log_weights(self, x: torch.Tensor, k: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z1) + w2(z1) - log q(z1|x) for k draws z1 ~ q(z1|x), w2 one of M2's importance
        log weights of z1 (class summed out exactly): (k, B); exp of it is unbiased for p(x)."""
        z1, log_px, log_q = self._m1_terms(x, k)
        w2 = self.m2.log_weights(z1.reshape(-1, z1.shape[-1]), 1)[0].view(k, len(x))
        return log_px + w2 - log_q

    # -- applications -----------------------------------------------------------------------------
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|E[z1|x]): class probabilities (B, K)."""
        return self.m2.classify(self.features(x))

    def fill_labels(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Labels (B,): y where given, M2's most likely class of E[z1|x] where y is -1 or None."""
        return self.m2.fill_labels(self.features(x), y)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """M2's q(z|z1,y) at z1 = E[z1|x] (without y: moment-matched over q(y|x)), each (B, D)."""
        return self.m2.encode(self.features(x), y)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """p(x | z1 = E[z1|y,z]) (without y: z1 averaged over the classes); event shape spec.shape."""
        return self.m1.decode(self.m2.decode_mean(z, y))

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """M1's decoder mean at z1 = E[z1|y,z]: (B, *spec.shape)."""
        return self.m1.decode_mean(self.m2.decode_mean(z, y))

    @torch.no_grad()
    def sample(self, n: int, *, y: torch.Tensor | None = None, temperature: float = 1.0, mean: bool = True
               ) -> torch.Tensor:
        """n examples (n, *spec.shape) of classes ``y`` (n,) (drawn from p(y) when None): M2's
        mean code for z ~ p(z), through M1's decoder (its mean, or a draw if mean=False)."""
        z1 = self.m2.sample(n, y=y, temperature=temperature, mean=True)
        params = self.m1.decoder(z1)
        return self.m1.likelihood.mean(params) if mean else self.m1.likelihood.sample(params)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x -> E[z1|x] -> M2's reconstruction of it -> M1's decoder mean: (B, *spec.shape)."""
        return self.m1.decode_mean(self.m2.reconstruct(self.features(x), y))


ON_FEATURES["m2"] = StackedM2
