"""Two stochastic layers (Burda, Grosse and Salakhutdinov 2015, the second architecture).

Inference  q(z1, z2 | x) = q(z1 | x) q(z2 | z1);  generative  p(x, z1, z2) = p(z2) p(z1 | z2) p(x | z1).
Every latent conditional is a diagonal Gaussian from an MLP (tanh in the paper), p(z2) = N(0, I),
and p(x | z1) is the configured likelihood. The paper's sizes: x -> [200, 200] -> z1 (100) ->
[100, 100] -> z2 (50), mirrored in the generative model
(``--hidden 200,200 --latent-dim 100 --latent-dim2 50 --hidden2 100,100 --activation tanh``).

Choices, for applications and metrics:
- The model's latent space is z1: ``encode`` returns q(z1|x)'s (mu, logvar), ``decode`` takes z1,
  ``latent_dim`` is D1. z1 carries what x's reconstruction needs; interpolation and attribute
  edits there decode directly. ``sample`` walks the whole generative chain from z2.
- The KL term has no closed form (q(z2|z1) depends on a sampled z1), so it is the Monte Carlo
  log q(z1, z2 | x) - log p(z1, z2) at the drawn sample. Per dimension ("kl_dims", D1 + D2
  columns: z1's first, then z2's) it is log q_d - log p_d of that dimension's Gaussian factor;
  the columns sum to the KL, and a single example's entry can be negative.
- Active units ("mu" of ``elbo_terms``, D1 + D2 columns): E_q[z1|x] = mu1(x) exactly, and for z2
  the plug-in mu2(mu1(x)) (q(z2|z1)'s mean at z1's posterior mean) in place of E_q[z2|x].
"""

from __future__ import annotations

from typing import Callable

import torch

from ..data.spec import DataSpec
from ..errors import UsageError
from ..functional.kl import gaussian_log_prob, gaussian_log_prob_at_eps, standard_normal_log_prob
from ..modules.blocks import MLPEncoder
from ..modules.priors import PRIORS, StandardNormalPrior
from .base import TWO_LAYER, ModelConfig
from .iwae import IWAE
from .vae import VAE

class TwoLayerVAE(VAE):
    """The VAE with a second stochastic layer; built by ``build_model`` when ``latent_dim2`` > 0.

    Shapes: x (B, *spec.shape); z1 (B, D1) with D1 = config.latent_dim; z2 (B, D2) with
    D2 = config.latent_dim2. Loss and terms are in nats per example, as for the VAE.
    """

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)  # encoder q(z1|x), decoder p(x|z1), likelihood
        d1, d2, hidden2 = config.latent_dim, config.latent_dim2, list(config.hidden2 or [])
        if d2 < 1 or not hidden2:
            raise ValueError("TwoLayerVAE needs latent_dim2 >= 1 and hidden2 (use build_model)")
        self.prior = PRIORS.get(config.prior)(d2)
        if not isinstance(self.prior, StandardNormalPrior):
            raise UsageError(f"--latent-dim2 needs the standard-normal prior, got {config.prior!r}")
        self.encoder2 = MLPEncoder((d1,), d2, hidden2, config.activation)  # q(z2|z1)
        self.decoder2 = MLPEncoder((d2,), d1, hidden2[::-1], config.activation)  # p(z1|z2)
        self.latent_dim2 = d2

    # -- the shared sampling pass ------------------------------------------------------------------
    def _pass(self, x: torch.Tensor, k: int, path: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> dict[str, torch.Tensor]:
        """k reparameterised draws (z1, z2) ~ q per example, all in one batch of k * B rows.

        Returns "log_px" (k, B), and per dimension "log_q", "log_p" (k, B, D1 + D2), nats.
        ``path``: as in ``VAE.log_weight_terms``; every use of z1 and z2 in the log weights goes
        through it (z2's construction from z1 does not, so each sample path is marked once), and
        log q is evaluated with q's parameters detached but z1 -> q(z2|z1) kept.
        """
        mu1, lv1 = self.encoder(x)  # (B, D1)
        eps1 = torch.randn(k, *mu1.shape, device=mu1.device, dtype=mu1.dtype)
        z1 = mu1 + torch.exp(0.5 * lv1) * eps1  # (k, B, D1)
        z1f = z1.reshape(-1, mu1.shape[-1])  # (k * B, D1), sample-major
        mu2, lv2 = self.encoder2(z1f)  # (k * B, D2)
        eps2 = torch.randn_like(mu2)
        z2 = mu2 + torch.exp(0.5 * lv2) * eps2
        shape = (k, mu1.shape[0], -1)
        if path is None:
            log_q = torch.cat([gaussian_log_prob_at_eps(eps1, lv1), gaussian_log_prob_at_eps(eps2, lv2).view(shape)], -1)
        else:
            z1, z2 = path(z1), path(z2)
            z1f = z1.reshape(-1, mu1.shape[-1])
            frozen = {n: p.detach() for n, p in self.encoder2.named_parameters()}
            mu2s, lv2s = torch.func.functional_call(self.encoder2, frozen, (z1f,))
            log_q = torch.cat([gaussian_log_prob(z1, mu1.detach(), lv1.detach()),
                               gaussian_log_prob(z2, mu2s, lv2s).view(shape)], -1)
        pm1, plv1 = self.decoder2(z2)  # p(z1|z2): (k * B, D1)
        log_p = torch.cat([gaussian_log_prob(z1f, pm1, plv1).view(shape), standard_normal_log_prob(z2).view(shape)], -1)
        log_px = self.likelihood.log_prob_k(self.decoder(z1f), x)  # (k, B)
        return {"log_px": log_px, "log_q": log_q, "log_p": log_p}

    # -- training objective ---------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Negative ELBO (one sample of z1, z2) with beta and free bits, nats per example.

        As ``VAE.loss`` with the Monte Carlo KL per dimension (see the module notes); free bits
        clamp each dimension's batch-mean KL.
        """
        t = self._pass(x, 1)
        recon = -t["log_px"][0].mean()
        kl_dims = (t["log_q"][0] - t["log_p"][0]).mean(0)  # (D1 + D2,)
        kl = kl_dims.sum()
        kl_term = kl_dims.clamp(min=self.config.free_bits).sum() if self.config.free_bits > 0 else kl
        loss = recon + (self.config.beta * kl_weight) * kl_term
        return {"loss": loss, "elbo": -(recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach()}

    # -- evaluation ------------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per example, one sample: "recon" (B,), "kl" (B,), "kl_dims" (B, D1 + D2) and "mu"
        (B, D1 + D2) = [mu1(x), mu2(mu1(x))] for the active-unit statistic."""
        t = self._pass(x, 1)
        kl_d = (t["log_q"] - t["log_p"])[0]
        mu1, _ = self.encoder(x)
        mu2, _ = self.encoder2(mu1)
        return {"recon": -t["log_px"][0], "kl": kl_d.sum(-1), "kl_dims": kl_d, "mu": torch.cat([mu1, mu2], -1)}

    def log_weight_terms(self, x: torch.Tensor, k: int, path: Callable[[torch.Tensor], torch.Tensor] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z1), log p(z1|z2) + log p(z2), log q(z1|x) + log q(z2|z1)), each (k, B), nats,
        for k draws from q(z1|x) q(z2|z1) (the importance proposal of ``log_weights``)."""
        t = self._pass(x, k, path)
        return t["log_px"], t["log_p"].sum(-1), t["log_q"].sum(-1)

    # -- the generative model alone: the latent state is [z1, z2], (n, D1 + D2) ------------------------
    def prior_sample(self, n: int) -> torch.Tensor:
        """n draws [z1, z2] from p(z2) p(z1|z2), (n, D1 + D2)."""
        z2 = self.prior.sample(n, device=self.device, dtype=self.dtype)
        pm1, plv1 = self.decoder2(z2)
        return torch.cat([pm1 + torch.exp(0.5 * plv1) * torch.randn_like(pm1), z2], -1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z2) + log p(z1|z2) for z = [z1, z2] (n, D1 + D2) -> (n,) nats."""
        d1 = self.config.latent_dim
        z1, z2 = z[:, :d1], z[:, d1:]
        pm1, plv1 = self.decoder2(z2)
        return self.prior.log_prob(z2) + gaussian_log_prob(z1, pm1, plv1).sum(-1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z1) for z = [z1, z2] (n, D1 + D2) -> (n,) nats."""
        return self.likelihood.log_prob(self.decoder(z[:, :self.config.latent_dim]), x)

    # -- applications -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, mean: bool = True) -> torch.Tensor:
        """n new examples (n, *spec.shape): z2 ~ N(0, t^2 I), z1 ~ p(z1|z2) with its standard
        deviation scaled by t too, then the decoder mean of p(x|z1) (or a draw if mean=False)."""
        z2 = self.prior.sample(n, device=self.device, temperature=temperature, dtype=self.dtype)
        pm1, plv1 = self.decoder2(z2)
        z1 = pm1 + temperature * torch.exp(0.5 * plv1) * torch.randn_like(pm1)
        params = self.decoder(z1)
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)


class TwoLayerIWAE(IWAE, TwoLayerVAE):
    """IWAE's k-sample bound over the two-layer model: IWAE.loss on TwoLayerVAE's log weights
    (k draws of (z1, z2) per example in one batched pass)."""


TWO_LAYER.update(vae=TwoLayerVAE, iwae=TwoLayerIWAE)
