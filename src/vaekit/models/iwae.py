"""The importance weighted autoencoder (Burda, Grosse and Salakhutdinov 2015)."""

from __future__ import annotations

from typing import Any

import torch

from ..data.spec import DataSpec
from ..functional.bounds import log_mean_exp
from .base import MODELS, ModelConfig
from .vae import VAE


@MODELS.register("iwae")
class IWAE(VAE):
    """Same networks as the VAE; trained on the k-sample bound log (1/k) sum_i w_i.

    All k samples of a batch go through the decoder as one (k * B)-row batch and the bound is a
    log-sum-exp, so it is stable for any k. ``config.k`` = 1 gives the VAE's ELBO.
    KL warm-up and beta scale log p(z) - log q(z|x) inside each weight (the usual annealed IWAE).
    ``config.gradient_estimator`` = "dreg" trains the same bound with doubly reparameterised
    encoder gradients (see ``loss``); validation and evaluation are unchanged.
    """

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if config.k < 1:
            raise ValueError("IWAE needs k >= 1")

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0, **fields: Any) -> dict[str, torch.Tensor]:
        """-(k-sample bound) averaged over the batch, plus the usual ELBO terms (nats per example).

        "elbo" is the mean log weight (the ELBO's estimate from the same k samples), "iwae" the
        k-sample bound itself (>= elbo in expectation); "recon" and "kl" are their Monte Carlo parts.
        """
        path = _PathScale() if self.config.gradient_estimator == "dreg" and torch.is_grad_enabled() else None
        log_px, log_p, log_q = self.log_weight_terms(x, self.config.k, path, **fields)  # each (k, B); fields: a
        # sequence model's mask
        c = self.config.beta * kl_weight
        log_w_train = log_px + c * (log_p - log_q)
        bound_train = log_mean_exp(log_w_train, dim=0)  # (B,)
        if path is None:
            loss = -bound_train.mean()
        else:
            # Doubly reparameterised gradients (Tucker et al. 2019). With w~ the normalised weights,
            # the decoder's gradient is sum_i w~_i d log w_i / d theta, as for the plain bound; the
            # encoder's is sum_i (w~_i - c w~_i (1 - w~_i)) d log w_i / d z_i  d z_i / d phi (w~_i^2
            # at c = 1), with log q's parameters held fixed: the score-function part of the plain
            # estimator, rewritten by reparameterising it a second time. The surrogate below has the
            # bound's value; the hooks ``path`` put on the samples apply the extra factor.
            w = torch.softmax(log_w_train.detach(), dim=0)
            path.factor = (1.0 - c) + c * w
            surrogate = (w * log_w_train).sum(0)
            loss = -(bound_train.detach() + surrogate - surrogate.detach()).mean()
        log_w = (log_px + log_p - log_q).detach()
        recon = -log_px.detach().mean()
        kl = (log_q - log_p).detach().mean()
        return {"loss": loss, "elbo": log_w.mean(), "recon": recon, "kl": kl,
                "iwae": log_mean_exp(log_w, dim=0).mean()}


class _PathScale:
    """Marks reparameterised samples z (k, B, D) or (k * B, D), sample-major: the gradient that
    reaches a marked sample is multiplied by ``factor`` (k, B), set before the backward pass."""

    def __init__(self) -> None:
        self.factor: torch.Tensor | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = z.view_as(z)  # an alias of its own, so only these uses of z are rescaled
        if z.requires_grad:
            z.register_hook(self._scale)
        return z

    def _scale(self, g: torch.Tensor) -> torch.Tensor:
        assert self.factor is not None, "the loss sets the factor before backward"
        return g * self.factor.reshape(*g.shape[:-1], 1)
