"""The VAE (Kingma and Welling 2014) with beta (Higgins et al. 2017) and free bits."""

from __future__ import annotations

from typing import Callable

import torch

from ..data.spec import DataSpec
from ..functional.kl import gaussian_log_prob, gaussian_log_prob_at_eps
from ..modules.blocks import DECODERS, ENCODERS
from ..modules.likelihoods import LIKELIHOODS
from ..modules.perceptual import PerceptualLoss
from ..modules.priors import PRIORS
from .base import MODELS, BaseModel, ModelConfig


@MODELS.register("vae")
class VAE(BaseModel):
    """Gaussian encoder q(z|x), decoder p(x|z) through a likelihood, and a prior p(z).

    Shapes: x (B, *spec.shape); z (B, D) with D = config.latent_dim.
    """

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        lik_cls = LIKELIHOODS.get(config.likelihood)
        self.likelihood = lik_cls(**config.extra.get("likelihood_args", {}))
        self.encoder, self.decoder = self._networks(config, spec)
        self.prior = PRIORS.get(config.prior)(config.latent_dim)
        self.latent_dim = config.latent_dim
        # --recon-loss perceptual (``vaekit.perceptual``): a frozen feature net's term joins the loss
        perceptual = config.extra.get("perceptual")
        self.perceptual = PerceptualLoss(perceptual) if perceptual else None
        if perceptual:
            self.extra_terms = ("perceptual",)  # logged by the trainer beside loss, elbo, recon, kl

    def _networks(self, config: ModelConfig, spec: DataSpec) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The encoder and decoder of ``config.arch`` (sequence models build recurrent ones)."""
        encoder = ENCODERS.get(config.arch)(spec.shape, config.latent_dim, config.hidden, config.activation)
        decoder = DECODERS.get(config.arch)(spec.shape, config.latent_dim, config.hidden, config.activation,
                                            self.likelihood.num_params)
        return encoder, decoder

    # -- the pieces -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x) = N(mu, exp(logvar)): returns (mu, logvar), each (B, D)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.distributions.Distribution:
        """p(x|z) as a distribution with batch shape (B,) and event shape spec.shape."""
        return self.likelihood.dist(self.decoder(z))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], (B, *spec.shape), in data units."""
        return self.likelihood.mean(self.decoder(z))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a sample that carries gradients to mu and logvar."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Start the decoder's output at the data's marginal (for Bernoulli: the mean image's
        log-odds), which removes the first epoch's slow fit of the average image."""
        self.decoder.set_output_bias(self.likelihood.init_params(x))

    # -- training objective -------------------------------------------------------------------
    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Negative ELBO with beta and free bits, averaged over the batch (nats per example).

        loss = recon + beta * kl_weight * sum_d max(free_bits, mean_batch KL_d) [+ perceptual];
        the reported "elbo" is always the true ELBO = -(recon + KL), whatever beta is; with a
        perceptual term (``modules.perceptual``) the loss adds it and reports it as "perceptual".
        """
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar)
        params = self.decoder(z)
        log_px = self.likelihood.log_prob(params, x)  # (B,)
        kl_d = self.prior.kl(mu, logvar, z)  # (B, D)
        recon = -log_px.mean()
        kl_dims = kl_d.mean(0)  # (D,)
        kl = kl_dims.sum()
        kl_term = kl_dims.clamp(min=self.config.free_bits).sum() if self.config.free_bits > 0 else kl
        loss = recon + (self.config.beta * kl_weight) * kl_term
        out = {"elbo": -(recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach()}
        if self.perceptual is not None:  # DFC-VAE: feature distance to the decoder's mean, outside the ELBO
            feat = self.perceptual(x, self.likelihood.mean(params)).mean()
            loss = loss + feat
            out["perceptual"] = feat.detach()
        return {"loss": loss, **out}

    # -- evaluation -----------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example terms (one z sample): "recon" (B,), "kl" (B,), "kl_dims" (B, D), "mu" (B, D)."""
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar)
        recon = -self.likelihood.log_prob(self.decoder(z), x)
        kl_d = self.prior.kl(mu, logvar, z)
        return {"recon": recon, "kl": kl_d.sum(-1), "kl_dims": kl_d, "mu": mu}

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Importance log weights log p(x, z_k) - log q(z_k | x), z_k ~ q(z|x): shape (k, B).

        All k samples go through the decoder in one batch of k * B.
        """
        log_px, log_p, log_q = self.log_weight_terms(x, k)
        return log_px + log_p - log_q

    def log_weight_terms(self, x: torch.Tensor, k: int, path: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         **fields: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z_k), log p(z_k), log q(z_k|x)), each (k, B), for k reparameterised samples.

        ``path`` (for doubly reparameterised gradients, see ``IWAE.loss``): every use of z goes
        through ``path(z)``, and log q is evaluated with the encoder's outputs detached, so the
        encoder receives gradient only along the sample path z = mu + sigma * eps.
        """
        mu, logvar = self.encoder(x, **fields)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = mu + std * eps  # (k, B, D)
        if path is None:
            log_q = gaussian_log_prob_at_eps(eps, logvar).sum(-1)
        else:
            z = path(z)
            log_q = gaussian_log_prob(z, mu.detach(), logvar.detach()).sum(-1)
        log_p = self.prior.log_prob(z)
        return self._log_px_k(z.reshape(-1, mu.shape[-1]), x, **fields), log_p, log_q

    def _log_px_k(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x_b | z) for k samples per example: z (k * B, D) sample-major, x (B, *shape) -> (k, B).
        x is broadcast against the k samples' decoder outputs, not copied k times."""
        return self.likelihood.log_prob_k(self.decoder(z), x)

    # -- the generative model alone (see BaseModel.log_joint) ---------------------------------------
    def prior_sample(self, n: int) -> torch.Tensor:
        """n draws z ~ p(z), (n, D)."""
        return self.prior.sample(n, device=self.device, dtype=self.dtype)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z): (n, D) -> (n,) nats."""
        return self.prior.log_prob(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z): x (n, *shape), z (n, D) -> (n,) nats."""
        return self.likelihood.log_prob(self.decoder(z), x)

    # -- applications -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, mean: bool = True) -> torch.Tensor:
        """n new examples, (n, *spec.shape): decoder means (or draws from p(x|z) if mean=False)."""
        z = self.prior.sample(n, device=self.device, temperature=temperature, dtype=self.dtype)
        params = self.decoder(z)
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean: (B, *spec.shape)."""
        mu, _ = self.encoder(x)
        return self.decode_mean(mu)
