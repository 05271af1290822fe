"""The conditional VAE (Sohn et al. 2015): q(z|x,c), p(x|z,c), and a prior N(0, I) or p(z|c).

The condition is what the data carry with each example: a class label y (one-hot inside the
model) or, when the data have a condition ``c`` (``spec.cond_shape``), an attribute vector or a
conditioning input such as a second image. The model reads one of them (``batch_fields`` is
("y",) or ("c",)) and turns it into a vector h (B, E) that is concatenated to the encoder's input
(MLP) or to its flattened features before the head (conv), and to z at the decoder's input.
Conditioning images go through a small conv embedding first.

With ``config.conditional_prior`` the prior is a learned diagonal Gaussian p(z|c) (its network
starts at N(0, I)); the KL between the two diagonal Gaussians is analytic.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..data.spec import DataSpec
from ..errors import UsageError
from ..functional.kl import gaussian_log_prob, gaussian_log_prob_at_eps, kl_normal_normal
from ..modules.blocks import DECODERS, ENCODERS, activation, conv_plan, mlp
from ..modules.likelihoods import LIKELIHOODS
from ..modules.priors import PRIORS
from .base import CONDITIONAL_PRIOR, MODELS, BaseModel, ModelConfig

COND_EMBED_DIM = 64  # width of the embedding of a conditioning image
PRIOR_HIDDEN = 128  # hidden width of the prior network p(z|c) for condition vectors and inputs


def _need_condition(spec: DataSpec) -> None:
    """One line naming the fix when the data give a conditional model nothing to condition on."""
    if spec.cond_shape is None and not spec.num_classes:
        raise UsageError("--model cvae needs labels or a condition for every example, and this data has neither; "
                         "give an image folder with one subfolder per class (two or more), a CSV with --label-column or "
                         "--condition-columns, an .npz with y or c, or --condition FILE (or use --model vae)")
    if spec.cond_shape is None and spec.num_classes == 1:
        raise UsageError("--model cvae needs at least two classes, and this data has one (e.g. a folder with one "
                         "class subfolder); add a subfolder per class, or use --model vae")


class ConditionEmbedding(nn.Module):
    """A batch's condition -> a vector h (B, dim).

    y (B,) int64 class indices -> one-hot (B, K); a condition vector c (B, C) -> itself; a
    conditioning image c (B, C', H', W') with H', W' >= 8 -> two stride-2 convolutions and a
    linear layer -> (B, COND_EMBED_DIM); any other condition is flattened.
    """

    def __init__(self, spec: DataSpec, act: str) -> None:
        super().__init__()
        self.net: nn.Module | None = None
        if spec.cond_shape is None:
            self.field, self.dim = "y", int(spec.num_classes or 0)
            return
        self.field = "c"
        shape = spec.cond_shape
        if len(shape) == 3 and min(shape[1:]) >= 8:
            channels, sizes = conv_plan(shape, [32, 64])
            h, w = sizes[-1]
            self.net = nn.Sequential(nn.Conv2d(shape[0], 32, 3, stride=2, padding=1), activation(act),
                                     nn.Conv2d(32, 64, 3, stride=2, padding=1), activation(act), nn.Flatten(),
                                     nn.Linear(channels[-1] * h * w, COND_EMBED_DIM), activation(act))
            self.dim = COND_EMBED_DIM
        else:
            self.dim = math.prod(shape)

    def forward(self, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.field == "y":
            y = value.reshape(-1, 1).long()
            return torch.zeros(len(y), self.dim, dtype=dtype, device=y.device).scatter_(1, y, 1.0)
        c = value.to(dtype)
        return self.net(c) if self.net is not None else c.reshape(len(c), -1)


def conditional_prior_net(cond: ConditionEmbedding, config: ModelConfig) -> nn.Sequential:
    """The network of the learned prior p(z|c): the embedded condition -> [mu, logvar] (linear for
    class labels, one hidden layer for condition vectors and inputs), started at N(0, I)."""
    e, d = cond.dim, config.latent_dim
    net = mlp([e, 2 * d] if cond.field == "y" else [e, PRIOR_HIDDEN, 2 * d], config.activation)
    with torch.no_grad():  # start at N(0, I): the unconditional model's prior
        net[-1].weight.zero_()
        net[-1].bias.zero_()
    return net


@MODELS.register("cvae")
class CVAE(BaseModel):
    """Encoder q(z|x,c), decoder p(x|z,c) through a likelihood, prior N(0, I) or p(z|c).

    Shapes: x (B, *spec.shape); y (B,) int64 class indices (labels of the training classes), or
    c (B, *spec.cond_shape) float; z (B, D), D = config.latent_dim; h, the embedded condition,
    (B, E). Every method takes the condition as the keyword the model reads (``batch_fields``).
    """

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        _need_condition(spec)
        super().__init__(config, spec)
        self.cond = ConditionEmbedding(spec, config.activation)
        self.batch_fields = (self.cond.field,)
        e, d = self.cond.dim, config.latent_dim
        self.likelihood = LIKELIHOODS.get(config.likelihood)(**config.extra.get("likelihood_args", {}))
        self.encoder = ENCODERS.get(config.arch)(spec.shape, d, config.hidden, config.activation, cond_dim=e)
        self.decoder = DECODERS.get(config.arch)(spec.shape, d + e, config.hidden, config.activation,
                                                 self.likelihood.num_params)
        self.prior = PRIORS.get(config.prior)(d)
        self.prior_net = conditional_prior_net(self.cond, config) if config.conditional_prior else None
        self.latent_dim = d

    def check_data(self, train: object) -> None:
        """Refuse training data with unlabelled examples (y == -1), before anything is written."""
        y = getattr(train, "y", None)
        if self.cond.field == "y" and y is not None:
            hidden = int((y < 0).sum())
            if hidden:
                raise UsageError(f"--model cvae needs every training example labelled, and {hidden} of {len(y)} are "
                                 "not (--labels-per-class hides labels); drop --labels-per-class, or use --model m2 "
                                 "for partly labelled data")

    # -- the condition ---------------------------------------------------------------------------
    def condition(self, y: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """The embedded condition h (B, E) from y (B,) or c (B, *cond_shape), whichever the model reads."""
        value = y if self.cond.field == "y" else c
        if value is None:
            what = "class labels y (B,)" if self.cond.field == "y" else f"conditions c (B, *{self.spec.cond_shape})"
            raise UsageError(f"this model is conditional on {what} and got none: pass {self.cond.field}=... "
                             "(verbs that take no labels or conditions, such as impute and denoise, need an "
                             "unconditional run)")
        return self.cond(value.to(self.device), self.dtype)

    def prior_params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mu, logvar) of p(z|c), each (B, D); None for the fixed prior."""
        if self.prior_net is None:
            return None
        mu, logvar = self.prior_net(h).chunk(2, dim=-1)
        return mu, logvar

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x,c) || p(z|c)) per dimension, (B, D), analytic."""
        p = self.prior_params(h)
        return self.prior.kl(mu, logvar, z) if p is None else kl_normal_normal(mu, logvar, *p)

    def _decoder_params(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Raw likelihood parameters for z (..., D) and h (B, E) broadcast to z's rows: (rows, P, *shape)."""
        if z.dim() == 3:  # (k, B, D): the same condition for each of the k samples
            h = h.unsqueeze(0).expand(z.shape[0], *h.shape)
        zh = torch.cat([z, h], dim=-1)
        return self.decoder(zh.reshape(-1, zh.shape[-1]))

    # -- the pieces --------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x,c) = N(mu, exp(logvar)): returns (mu, logvar), each (B, D)."""
        return self.encoder(x, self.condition(y, c))

    def decode_params(self, z: torch.Tensor, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Raw likelihood parameters of p(x|z,c), (B, P, *spec.shape)."""
        return self._decoder_params(z, self.condition(y, c))

    def decode(self, z: torch.Tensor, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None
               ) -> torch.distributions.Distribution:
        """p(x|z,c) with batch shape (B,) and event shape spec.shape."""
        return self.likelihood.dist(self.decode_params(z, y=y, c=c))

    def decode_mean(self, z: torch.Tensor, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """E[x|z,c], (B, *spec.shape), in data units."""
        return self.likelihood.mean(self.decode_params(z, y=y, c=c))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Start the decoder's output at the data's marginal (see ``VAE.init_from_data``)."""
        self.decoder.set_output_bias(self.likelihood.init_params(x))

    # -- training objective -------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0, y: torch.Tensor | None = None,
             c: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Negative conditional ELBO of log p(x|c) with beta and free bits, batch mean (nats per example).

        loss = recon + beta * kl_weight * sum_d max(free_bits, mean_batch KL_d), as in ``VAE.loss``.
        """
        h = self.condition(y, c)
        mu, logvar = self.encoder(x, h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = -self.likelihood.log_prob(self._decoder_params(z, h), x).mean()
        kl_dims = self._kl(mu, logvar, z, h).mean(0)  # (D,)
        kl = kl_dims.sum()
        kl_term = kl_dims.clamp(min=self.config.free_bits).sum() if self.config.free_bits > 0 else kl
        loss = recon + (self.config.beta * kl_weight) * kl_term
        return {"loss": loss, "elbo": -(recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach()}

    # -- evaluation -----------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
        """Per-example terms of log p(x|c) (one z sample): "recon" (B,), "kl" (B,), "kl_dims" (B, D), "mu" (B, D)."""
        h = self.condition(y, c)
        mu, logvar = self.encoder(x, h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = -self.likelihood.log_prob(self._decoder_params(z, h), x)
        kl_d = self._kl(mu, logvar, z, h)
        return {"recon": recon, "kl": kl_d.sum(-1), "kl_dims": kl_d, "mu": mu}

    def log_weights(self, x: torch.Tensor, k: int, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Importance log weights log p(x|z_k,c) + log p(z_k|c) - log q(z_k|x,c), z_k ~ q(z|x,c): (k, B).

        Their log-mean-exp estimates log p(x|c) (a lower bound in expectation, tight as k grows).
        """
        h = self.condition(y, c)
        mu, logvar = self.encoder(x, h)
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, D)
        log_q = gaussian_log_prob_at_eps(eps, logvar).sum(-1)
        p = self.prior_params(h)
        log_p = self.prior.log_prob(z) if p is None else gaussian_log_prob(z, *p).sum(-1)
        log_px = self.likelihood.log_prob_k(self._decoder_params(z, h), x)
        return log_px + log_p - log_q

    # -- the generative model alone (see BaseModel.log_joint): given the condition y or c (n rows) -------
    def prior_sample(self, n: int, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """n draws z ~ p(z|c) (or N(0, I)), one per condition row: (n, D)."""
        h = self.condition(y, c)
        z = self.prior.sample(n, device=self.device, dtype=self.dtype)
        p = self.prior_params(h)
        return z if p is None else p[0] + torch.exp(0.5 * p[1]) * z

    def log_prior(self, z: torch.Tensor, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """log p(z|c) (or log N(z; 0, I)): z (n, D) -> (n,) nats."""
        p = self.prior_params(self.condition(y, c))
        return self.prior.log_prob(z) if p is None else gaussian_log_prob(z, *p).sum(-1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, *, y: torch.Tensor | None = None,
                       c: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z,c): x (n, *shape), z (n, D) -> (n,) nats."""
        return self.likelihood.log_prob(self._decoder_params(z, self.condition(y, c)), x)

    # -- applications ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None,
               temperature: float = 1.0, mean: bool = True) -> torch.Tensor:
        """n new examples for the given conditions, (n, *spec.shape): y (n,) int64 or c (n, *cond_shape).

        z ~ p(z|c) (or N(0, I)) with its standard deviation scaled by ``temperature``; returns the
        decoder means (or draws from p(x|z,c) when ``mean`` is False).
        """
        h = self.condition(y, c)
        if len(h) != n:
            raise UsageError(f"sample(n={n}) needs one condition per example, got {len(h)}")
        z = self.prior.sample(n, device=self.device, temperature=temperature, dtype=self.dtype)
        p = self.prior_params(h)
        if p is not None:
            z = p[0] + torch.exp(0.5 * p[1]) * z
        params = self._decoder_params(z, h)
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Decoder mean at the posterior mean, with the same condition: (B, *spec.shape)."""
        h = self.condition(y, c)
        mu, _ = self.encoder(x, h)
        return self.likelihood.mean(self._decoder_params(mu, h))


CONDITIONAL_PRIOR.add("cvae")
