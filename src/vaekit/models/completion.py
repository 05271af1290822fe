"""Structured-output completion: a conditional VAE that completes a partly observed example
(Sohn, Lee and Yan 2015, "Learning Structured Output Representation using Deep Conditional
Generative Models").

Each example x is split by a mask into a given part and a missing part (True = missing). Three
networks, as in the paper:

- the prior network p(z | x_given) = N(mu_p, diag exp(logvar_p)),
- the recognition network q(z | x_given, x_missing) = N(mu_q, diag exp(logvar_q)),
- the generation network p(x_missing | z, x_given), through the run's likelihood (Bernoulli for
  MNIST), scored on the missing values only.

Every network sees the given part as a pair (x with the missing values set to 0, the mask), so
one model serves any mask; the generation network reads z together with features of the given
part (the prior network's last hidden layer). The training objective is the conditional ELBO
    log p(x_mis | x_giv) >= E_q[log p(x_mis | z, x_giv)] - KL(q(z | x_giv, x_mis) || p(z | x_giv)),
optionally mixed with the paper's GSNN term -log p(x_mis | z, x_giv), z ~ p(z | x_giv)
(``config.extra["gsnn_weight"]`` = 1 - the paper's alpha; 0, the default, is the pure CVAE).

During training the model draws its masks itself (``config.given``, see
``functional.masks``), so a batch is just x. Evaluation without a mask draws each example's
mask from its own values (``functional.masks.content_uniforms``), so every call on an example
sees the same mask; ``log_weights(x, k, mask=...)`` estimates -log p(x_mis | x_giv) for a given
mask by importance sampling with q as the proposal.

The VAE-shaped methods (``encode``, ``decode``, ``sample``, ``reconstruct``) are the model with
nothing given (every value missing): q(z | x), p(z | nothing) and p(x | z, nothing). Completion
itself is ``complete(x, mask, n)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.spec import DataSpec
from ..errors import UsageError
from ..functional.kl import gaussian_log_prob, gaussian_log_prob_at_eps, kl_normal_normal
from ..functional.masks import GIVEN_MODES, IMAGE_ONLY, content_uniforms, draw_masks, uniforms_needed
from ..modules.blocks import DECODERS, ENCODERS, activation
from ..modules.likelihoods import LIKELIHOODS, BernoulliLikelihood
from .base import MODELS, BaseModel, ModelConfig

CONV_FEATURES = 256  # width of the given part's features with --arch conv
_NO_MODEL_OF_X = ("this run is a completion model: its networks read a given part and a mask, and it has no "
                  "encoder or prior of x alone; complete inputs with vaekit complete, or train --model vae for this")


def given_input(x: torch.Tensor, miss: torch.Tensor) -> torch.Tensor:
    """The networks' view of the given part: [x with missing values (and NaN there) set to 0, the
    mask as 0/1], concatenated on axis 1: (B, 2 C, H, W) for images, (B, 2 D) for vectors."""
    return torch.cat([torch.where(miss, torch.zeros_like(x), x), miss.to(x.dtype)], dim=1)


class _Features(nn.Module):
    """(B, *cond_shape) -> (B, 2 * half): an encoder network of the architecture whose two linear
    heads are read together as one feature vector, followed by the activation."""

    def __init__(self, arch: str, cond_shape: tuple[int, ...], half: int, hidden: list[int] | None, act: str) -> None:
        super().__init__()
        self.net = ENCODERS.get(arch)(cond_shape, half, hidden, act)
        self.act = activation(act)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.act(torch.cat(self.net(c), dim=-1))


@MODELS.register("completion")
class CompletionVAE(BaseModel):
    """Conditional VAE for completing x_missing from x_given (see the module docstring).

    Shapes: x (B, *spec.shape); masks bool (B, *spec.shape) or (*spec.shape), True = missing;
    z (B, D) with D = config.latent_dim; given-part features (B, F), F = hidden[-1] (mlp, rounded
    up to even) or 256 (conv).
    """

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        self.given = config.given or ("random" if spec.is_image else "pixels")
        if self.given not in GIVEN_MODES:
            raise UsageError(f"unknown --given {self.given!r}; valid: {', '.join(GIVEN_MODES)}")
        if self.given in IMAGE_ONLY and not spec.is_image:
            raise UsageError(f"--given {self.given} takes image quadrants; these examples are vectors of "
                             f"{spec.dim}: use --given pixels or rect")
        self.gsnn_weight = float(config.extra.get("gsnn_weight", 0.0))
        if not 0.0 <= self.gsnn_weight <= 1.0:
            raise UsageError(f"gsnn_weight must be in [0, 1] (0: the plain CVAE), got {self.gsnn_weight}")
        d, shape = config.latent_dim, tuple(spec.shape)
        cond_shape = (2 * shape[0], *shape[1:])
        half = (int(config.hidden[-1]) + 1) // 2 if config.arch == "mlp" else CONV_FEATURES // 2
        self.likelihood = LIKELIHOODS.get(config.likelihood)(**config.extra.get("likelihood_args", {}))
        self.given_net = _Features(config.arch, cond_shape, half, config.hidden, config.activation)
        self.prior_head = nn.Linear(2 * half, 2 * d)
        self.recognition = ENCODERS.get(config.arch)(cond_shape, d, config.hidden, config.activation)
        self.generation = DECODERS.get(config.arch)(shape, d + 2 * half, config.hidden, config.activation,
                                                    self.likelihood.num_params)
        self.latent_dim = d
        # the fixed layouts' mask, made once: building it in the step would copy from the host,
        # which a CUDA graph cannot record (not saved: it follows from config.given)
        fixed = draw_masks(self.given, shape, torch.zeros(1, 0))[0] if uniforms_needed(self.given, shape) == 0 else None
        self.register_buffer("fixed_mask", fixed, persistent=False)

    # -- masks ----------------------------------------------------------------------------------
    def given_mask(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """The missing part, bool (B, *shape): ``mask`` broadcast to x ((*shape), (B, *shape), or
        (H, W) for every channel of images; non-zero = missing) when given; else drawn (``config.given``): at random in training,
        from each example's own values in evaluation (the same mask in every call)."""
        shape = tuple(self.spec.shape)
        if mask is not None:
            m = torch.as_tensor(mask, device=x.device) != 0
            if len(shape) == 3 and tuple(m.shape) == shape[1:]:
                m = m.expand(shape)  # one (H, W) mask for every channel
            if tuple(m.shape[-len(shape):]) != shape or m.dim() not in (len(shape), len(shape) + 1) \
                    or (m.dim() > len(shape) and m.shape[0] not in (1, x.shape[0])):
                raise UsageError(f"the mask has shape {tuple(m.shape)}; the inputs are {tuple(x.shape)}: give one mask "
                                 f"of shape {shape} or one per example")
            return m.expand(x.shape[0], *shape)
        if self.fixed_mask is not None:
            return self.fixed_mask.expand(x.shape[0], *shape)
        n_u = uniforms_needed(self.given, shape)
        if self.training:
            u = torch.rand(x.shape[0], n_u, device=x.device)
        else:
            u = content_uniforms(x, n_u)
        return draw_masks(self.given, shape, u)

    # -- the three networks -----------------------------------------------------------------------
    def prior_given(self, x: torch.Tensor, miss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """p(z | x_given): (mu_p, logvar_p) each (B, D), and the given part's features (B, F)."""
        f = self.given_net(given_input(x, miss))
        mu, logvar = self.prior_head(f).chunk(2, dim=-1)
        return mu, logvar, f

    def recognize(self, x: torch.Tensor, miss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x_given, x_missing): (mu_q, logvar_q) each (B, D); x must hold the missing values."""
        return self.recognition(torch.cat([x, miss.to(x.dtype)], dim=1))

    def generate(self, z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Raw likelihood parameters of p(x | z, x_given), (N, P, *shape), for z (N, D) and the
        given part's features f (N, F)."""
        return self.generation(torch.cat([z, f.to(z.dtype)], dim=-1))

    def log_prob_missing(self, params: torch.Tensor, x: torch.Tensor, miss: torch.Tensor) -> torch.Tensor:
        """log p(x_missing | params), summed over the missing values only: (N,) nats."""
        x = torch.where(miss, x, torch.zeros_like(x))  # values not scored are zeroed: no NaN reaches a gradient
        if isinstance(self.likelihood, BernoulliLikelihood):  # the common case, without a distribution object
            logits = params[:, 0]
            lp = x * logits - F.softplus(logits)
        else:
            lp = self.likelihood.dist(params).base_dist.log_prob(x)
        return torch.where(miss, lp, torch.zeros_like(lp)).flatten(1).sum(1)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Start the generation network's output at the data's marginal (see ``VAE.init_from_data``)."""
        self.generation.set_output_bias(self.likelihood.init_params(x))

    # -- training objective ---------------------------------------------------------------------------
    def _one_sample(self, x: torch.Tensor, miss: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example terms with one z ~ q: "recon" (B,), "kl_dims" (B, D), "mu" (B, D) and the
        prior's (mu_p, logvar_p, f) for the GSNN term."""
        mu_p, lv_p, f = self.prior_given(x, miss)
        mu_q, lv_q = self.recognize(x, miss)
        z = mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * lv_q)
        recon = -self.log_prob_missing(self.generate(z, f), x, miss)
        return {"recon": recon, "kl_dims": kl_normal_normal(mu_q, lv_q, mu_p, lv_p), "mu": mu_q,
                "mu_p": mu_p, "lv_p": lv_p, "f": f}

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0, mask: Any = None) -> dict[str, torch.Tensor]:
        """Negative conditional ELBO of the missing part (beta, free bits and the KL weight as in
        ``VAE.loss``), mixed with the GSNN term when ``gsnn_weight`` > 0; nats per example.
        The mask is drawn here unless given. Extra key "missing": the mean share of values missing."""
        miss = self.given_mask(x, mask)
        t = self._one_sample(x, miss)
        recon = t["recon"].mean()
        kl_dims = t["kl_dims"].mean(0)
        kl = kl_dims.sum()
        kl_term = kl_dims.clamp(min=self.config.free_bits).sum() if self.config.free_bits > 0 else kl
        loss = recon + (self.config.beta * kl_weight) * kl_term
        out = {"elbo": -(recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach(),
               "missing": miss.flatten(1).float().mean().detach()}
        if self.gsnn_weight > 0:  # Sohn et al.'s hybrid objective: z from the prior network, as at test time
            z = t["mu_p"] + torch.randn_like(t["mu_p"]) * torch.exp(0.5 * t["lv_p"])
            gsnn = -self.log_prob_missing(self.generate(z, t["f"]), x, miss).mean()
            loss = (1.0 - self.gsnn_weight) * loss + self.gsnn_weight * gsnn
            out["gsnn"] = gsnn.detach()
        out["loss"] = loss
        return out

    # -- evaluation -----------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, mask: Any = None) -> dict[str, torch.Tensor]:
        """Per-example terms of the conditional ELBO (one z sample): "recon" (B,) on the missing
        values, "kl" (B,) = KL(q || p(z | x_given)), "kl_dims" (B, D), "mu" (B, D) recognition means."""
        t = self._one_sample(x, self.given_mask(x, mask))
        return {"recon": t["recon"], "kl": t["kl_dims"].sum(-1), "kl_dims": t["kl_dims"], "mu": t["mu"]}

    def log_weights(self, x: torch.Tensor, k: int, mask: Any = None) -> torch.Tensor:
        """Importance log weights log p(x_mis | z_k, x_giv) + log p(z_k | x_giv) - log q(z_k | x_giv, x_mis),
        z_k ~ q: (k, B). Their log-mean-exp over k estimates log p(x_mis | x_giv) (from below, tighter
        as k grows); all k samples go through the generation network in one batch of k * B rows."""
        miss = self.given_mask(x, mask)
        mu_p, lv_p, f = self.prior_given(x, miss)
        mu_q, lv_q = self.recognize(x, miss)
        b, d = mu_q.shape
        eps = torch.randn(k, b, d, device=x.device, dtype=mu_q.dtype)
        z = mu_q + torch.exp(0.5 * lv_q) * eps  # (k, B, D)
        log_q = gaussian_log_prob_at_eps(eps, lv_q).sum(-1)
        log_p = gaussian_log_prob(z, mu_p, lv_p).sum(-1)
        params = self.generate(z.reshape(k * b, d), f.expand(k, *f.shape).reshape(k * b, -1))
        rep = (k, *[1] * (x.dim() - 1))
        log_px = self.log_prob_missing(params, x.repeat(rep), miss.repeat(rep)).view(k, b)
        return log_px + log_p - log_q

    # -- completion ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def complete(self, x: torch.Tensor, mask: Any = None, n: int = 1, *, mean: bool = True,
                 temperature: float = 1.0) -> torch.Tensor:
        """n completions of each example, (n, B, *shape): z ~ p(z | x_given) (its standard deviation
        scaled by ``temperature``), then the missing values from p(x | z, x_given): decoder means
        (``mean``) or draws. Given values come back exactly as in x; x may hold NaN where missing."""
        miss = self.given_mask(x, mask)
        mu_p, lv_p, f = self.prior_given(x, miss)
        b, d = mu_p.shape
        z = mu_p + temperature * torch.exp(0.5 * lv_p) * torch.randn(n, b, d, device=x.device, dtype=mu_p.dtype)
        params = self.generate(z.reshape(n * b, d), f.expand(n, *f.shape).reshape(n * b, -1))
        fill = self.likelihood.mean(params) if mean else self.likelihood.sample(params)
        return torch.where(miss, fill.view(n, *x.shape).to(x.dtype), x)

    # -- the model with nothing given (the VAE-shaped methods) ------------------------------------------------
    @property
    def encoder(self) -> Any:
        """Code written for the VAE's networks (anomaly scores) stops here with one line (UsageError)."""
        raise UsageError(_NO_MODEL_OF_X)

    @property
    def prior(self) -> Any:
        """Code written for the VAE's prior module (imputation, anomaly scores) stops here with one line."""
        raise UsageError(_NO_MODEL_OF_X)

    def _nothing_given(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.ones(n, *self.spec.shape, dtype=torch.bool, device=like.device)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x) with nothing given (every value to explain): (mu, logvar), each (B, D)."""
        return self.recognize(x, self._nothing_given(x.shape[0], x))

    def decoder(self, z: torch.Tensor) -> torch.Tensor:
        """Raw parameters of p(x | z, nothing given), (B, P, *shape)."""
        empty = torch.zeros(1, *self.spec.shape, dtype=z.dtype, device=z.device)
        _, _, f = self.prior_given(empty, self._nothing_given(1, z))
        return self.generate(z, f.expand(z.shape[0], -1))

    def decode(self, z: torch.Tensor) -> torch.distributions.Distribution:
        """p(x | z, nothing given) with batch shape (B,) and event shape spec.shape."""
        return self.likelihood.dist(self.decoder(z))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z, nothing given], (B, *spec.shape)."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, mean: bool = True) -> torch.Tensor:
        """n examples completed from nothing, (n, *spec.shape): meaningful when the training masks
        sometimes left everything missing (the paper's quadrant layouts never do)."""
        empty = torch.zeros(1, *self.spec.shape, dtype=self.dtype, device=self.device)
        return self.complete(empty, self._nothing_given(1, empty), n, mean=mean, temperature=temperature)[:, 0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean with nothing given: (B, *spec.shape)."""
        return self.decode_mean(self.encode(x)[0])
