"""The adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow and Frey 2015).

An autoencoder whose codes are pushed toward a prior p(z) by a discriminator on z instead of a KL
term: the discriminator learns to tell prior draws from the encoder's codes, and the encoder,
as the generator of a GAN on z, learns to fool it, so the aggregated posterior q(z) = E_x q(z|x)
comes to match p(z). Any registered prior works, including ones with no closed-form KL such as
the paper's ring of 10 Gaussians (``--prior gmm-ring``): the discriminator only needs samples.

Training alternates the paper's two phases on every mini-batch (section 2), each a player with its
own Adam (``training.steps.PlayersStep``):

1. reconstruction phase: the "autoencoder" player (encoder + decoder) minimises -log p(x|z)
   (the run's likelihood: Bernoulli or Gaussian, as for the VAE), z = the encoder's code;
2. regularisation phase: the "discriminator" player minimises the GAN loss
   -log D(z_prior) - log(1 - D(z_code)) on codes drawn after phase 1 (detached), then the
   "generator" player -- the encoder's parameters again, with an Adam of its own ("shared") --
   minimises -log D(z_code) on the same codes, scored by the updated discriminator (the
   non-saturating generator loss of Goodfellow et al. 2014, as in the paper's code).

``--phases joint`` trades the paper's order for speed: one forward pass per batch, the autoencoder
minimising reconstruction + ``--adversarial-weight`` x generator loss in one update (the discriminator
as it stood), then the discriminator's update on the same (detached) codes -- the schedule of pythae 0.1.2's
``Adversarial_AE`` and of most AAE code, with two backward passes instead of three and one encoder
forward pass instead of two.

With MLP networks (encoder, decoder and discriminator) and float32, both schedules train on a
hand-derived forward and backward (``training.fastpath.FastAAEStep``) that makes the same updates
as ``train_step`` with autograd (tested); ``TrainConfig(fast_path=False)`` or any other network uses autograd.

Codes: ``--encoder deterministic`` (z = mu, the encoder's log-variance head is unused) or
``gaussian`` (z = mu + sigma * eps, the paper's second choice). A Gaussian encoder still has a
q(z|x), so the run reports the ELBO under the prior (the KL is analytic for N(0, I), Monte Carlo
for the ring) -- an AAE is not trained on it, so it is a score, not its objective; a deterministic
encoder has none, and its evaluation reports the reconstruction and the codes' statistics.
Nothing in the objective holds sigma up but the discriminator: under the paper's phases on MNIST
(ring prior, latent 2) the reconstruction drove log sigma^2 to -50..-240 within 8 epochs, so the
samples equal mu in float32 and the reported KL (about -log sigma per dimension) runs to
hundreds of nats: the ELBO is then an honest but poor score (it was NaN before
``gaussian_log_prob`` handled z == mu with sigma underflowed).

Departures from the paper (MNIST: SGD with momentum, 2 x 1000 ReLU nets, fixed learning rates):
Adam for all three players at the run's --lr (the discriminator and generator with betas
(0.5, 0.9), as is usual for adversarial players; the autoencoder with the default betas), and
the decoder's likelihood for the reconstruction (the paper's MNIST code uses a sigmoid output
with a Euclidean cost). The discriminator keeps the paper's 2 x 1000 ReLU layers by default
(``--critic-hidden``; pythae 0.1.2's ``Adversarial_AE`` uses one layer of 256 and a single joint
update with the adversarial term weighted 0.5 -- ``--critic-hidden 256`` gives its size).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data.spec import DataSpec
from ..errors import UsageError
from ..modules.blocks import mlp
from .base import MODEL_OPTIONS, MODELS, ModelConfig
from .vae import VAE

MODEL_OPTIONS["encoder"].add("aae")
MODEL_OPTIONS["phases"].add("aae")
MODEL_OPTIONS["critic_hidden"].add("aae")
MODEL_OPTIONS["adversarial_weight"].add("aae")

#: The discriminator's hidden widths when --critic-hidden is not given (Makhzani et al.'s MNIST nets).
DEFAULT_DISCRIMINATOR = (1000, 1000)
#: Adam betas of the two adversarial players (the autoencoder keeps Adam's defaults).
ADVERSARIAL_BETAS = (0.5, 0.9)


@MODELS.register("aae")
class AAE(VAE):
    """Encoder, decoder, likelihood and prior of the VAE, plus a discriminator D(z) on the codes.

    Shapes: x (B, *spec.shape); z (B, D); D(z) gives one logit per code, (B, 1).
    """

    extra_terms = ("disc_loss", "gen_loss", "critic_acc")
    critic_accuracy = "critic_acc"
    selection_metric = "last"  # no validation score tells a better adversarial balance: keep the last epoch

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        for flag, value, neutral in (("--beta", config.beta, 1.0), ("--free-bits", config.free_bits, 0.0)):
            if value != neutral:  # the KL's weights: an AAE has no KL term in its objective
                raise UsageError(f"{flag} weighs the KL term of a VAE; --model aae has none (its prior is matched "
                                 f"by the discriminator); drop {flag}")
        super().__init__(config, spec)
        hidden = list(config.critic_hidden or DEFAULT_DISCRIMINATOR)
        self.discriminator = mlp([config.latent_dim, *hidden, 1], "relu")
        self.deterministic = config.encoder == "deterministic"
        if self.deterministic:
            self.has_elbo = False  # no q(z|x) density: evaluation reports reconstruction and code statistics
            self.no_density = ("an AAE with a deterministic encoder has no q(z|x) to importance-sample from "
                               "(--iw-samples, --score nll); estimate -log p(x) with vaekit evaluate RUN --ais instead")

    # -- players ---------------------------------------------------------------------------------
    def players(self) -> dict[str, dict[str, Any]]:
        """autoencoder (encoder + decoder: the reconstruction phase), discriminator, and generator
        (the encoder's parameters again, with its own Adam: the regularisation phase)."""
        enc = list(self.encoder.parameters())
        if self.config.phases == "joint":  # the encoder's two roles in one update
            return {"autoencoder": {"params": enc + list(self.decoder.parameters())},
                    "discriminator": {"params": list(self.discriminator.parameters()), "betas": ADVERSARIAL_BETAS}}
        return {"autoencoder": {"params": enc + list(self.decoder.parameters())},
                "discriminator": {"params": list(self.discriminator.parameters()), "betas": ADVERSARIAL_BETAS},
                "generator": {"params": enc, "shared": True, "betas": ADVERSARIAL_BETAS}}

    # -- the pieces --------------------------------------------------------------------------------
    def _code(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu if self.deterministic else self.reparameterize(mu, logvar)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The codes the model uses for x: mu (deterministic encoder) or one draw z ~ q(z|x): (B, D)."""
        return self._code(*self.encoder(x))

    def _adversarial(self, prior_z: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(discriminator loss, accuracy): BCE of D(prior draws) against 1 and D(codes) against 0."""
        real, fake = self.discriminator(prior_z), self.discriminator(z)
        loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        acc = ((real > 0).to(real.dtype).mean() + (fake < 0).to(fake.dtype).mean()) / 2
        return loss, acc

    def _generator_loss(self, z: torch.Tensor) -> torch.Tensor:
        g = self.discriminator(z)
        return F.binary_cross_entropy_with_logits(g, torch.ones_like(g))

    def _reported(self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor,
                  recon: torch.Tensor) -> dict[str, torch.Tensor]:
        """recon, and for a Gaussian encoder the KL under the prior and the ELBO (detached)."""
        out = {"recon": recon.detach()}
        if not self.deterministic:
            kl = self.prior.kl(mu, logvar, z).sum(-1).mean().detach()
            out.update(kl=kl, elbo=-(out["recon"] + kl))
        return out

    # -- training ----------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, *, update: Callable[..., bool], kl_weight: float = 1.0
                   ) -> dict[str, torch.Tensor]:
        """One mini-batch in the paper's order: reconstruction phase, then the regularisation phase
        (discriminator, then generator); with ``--phases joint`` the autoencoder on reconstruction +
        generator loss, then the discriminator. ``kl_weight`` is ignored (no KL term)."""
        mu, logvar = self.encoder(x)
        z = self._code(mu, logvar)
        recon = -self.likelihood.log_prob(self.decoder(z), x).mean()
        out = self._reported(x, mu, logvar, z, recon)
        if self.config.phases == "joint":
            g_loss = self._generator_loss(z)
            update("autoencoder", recon + self.config.adversarial_weight * g_loss)
            prior_z = self.prior.sample(len(x), device=x.device, dtype=z.dtype)
            d_loss, acc = self._adversarial(prior_z, z.detach())
            update("discriminator", d_loss)
            return {"loss": recon.detach(), **out, "disc_loss": d_loss.detach(), "gen_loss": g_loss.detach(),
                    "critic_acc": acc.detach()}
        update("autoencoder", recon)
        # regularisation phase, on codes of the encoder as the reconstruction phase left it
        codes = self.codes(x)
        prior_z = self.prior.sample(len(x), device=x.device, dtype=codes.dtype)
        d_loss, acc = self._adversarial(prior_z, codes.detach())
        update("discriminator", d_loss)
        g_loss = self._generator_loss(codes)  # the updated discriminator, the same codes
        update("generator", g_loss)
        return {"loss": recon.detach(), **out, "disc_loss": d_loss.detach(), "gen_loss": g_loss.detach(),
                "critic_acc": acc.detach()}

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """The terms of ``train_step`` without updating anything (validation): "loss" is the
        reconstruction (the autoencoder's objective), plus the discriminator's loss and accuracy
        and the generator's loss on this batch."""
        mu, logvar = self.encoder(x)
        z = self._code(mu, logvar)
        recon = -self.likelihood.log_prob(self.decoder(z), x).mean()
        prior_z = self.prior.sample(len(x), device=x.device, dtype=z.dtype)
        d_loss, acc = self._adversarial(prior_z, z)
        return {"loss": recon, **self._reported(x, mu, logvar, z, recon), "disc_loss": d_loss.detach(),
                "gen_loss": self._generator_loss(z).detach(), "critic_acc": acc.detach()}

    # -- evaluation ----------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gaussian encoder: the VAE's terms (one z ~ q(z|x); the KL under the prior). Deterministic:
        "recon" at z = mu, (B,), and "mu" (B, D) only."""
        if not self.deterministic:
            return super().elbo_terms(x)
        mu, _ = self.encoder(x)
        return {"recon": -self.likelihood.log_prob(self.decoder(mu), x), "mu": mu}

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Importance weights from q(z|x) (Gaussian encoder); a deterministic encoder has no q(z|x)."""
        if self.deterministic:
            raise UsageError(self.no_density)
        return super().log_weights(x, k)
