"""The VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric").

A VAE whose decoder is also a GAN's generator: a discriminator Dis(x) tells data from the
decoder's outputs, and the reconstruction error is measured in the features of one of its inner
layers, Dis_l, instead of in pixels. Three players, each with its own Adam (Algorithm 1):

    encoder        <- grad(beta * kl_weight * L_prior + L_llike)
    decoder        <- grad(gamma * L_llike + L_GAN_gen)
    discriminator  <- grad(L_GAN_dis)

with, on one batch x (all terms batch means, nats per example where they are log-likelihoods):

    L_prior   = KL(q(z|x) || p(z))
    L_llike   = 1/2 ||Dis_l(x) - Dis_l(x~)||^2 / s^2 summed over the features of layer l (a Gaussian
                in feature space, its constant dropped), x~ = E[x|z], z ~ q(z|x), s^2 the features'
                mean variance over the batch's data, detached (the paper's variance is 1; see
                ``_feature_recon`` for why it is not here)
    L_GAN_dis = BCE(Dis(x), 1) + BCE(Dis(x~), 0) + BCE(Dis(x_p), 0), x_p = E[x|z_p], z_p ~ p(z)
                (the paper's -L_GAN)
    L_GAN_gen = BCE(Dis(x~), 1) + BCE(Dis(x_p), 1)   (the non-saturating generator loss, in
                place of the paper's minimax -L_GAN, which gives a vanishing gradient early on)

The encoder gets no gradient from the GAN terms (the paper's choice: the encoder's job is to
explain x, not to fool Dis); L_llike's gradient still reaches it through Dis_l and the decoder.

One forward pass per batch computes every term, then the players are updated in the order encoder,
decoder, discriminator, all from the gradients at the batch's starting weights (as in the
reference implementation: the decoder's gradient is taken before the discriminator's update
changes the weights its graph read, and neither later update changes a weight an earlier
player's gradient was already computed from).

The equilibrium rule (lucabergamini/VAEGAN-PYTORCH, main.py, the train_dis / train_dec block;
equilibrium 0.68 ~ ln 2, the loss of a discriminator at chance, margin 0.35): with the batch's
mean BCE of the discriminator on the data (real) and on the decoder's outputs (fake: x~ and x_p
together), the discriminator is not updated when either is below ``equilibrium - margin`` (it is
already winning), the decoder (generator) is not updated when either is above ``equilibrium +
margin`` (the discriminator is losing badly and must catch up), and if both would be skipped both
are made. A skipped update is not made at all; ``dis_updated`` and ``gan_updated`` log the share
of batches in which each was made.

The pixel likelihood and the prior of the VAE stay (so ``evaluate``, ``--ais``, ``sample`` work as
for a VAE): the decoder's likelihood mean is the generator's image. The model is not trained on
the pixel likelihood, so its ELBO is a loose bound (see ``elbo_note``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.spec import DataSpec
from ..errors import UsageError
from ..modules.blocks import conv_plan
from .base import MODEL_OPTIONS, MODELS, ModelConfig
from .vae import VAE

for _option in ("critic_hidden", "gamma", "equilibrium", "margin"):
    MODEL_OPTIONS[_option].add("vaegan")

#: LeakyReLU slope of the discriminator (the usual GAN discriminator's; the paper's uses ReLU with BatchNorm)
SLOPE = 0.2
#: width of the conv discriminator's fully connected layer between its features and its logit
CONV_HEAD = 256
#: default MLP discriminator widths (the feature layer is the last)
MLP_HIDDEN = [400, 400]


def equilibrium_rule(real_bce: float, fake_bce: float, equilibrium: float, margin: float) -> tuple[bool, bool]:
    """(train the discriminator, train the decoder) for this batch, from the discriminator's mean
    BCE on the data (``real_bce``) and on the decoder's outputs (``fake_bce``)."""
    train_dis = not (real_bce < equilibrium - margin or fake_bce < equilibrium - margin)
    train_dec = not (real_bce > equilibrium + margin or fake_bce > equilibrium + margin)
    if not train_dis and not train_dec:
        return True, True
    return train_dis, train_dec


class Discriminator(nn.Module):
    """Dis(x): returns (logit (B,), features (B, F) of the inner layer l).

    conv: stride-2 3x3 convolutions with ``hidden`` channels (default: the encoder's plan, 32, 64,
    128 on 28x28 images), LeakyReLU; l is the last convolution's output (the third on MNIST, as in
    the paper), then a fully connected layer of 256 and the logit. mlp: hidden layers (default 400,
    400), l the last of them, then the logit. No batch normalisation: the data and the decoder's
    outputs go through in one batch, and a batch statistic would let the two mix.
    """

    def __init__(self, shape: tuple[int, ...], arch: str, hidden: list[int] | None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if arch == "conv":
            channels, sizes = conv_plan(shape, hidden)
            c_in = shape[0]
            for c in channels:
                layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.LeakyReLU(SLOPE)]
                c_in = c
            self.features = nn.Sequential(*layers, nn.Flatten())
            n = c_in * math.prod(sizes[-1])
            self.head = nn.Sequential(nn.Linear(n, CONV_HEAD), nn.LeakyReLU(SLOPE), nn.Linear(CONV_HEAD, 1))
        else:
            widths = list(hidden or MLP_HIDDEN)
            n = math.prod(shape)
            for w in widths:
                layers += [nn.Linear(n, w), nn.LeakyReLU(SLOPE)]
                n = w
            self.features = nn.Sequential(nn.Flatten(), *layers)
            self.head = nn.Linear(n, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head(h).squeeze(-1), h


@MODELS.register("vaegan")
class VAEGAN(VAE):
    """The VAE-GAN: a VAE's Gaussian encoder, decoder, likelihood and prior, and a discriminator.

    Players "encoder", "decoder", "discriminator" (module docstring). Options: ``gamma`` (weight of
    L_llike in the decoder's update), ``equilibrium`` and ``margin`` (the skip rule),
    ``critic_hidden`` (the discriminator's widths or channels), ``beta`` (on the KL).
    """

    extra_terms = ("feature_recon", "dis_loss", "gan_loss", "critic_acc", "dis_updated", "gan_updated")
    critic_accuracy = "critic_acc"
    # the players' losses are a game's: no validation score says which epoch is best
    selection_metric = "last"
    elbo_note = ("the pixel likelihood's ELBO, on which the VAE-GAN is not trained (its decoder learns "
                 "from a discriminator's features and a GAN loss): a loose bound; compare with --ais or "
                 "--sample-quality")
    #: Adam settings per player. All at 0.3 x --lr (3e-4 at the default 1e-3: the paper's RMSProp
    #: rate) with beta1 = 0.5, the usual choice for GAN players (DCGAN): momentum that lags less
    #: behind an opponent that moves.
    LR_SCALE = {"encoder": 0.3, "decoder": 0.3, "discriminator": 0.3}
    BETAS = (0.5, 0.999)

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        for flag, value in (("--gamma", config.gamma), ("--margin", config.margin)):
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{flag} must be a number >= 0, got {value}")
        if not math.isfinite(config.equilibrium):
            raise UsageError(f"--equilibrium must be a finite number, got {config.equilibrium}")
        self.discriminator = Discriminator(tuple(spec.shape), config.arch, config.critic_hidden)

    def players(self) -> dict[str, dict[str, Any]]:
        enc = list(self.encoder.parameters())
        dis = list(self.discriminator.parameters())
        taken = {id(p) for p in enc + dis}
        gen = [p for p in self.parameters() if id(p) not in taken]  # decoder (and any learned prior/likelihood)
        return {name: {"params": params, "lr_scale": self.LR_SCALE[name], "betas": self.BETAS}
                for name, params in (("encoder", enc), ("decoder", gen), ("discriminator", dis))}

    # -- the terms --------------------------------------------------------------------------------
    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL, the KL term with free bits), batch means."""
        kl_dims = self.prior.kl(mu, logvar, z).mean(0)
        kl = kl_dims.sum()
        return kl, (kl_dims.clamp(min=self.config.free_bits).sum() if self.config.free_bits > 0 else kl)

    @staticmethod
    def _feature_recon(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """L_llike: half the squared distance in Dis_l's features, summed per example, batch mean,
        in units of the features' variance over the batch's data (their mean variance, detached:
        one isotropic Gaussian as in the paper, its variance the data's instead of 1; one scalar,
        so features that are constant on the data get no huge weight).

        The paper's unit-variance Gaussian in feature space takes the discriminator's feature scale
        as it comes: with small, freshly initialised layers L_llike is a few nats against a KL of
        tens, and the encoder collapses to the prior (measured on MNIST: KL -> 0 within two epochs,
        the decoder then a plain GAN generator, mode-collapsed). Scaled by the data's own spread
        the term no longer depends on that arbitrary scale: a reconstruction that ignores x costs
        ~F/2 nats (F features), as a pixel likelihood's does ~D/2."""
        real = real.detach()
        var = real.var(0, unbiased=False).mean().clamp(min=1e-8) if real.shape[0] > 1 else real.new_ones(())
        return 0.5 * (fake - real).pow(2).sum(1).mean() / var

    def terms(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Every loss of one batch from one forward pass (not detached): "encoder", "decoder",
        "discriminator" (each player's loss), "real_bce" and "fake_bce" (the equilibrium rule's
        inputs), and the logged terms."""
        b = x.shape[0]
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar)
        params = self.decoder(z)
        x_tilde = self.likelihood.mean(params)
        z_p = self.prior.sample(b, device=x.device, dtype=x.dtype)
        x_p = self.decode_mean(z_p)
        # one discriminator call per kind of image: no generator's backward pass then runs through
        # the data's rows, nor the encoder's through x_p's (a slice of one call's output would
        # back-propagate zeros through all its rows; 133 -> 127 ms per conv step on MNIST)
        l_real, f_real = self.discriminator(x)
        l_tilde, f_tilde = self.discriminator(x_tilde.to(x.dtype))
        l_p, _ = self.discriminator(x_p.to(x.dtype))
        feature_recon = self._feature_recon(f_real, f_tilde)
        kl, kl_term = self._kl(mu, logvar, z)
        real_bce = F.softplus(-l_real).mean()  # BCE(Dis(x), 1)
        fake_tilde, fake_p = F.softplus(l_tilde).mean(), F.softplus(l_p).mean()  # BCE(Dis(.), 0)
        dis_loss = real_bce + fake_tilde + fake_p
        gan_loss = F.softplus(-l_tilde).mean() + F.softplus(-l_p).mean()  # non-saturating: BCE(Dis(.), 1)
        recon = -self.likelihood.log_prob(params, x).mean()  # the pixel likelihood, logged only
        enc_loss = (self.config.beta * kl_weight) * kl_term + feature_recon
        with torch.no_grad():
            acc = ((l_real > 0).float().mean() + (torch.cat([l_tilde, l_p]) < 0).float().mean()) / 2
        return {"encoder": enc_loss, "decoder": self.config.gamma * feature_recon + gan_loss,
                "discriminator": dis_loss, "real_bce": real_bce.detach(), "fake_bce": ((fake_tilde + fake_p) / 2).detach(),
                "loss": enc_loss.detach(), "elbo": -(recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach(),
                "feature_recon": feature_recon.detach(), "dis_loss": dis_loss.detach(), "gan_loss": gan_loss.detach(),
                "critic_acc": acc}

    def train_step(self, x: torch.Tensor, *, update: Callable[..., bool], kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """One batch of Algorithm 1: every term from one forward pass, then the encoder's, the
        decoder's and the discriminator's updates (the last two as the equilibrium rule allows)."""
        t = self.terms(x, kl_weight=kl_weight)
        mean = getattr(update, "mean", lambda v: v)  # over all processes' batches in a distributed run
        train_dis, train_dec = equilibrium_rule(float(mean(t["real_bce"])), float(mean(t["fake_bce"])),
                                                self.config.equilibrium, self.config.margin)
        update("encoder", t["encoder"], retain_graph=True)
        if train_dec:
            update("decoder", t["decoder"], retain_graph=train_dis)
        if train_dis:
            update("discriminator", t["discriminator"])
        out = {k: t[k] for k in ("loss", "elbo", "recon", "kl", *self.extra_terms) if k in t}
        out["dis_updated"] = torch.tensor(float(train_dis))
        out["gan_updated"] = torch.tensor(float(train_dec))
        return out

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """The encoder's objective (beta * KL + L_llike, the paper's VAE part L_prior + L_llike^Dis)
        as "loss", the pixel ELBO's terms, and "feature_recon" (used for validation)."""
        mu, logvar = self.encoder(x)
        z = self.reparameterize(mu, logvar)
        params = self.decoder(z)
        x_tilde = self.likelihood.mean(params).to(x.dtype)
        _, feats = self.discriminator(torch.cat([x, x_tilde]))
        feature_recon = self._feature_recon(feats[:x.shape[0]], feats[x.shape[0]:])
        kl, kl_term = self._kl(mu, logvar, z)
        recon = -self.likelihood.log_prob(params, x).mean()
        loss = (self.config.beta * kl_weight) * kl_term + feature_recon
        return {"loss": loss, "elbo": -(recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach(),
                "feature_recon": feature_recon.detach()}
