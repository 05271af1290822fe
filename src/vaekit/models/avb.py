"""Adversarial variational Bayes (Mescheder, Nowozin and Geiger 2017): an implicit encoder and an
adversary that estimates the KL term.

The encoder is *implicit*: z = f(x, eps), eps ~ N(0, I) fed into the network, so q(z|x) can take
any shape (several modes, skew) but has no density to evaluate. The ELBO's KL term
E_q[log q(z|x) - log p(z)] is estimated instead by an adversary T(x, z), trained with the logistic
loss to tell pairs (x, z ~ q(z|x)) from pairs (x, z ~ p(z)); its optimum is exactly
T*(x, z) = log q(z|x) - log p(z) (the paper's proposition 1), and E_q[grad_phi T*] = 0
(proposition 2), so the encoder and decoder minimise E_q[-log p(x|z) + T(x, z)] with T held fixed.

Adaptive contrast (``--adaptive-contrast on``, the default; section 4 of the paper): telling q
from the prior is easy for T when q(z|x) is narrow, and a T that wins easily estimates the KL
badly. Instead q is contrasted with r(z|x) = N(mu(x), Sigma(x)), a Gaussian with q's own
moments, and T is trained on normalised codes z~ = L(x)^-1 (z - mu(x)) (L L^T = Sigma) against
N(0, I). Then KL(q || p) = E_q[T(x, z~)] + E_q[log r(z|x) - log p(z)], where T(x, z~) estimates the
(small) log q~(z~|x) - log N(z~; 0, I) and the second part is exact. mu(x), Sigma(x) are the mean
and covariance of ``MOMENT_SAMPLES`` further draws of q(z|x) per example (m = 16: the moments' own
noise blurs z~, which T then learns too; 16 keeps that small at the price of 16 passes of the
encoder's noise-dependent part, which is cheap because the part that reads x runs once), drawn
apart from the z that is scored, so that r does not depend on z. Sigma is shrunk a little toward
its diagonal (``COVARIANCE_SHRINK``), which keeps it full rank when m <= D.

Why the full covariance and not the paper's diagonal sigma(x)^2: on MNIST (latent 8, 2.5 minutes)
the diagonal version's q(z|x) collapsed onto a line -- its eight coordinates correlated +-1 within
each posterior, one-sided along it -- which every diagonal normalisation leaves a line, so T told
it from N(0, I) with accuracy 0.999 at logits near +14 / -19 and the encoder's KL signal was that
of a saturated adversary. Whitening with the full covariance turns that line's thin directions into
ones T sees at full scale, and the pathwise gradient of log r, Sigma^-1 (z - mu), pushes hardest
along them. Measured (same seed and budget, AIS on 100 test images, paired): critic accuracy 0.89
instead of 0.999, AIS NLL 1.9 +- 0.8 nats lower.

One departure from the paper: mu(x) and Sigma(x) are *detached* in the vae player's loss (the
paper back-propagates through them). The decomposition holds for any r fixed given x, and with r
fixed the gradient along the sample path is the right one when T is optimal, because
log q(z|x) - log r(z|x) = log q~(z~|x) - log N(z~; 0, I) for the normalised codes. Through the
moments, the exact -log |Sigma(x)|^(1/2) in log r rewards spreading q while T, which sees only
normalised codes, learns the concentration this hides only slowly: on the bimodal toy of
tests/avb_toy.py the encoder exploited that with rare far outliers (variance 30-50 against the
posterior's 0.6-3.4), and with detached moments it matches the posterior (``DETACH_MOMENTS``).

Architecture (a choice; the paper's MNIST networks differ in detail):

- Encoder: the part that reads x runs once per example (``--arch mlp``: the first linear layer
  of the ``--hidden`` MLP; ``--arch conv``: the conv stack and a linear layer to ``CONV_WIDTH``
  units). The noise eps (``noise_dim`` = max(latent_dim, ``MIN_NOISE_DIM``) dimensions) enters
  every hidden layer through a learned linear map added before the activation -- on the first
  layer the same as concatenating eps to the input, on later ones the paper's noise added to the
  hidden layers -- and a linear layer gives z (no Gaussian head).
- Adversary T(x, z): an MLP on (x, z) -- a linear layer of x plus a linear layer of z, then the
  ``--critic-hidden`` widths (default 256,256) and one output. With ``--arch conv`` its x enters
  through a conv stack of its own (``--critic-hidden`` are then its channels, vaekit's default
  plan when unset) and a linear layer to ``CONV_WIDTH`` units, followed by two hidden layers of
  ``CONV_WIDTH``. The paper's inner-product form of T is not used: the plain MLP learned the
  toy posteriors in tests/test_avb.py as well, and has one fewer design parameter.

Players: "adversary" (T) and "vae" (encoder and decoder). Per batch: ``--critic-steps`` K adversary
updates (default 1; the K - 1 extra ones first, each on fresh draws of q(z|x) for the batch, made
without a graph), then one vae update with loss E_q[-log p(x|z)] + beta * kl_weight * KL-estimate, where the estimate is
T(x, z) (no AC) or T(x, z~) + log r(z|x) - log p(z) (AC); --kl-warmup scales it like a VAE's KL.

What is reported: "recon" (one draw), "kl" (the estimate above), "elbo" = -(recon + kl), an
*estimate* that depends on how well T has learned, not a bound; ``selection_metric`` is therefore
"last" (a T that lags or overshoots would make one epoch's ELBO look better than another's for no
reason of fit, and keeping "the best" would select on T's errors). Compare AVB with other models by
``vaekit evaluate RUN --ais``, which scores the decoder and prior alone. ``encode`` returns the
mean and log variance of ``ENCODE_SAMPLES`` draws (latent maps, interpolation, traversals);
importance-sampled likelihoods need a density of q and are refused, naming --ais.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.spec import DataSpec
from ..errors import UsageError
from ..functional.kl import standard_normal_log_prob
from ..modules.blocks import activation, conv_stack
from .base import MODEL_OPTIONS, MODELS, ModelConfig
from .vae import VAE

MODEL_OPTIONS["adaptive_contrast"].add("avb")
MODEL_OPTIONS["critic_hidden"].add("avb")
MODEL_OPTIONS["critic_steps"].add("avb")

MOMENT_SAMPLES = 16  # m: draws of q(z|x) per example behind mu(x), Sigma(x) of adaptive contrast
ENCODE_SAMPLES = 64  # draws behind encode()'s mean and variance (codes for maps, interpolations)
MIN_NOISE_DIM = 4  # the encoder's noise has max(latent_dim, this) dimensions
CONV_WIDTH = 256  # --arch conv: width of the MLP after the conv stacks (encoder and adversary)
CRITIC_HIDDEN = [256, 256]  # --arch mlp: the adversary's default widths
DETACH_MOMENTS = True  # see the module docstring
VAR_FLOOR = 1e-6  # added to the moment covariance's diagonal (a collapsed q stays finite)
COVARIANCE_SHRINK = 0.1  # r(z|x)'s covariance: 0.9 x the draws' covariance + 0.1 x its diagonal (see the docstring)

_NO_DENSITY = ("model 'avb' has an implicit q(z|x) (samples, no density), so importance-sampled likelihoods "
               "(--iw-samples, --score nll) are not defined for it; estimate -log p(x) with "
               "vaekit evaluate RUN --ais")
_NO_GAUSSIAN = ("AVB's encoder is implicit: it has no Gaussian q(z|x) (mean, log variance) to score with; "
                "use --score elbo or recon for vaekit detect, and vaekit evaluate RUN --ais for likelihoods")


class ImplicitEncoder(nn.Module):
    """z = f(x, eps): ``trunk`` reads x once, (B, *shape) -> (B, widths[0]) pre-activations; eps
    (n, B, noise_dim) is added through a linear map before each hidden activation; a linear layer
    gives z (n, B, latent_dim). ``forward(x, eps)``; without eps it refuses (callers that expect
    a Gaussian encoder's (mu, logvar) get one line instead of a wrong answer)."""

    def __init__(self, trunk: nn.Module, widths: list[int], latent_dim: int, noise_dim: int, act: str) -> None:
        super().__init__()
        self.trunk, self.noise_dim = trunk, noise_dim
        self.noise_in = nn.ModuleList(nn.Linear(noise_dim, w, bias=False) for w in widths)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], latent_dim)
        self.act = activation(act)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The part that reads x: (B, *shape) -> (B, widths[0])."""
        return self.trunk(x)

    def tail(self, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Codes from the x features h (B, W) and noise eps (n, B, E): (n, B, latent_dim)."""
        h = self.act(h + self.noise_in[0](eps))
        for lin, noise in zip(self.layers, self.noise_in[1:]):
            h = self.act(lin(h) + noise(eps))
        return self.out(h)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:
            raise UsageError(_NO_GAUSSIAN)
        return self.tail(self.features(x), eps)


class Adversary(nn.Module):
    """T(x, z) -> (n, B) logits for z (n, B, D) (or (B,) for z (B, D)): act(trunk(x) + W z), then
    the hidden widths, then one output. The x features are computed once per example."""

    def __init__(self, trunk: nn.Module, widths: list[int], latent_dim: int, act: str) -> None:
        super().__init__()
        self.trunk = trunk
        self.z_in = nn.Linear(latent_dim, widths[0], bias=False)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], 1)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, z: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act((self.trunk(x) if hx is None else hx) + self.z_in(z))
        for lin in self.layers:
            h = self.act(lin(h))
        return self.out(h).squeeze(-1)


def _moments(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (B, D) and Cholesky factor (B, D, D) of the covariance of ``draws`` (m, B, D), shrunk
    by ``COVARIANCE_SHRINK`` toward its diagonal and floored by ``VAR_FLOOR`` (full rank even when
    m <= D or q(z|x) has collapsed onto a line)."""
    m, d = draws.shape[0], draws.shape[-1]
    mu = draws.mean(0)
    c = draws - mu
    cov = torch.einsum("mbd,mbe->bde", c, c) / (m - 1)
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    eye = torch.eye(d, device=draws.device, dtype=draws.dtype)
    cov = (1 - COVARIANCE_SHRINK) * cov + COVARIANCE_SHRINK * torch.diag_embed(var) + VAR_FLOOR * eye
    return mu, torch.linalg.cholesky(cov)


def _mlp_trunk(shape: tuple[int, ...], width: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width))


def _conv_trunk(shape: tuple[int, ...], channels: list[int] | None, act: str) -> nn.Module:
    conv, features = conv_stack(shape, channels, act)
    return nn.Sequential(conv, nn.Flatten(), nn.Linear(features, CONV_WIDTH))


@MODELS.register("avb")
class AVB(VAE):
    """The VAE's decoder, likelihood and prior with an implicit encoder and an adversary T(x, z).

    Shapes: x (B, *spec.shape); z (B, D). See the module docstring for the objective.
    """

    extra_terms = ("adversary_loss", "critic_acc")
    critic_accuracy = "critic_acc"
    selection_metric = "last"
    no_density = _NO_DENSITY
    elbo_note = ("ELBO with AVB's adversary estimating the KL: an estimate, not a bound; "
                 "compare models by --ais")

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        if config.free_bits > 0:
            raise UsageError("--free-bits needs a KL per latent dimension, which AVB's adversary does not give "
                             "(it estimates the whole KL); drop --free-bits")
        if config.extra.get("perceptual"):
            raise UsageError("--recon-loss perceptual is offered by --model vae, not 'avb'; drop --recon-loss")
        super().__init__(config, spec)
        d, act = config.latent_dim, config.activation
        self.noise_dim = max(d, MIN_NOISE_DIM)
        self.adaptive_contrast = bool(config.adaptive_contrast)
        if config.arch == "conv":
            enc_trunk, enc_widths = _conv_trunk(spec.shape, config.hidden, act), [CONV_WIDTH]
            adv_trunk, adv_widths = _conv_trunk(spec.shape, config.critic_hidden, act), [CONV_WIDTH, CONV_WIDTH]
        else:
            hidden = [int(h) for h in config.hidden]
            enc_trunk, enc_widths = _mlp_trunk(spec.shape, hidden[0]), hidden
            adv_widths = [int(h) for h in (config.critic_hidden or CRITIC_HIDDEN)]
            adv_trunk = _mlp_trunk(spec.shape, adv_widths[0])
        self.encoder = ImplicitEncoder(enc_trunk, enc_widths, d, self.noise_dim, act)  # replaces the Gaussian one
        self.adversary = Adversary(adv_trunk, adv_widths, d, act)

    def players(self) -> dict[str, dict[str, Any]]:
        adv = list(self.adversary.parameters())
        ids = {id(p) for p in adv}
        return {"adversary": {"params": adv},
                "vae": {"params": [p for p in self.parameters() if id(p) not in ids]}}

    # -- q(z|x) ------------------------------------------------------------------------------------
    def draw(self, x: torch.Tensor, n: int, graph: int | None = None) -> torch.Tensor:
        """n draws of z ~ q(z|x) per example: (n, B, D), carrying gradients to the encoder -- all of
        them, or with ``graph=i`` only draw i (the others computed without a graph: adaptive
        contrast's moment draws are detached, and a graph through all m + 1 made the backward pass
        m + 1 times the encoder tail's work for gradients that are zero). The same noise and
        values either way."""
        h = self.encoder.features(x)
        eps = torch.randn(n, len(x), self.noise_dim, device=h.device, dtype=h.dtype)
        if graph is None or not torch.is_grad_enabled():
            return self.encoder.tail(h, eps)
        z = self.encoder.tail(h, eps[graph:graph + 1])
        with torch.no_grad():
            rest = self.encoder.tail(h, torch.cat([eps[:graph], eps[graph + 1:]]))
        return torch.cat([rest[:graph], z, rest[graph:]])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of q(z|x) from ``ENCODE_SAMPLES`` draws: (B, D) each. q need not be
        Gaussian: these are its first two moments, the codes latent maps and interpolations use."""
        zs = self.draw(x, ENCODE_SAMPLES)
        return zs.mean(0), zs.var(0).clamp_min(1e-12).log()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the mean of q(z|x): (B, *spec.shape)."""
        return self.decode_mean(self.encode(x)[0])

    # -- the adversary's view ------------------------------------------------------------------------
    def _codes(self, x: torch.Tensor, extra: int = 0) -> dict[str, torch.Tensor]:
        """One scored draw z (B, D), what T sees of it ("t_in": z, or z~ with adaptive contrast),
        and "log_rp" (B,): log r(z|x) - log p(z) with adaptive contrast, else 0. ``extra`` more
        draws are made besides; "all" (n, B, D) holds every draw (z among them), for the codes' mean."""
        if not self.adaptive_contrast:
            zs = self.draw(x, 1 + extra)
            z = zs[0]
            return {"z": z, "t_in": z, "log_rp": z.new_zeros(len(x)), "all": zs}
        m = MOMENT_SAMPLES
        zs = self.draw(x, m + 1 + extra, graph=m if DETACH_MOMENTS else None)
        z, moments = zs[m], zs[:m]  # r(z|x) is built from draws other than z
        mu, chol = _moments(moments)
        if DETACH_MOMENTS:
            mu, chol = mu.detach(), chol.detach()
        zt = torch.linalg.solve_triangular(chol, (z - mu).unsqueeze(-1), upper=False).squeeze(-1)
        log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # log |Sigma|^(1/2)
        log_r = standard_normal_log_prob(zt).sum(-1) - log_det
        return {"z": z, "t_in": zt, "log_rp": log_r - self.prior.log_prob(z), "all": zs}

    def _contrast(self, like: torch.Tensor) -> torch.Tensor:
        """Draws of what T tells q's codes from: N(0, I) with adaptive contrast, else p(z)."""
        if self.adaptive_contrast:
            return torch.randn_like(like)
        return self.prior.sample(len(like), device=like.device, dtype=like.dtype)

    def adversary_loss(self, x: torch.Tensor, t_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logistic loss of T on (x, q's codes t_in) against (x, contrast draws), and T's accuracy."""
        hx = self.adversary.trunk(x)
        t_q = self.adversary(x, t_in, hx)
        t_p = self.adversary(x, self._contrast(t_in), hx)
        loss = F.softplus(-t_q).mean() + F.softplus(t_p).mean()
        acc = ((t_q > 0).to(t_q.dtype).mean() + (t_p < 0).to(t_p.dtype).mean()) / 2
        return loss, acc.detach()

    def kl_estimate(self, x: torch.Tensor, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per example (B,): T(x, z) (no AC) or T(x, z~) + log r(z|x) - log p(z) (AC)."""
        return self.adversary(x, codes["t_in"]) + codes["log_rp"]

    # -- training ------------------------------------------------------------------------------------
    def _vae_loss(self, x: torch.Tensor, codes: dict[str, torch.Tensor], kl_weight: float) -> dict[str, torch.Tensor]:
        recon = -self.likelihood.log_prob(self.decoder(codes["z"]), x).mean()
        kl = self.kl_estimate(x, codes).mean()
        loss = recon + (self.config.beta * kl_weight) * kl
        return {"loss": loss, "elbo": -(recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach()}

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """The vae player's loss and the terms (validation): loss, elbo, recon, kl (the estimate),
        adversary_loss, critic_acc."""
        codes = self._codes(x)
        adv, acc = self.adversary_loss(x, codes["t_in"].detach())
        return {**self._vae_loss(x, codes, kl_weight), "adversary_loss": adv.detach(), "critic_acc": acc}

    def train_step(self, x: torch.Tensor, *, update: Callable[..., bool], kl_weight: float = 1.0
                   ) -> dict[str, torch.Tensor]:
        """K = ``critic_steps`` adversary updates (K - 1 on fresh draws of q, the last on this batch's
        scored codes), then one vae update against the updated T."""
        for _ in range(self.config.critic_steps - 1):
            with torch.no_grad():
                t_in = self._codes(x)["t_in"]
            update("adversary", self.adversary_loss(x, t_in)[0])
        codes = self._codes(x)
        adv, acc = self.adversary_loss(x, codes["t_in"].detach())
        update("adversary", adv)
        out = self._vae_loss(x, codes, kl_weight)
        update("vae", out["loss"])
        return {**out, "loss": out["loss"].detach(), "adversary_loss": adv.detach(), "critic_acc": acc}

    # -- evaluation ----------------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per example: "recon" (B,) at one draw, "kl" (B,) the adversary's estimate, "kl_dims"
        (B, D) that estimate spread evenly (T gives no per-dimension split), "mu" (B, D) the mean of
        ``ENCODE_SAMPLES`` draws of q(z|x)."""
        codes = self._codes(x, extra=max(0, ENCODE_SAMPLES - (MOMENT_SAMPLES + 1 if self.adaptive_contrast else 1)))
        recon = -self.likelihood.log_prob(self.decoder(codes["z"]), x)
        kl = self.kl_estimate(x, codes)
        mu = codes["all"].mean(0)
        return {"recon": recon, "kl": kl, "kl_dims": (kl / self.latent_dim)[:, None].expand(-1, self.latent_dim),
                "mu": mu}

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        raise UsageError(_NO_DENSITY)

    def log_weight_terms(self, x: torch.Tensor, k: int, path: Any = None) -> Any:
        raise UsageError(_NO_DENSITY)
