"""The importance weighted autoencoder (Burda, Grosse and Salakhutdinov 2015)."""

from __future__ import annotations

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
    """

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if config.k < 1:
            raise ValueError("IWAE needs k >= 1")

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """-(k-sample bound) averaged over the batch, plus the usual ELBO terms (nats per example).

        "elbo" is the mean log weight (the ELBO's estimate from the same k samples), "iwae" the
        k-sample bound itself (>= elbo in expectation); "recon" and "kl" are their Monte Carlo parts.
        """
        log_px, log_p, log_q = self.log_weight_terms(x, self.config.k)  # each (k, B)
        c = self.config.beta * kl_weight
        bound_train = log_mean_exp(log_px + c * (log_p - log_q), dim=0)  # (B,)
        log_w = (log_px + log_p - log_q).detach()
        recon = -log_px.detach().mean()
        kl = (log_q - log_p).detach().mean()
        return {"loss": -bound_train.mean(), "elbo": log_w.mean(), "recon": recon, "kl": kl,
                "iwae": log_mean_exp(log_w, dim=0).mean()}
