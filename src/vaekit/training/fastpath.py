"""A hand-derived training step for MLP VAEs: forward and backward without autograd.

On a small CPU the seed model (784-400-20) spends more time in autograd bookkeeping and
element-wise kernels than in its matrix multiplies. This step computes the same loss and the
same gradients as ``VAE.loss(...).backward()`` with a fixed, short sequence of fused
operations: one matmul per layer and direction, in-place activations and derivatives, and the
Bernoulli/KL gradients written out by hand. It is used only where it applies (MLP encoder and
decoder, ReLU/tanh, Bernoulli or fixed-variance Gaussian likelihood, standard normal prior);
everything else goes through autograd. Tests check it against autograd.

The conditional VAE (``models.cvae``) with labels or condition vectors and the N(0, I) prior runs
the same step: its one-hot (or vector) condition h is concatenated to x at the encoder's input and
to z at the decoder's input, exactly as its autograd path does, and only z's part of the decoder's
input gradient flows back.

Notation: B batch, N values per example, D latent dims; layers act as y = h @ W.T + b.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.aae import AAE
from ..models.cvae import CVAE
from ..models.vae import VAE
from ..models.vaegan import VAEGAN, equilibrium_rule
from ..modules.blocks import MLPDecoder, MLPEncoder
from ..modules.likelihoods import BernoulliLikelihood, FixedGaussianLikelihood
from ..modules.priors import StandardNormalPrior

_ACTS = (nn.ReLU, nn.Tanh, nn.LeakyReLU)


def _linears_and_act(seq: nn.Sequential | list[nn.Module]) -> tuple[list[nn.Linear], nn.Module | None] | None:
    """(the linear layers, the activation between each two) of a stack Linear (act Linear)*, one
    kind of activation throughout (ReLU, tanh or LeakyReLU with one slope); None for anything else."""
    mods = list(seq)
    layers, acts = mods[0::2], mods[1::2]
    if not mods or len(mods) % 2 == 0 or not all(type(m) is nn.Linear for m in layers):
        return None
    if not all(type(a) in _ACTS and type(a) is type(acts[0]) for a in acts):
        return None
    if acts and isinstance(acts[0], nn.LeakyReLU) and (len({a.negative_slope for a in acts}) != 1
                                                        or not acts[0].negative_slope > 0):
        return None
    return layers, (acts[0] if acts else None)


def supports(model: nn.Module) -> bool:
    """True when ``FastStep`` computes exactly this model's loss: the one-layer VAE's ELBO (not
    a model that overrides ``loss``, such as the IWAE or the two-stochastic-layer models)."""
    loss = getattr(type(model), "loss", None)
    if loss is CVAE.loss:  # conditional: only an identity embedding (one-hot / vector) and the fixed prior
        if model.cond.net is not None or model.prior_net is not None:
            return False
    elif loss is not VAE.loss:
        return False
    if getattr(model, "perceptual", None) is not None:  # a feature-space term (--recon-loss perceptual): autograd
        return False
    enc, dec = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if type(enc) is not MLPEncoder or type(dec) is not MLPDecoder:
        return False
    if type(model.likelihood) not in (BernoulliLikelihood, FixedGaussianLikelihood):
        return False
    if type(model.prior) is not StandardNormalPrior:
        return False
    return _linears_and_act(enc.net) is not None and _linears_and_act(dec.net) is not None


def _act_forward(act: nn.Module | None, a: torch.Tensor) -> torch.Tensor:
    if isinstance(act, nn.ReLU):
        return a.clamp_min_(0.0)
    if isinstance(act, nn.Tanh):
        return a.tanh_()
    if isinstance(act, nn.LeakyReLU):
        return F.leaky_relu_(a, act.negative_slope)
    return a


def _act_backward(act: nn.Module | None, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """g * act'(a), written in terms of the activation's output h."""
    # ATen's own backward kernels, in place: one pass over g and h, where ``g.mul_(h > 0)`` makes
    # three (a mask, its float copy, the product): 4-6x faster at (128, 400) on this CPU
    if isinstance(act, nn.ReLU):
        return torch.ops.aten.threshold_backward.grad_input(g, h, 0.0, grad_input=g)
    if isinstance(act, nn.Tanh):
        return torch.ops.aten.tanh_backward.grad_input(g, h, grad_input=g)
    if isinstance(act, nn.LeakyReLU):  # (slope > 0: h > 0 exactly where a > 0, so h stands for a)
        return torch.ops.aten.leaky_relu_backward.grad_input(g, h, act.negative_slope, True, grad_input=g)
    return g


class _HandDerived:
    """What the hand-derived steps share: an MLP encoder and decoder taken apart into their linear
    layers, persistent scratch buffers, the forward and backward of a stack of layers, and the
    reconstruction term's gradient."""

    def __init__(self, model: nn.Module, matmul_dtype: torch.dtype | None = None) -> None:
        """``matmul_dtype=torch.bfloat16`` runs every matmul on bfloat16 copies of the weights
        and activations (fp32 accumulation inside oneDNN/AMX), keeping fp32 master weights,
        fp32 gradients for the optimizer and the loss in fp32."""
        self.model = model
        self.mm_dtype = matmul_dtype
        self.enc, self.enc_act = _linears_and_act(model.encoder.net)
        self.dec, self.dec_act = _linears_and_act(model.decoder.net)
        lik = model.likelihood
        self.sigma = lik.sigma if isinstance(lik, FixedGaussianLikelihood) else None
        self._bufs: dict[tuple, torch.Tensor] = {}
        self._checks: list[torch.Tensor] = []

    def _buf(self, key: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A persistent scratch tensor: re-allocating megabyte-sized tensors every step costs
        page faults that show up as a slower optimizer and matmuls on CPU."""
        dtype = dtype or like.dtype
        t = self._bufs.get((key, shape))
        if t is None or t.dtype != dtype or t.device != like.device:
            t = self._bufs[(key, shape)] = torch.empty(shape, dtype=dtype, device=like.device)
        return t

    @staticmethod
    def _grad_buf(p: torch.Tensor) -> torch.Tensor:
        if p.grad is None or p.grad.shape != p.shape:
            p.grad = torch.empty_like(p)
        return p.grad

    def _low(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the matmul dtype (itself when that is its dtype), in a persistent buffer."""
        if self.mm_dtype is None or t.dtype == self.mm_dtype:
            return t
        return self._buf(key, tuple(t.shape), t, self.mm_dtype).copy_(t)

    def _forward(self, name: str, layers: list[nn.Linear], act: nn.Module | None, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the fp32 output and the inputs of every layer (in the matmul dtype)."""
        h = self._low(f"{name}in", h)
        hs = [h]
        for i, layer in enumerate(layers):
            a = self._buf(f"{name}{i}", (h.shape[0], layer.out_features), h)
            torch.addmm(self._low(f"{name}b{i}", layer.bias), h, self._low(f"{name}w{i}", layer.weight).t(), out=a)
            h = _act_forward(act, a) if i < len(layers) - 1 else a
            hs.append(h)
        return h.to(layers[-1].weight.dtype), hs

    def _backward(self, name: str, layers: list[nn.Linear], act: nn.Module | None, hs: list[torch.Tensor], g: torch.Tensor,
                  need_input_grad: bool, *, param_grads: bool = True, add_at: dict[int, torch.Tensor] | None = None,
                  tag: str = "") -> torch.Tensor | None:
        """Back through ``layers`` from output gradient ``g``; hs[i] is the input of layer i (the
        forward's ``name``). ``param_grads=False``: only the input gradient (no .grad written).
        ``add_at[i]``: a gradient on hs[i] from elsewhere, added where the backward reaches it.
        ``tag`` keeps this pass's scratch buffers apart from another pass's of the same shapes."""
        key = name + tag
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            g_low = self._low(f"g{key}low{i}", g)
            if param_grads:
                gb = torch.sum(g, 0, out=self._grad_buf(layer.bias))
                if g_low is g:
                    gw = torch.mm(g.t(), hs[i], out=self._grad_buf(layer.weight))
                else:
                    gw_low = torch.mm(g_low.t(), hs[i], out=self._buf(f"gw{key}{i}", tuple(layer.weight.shape), g_low))
                    gw = self._grad_buf(layer.weight).copy_(gw_low)
                # Summed while still in cache: a NaN or inf anywhere makes the sum non-finite.
                self._checks += [gw.sum(), gb.sum()]
            if i == 0 and not need_input_grad:
                return None
            w = self._bufs.get((f"{name}w{i}", tuple(layer.weight.shape)), layer.weight) if g_low is not g else layer.weight
            g = torch.mm(g_low, w, out=self._buf(f"g{key}{i}", (g.shape[0], layer.in_features), g_low)).to(layer.weight.dtype)
            if add_at is not None and i in add_at:
                g = g.add_(add_at[i])
            if i > 0:
                g = _act_backward(act, g, hs[i])
        return g

    def _kl(self, mu: torch.Tensor, std: torch.Tensor, logvar: torch.Tensor, kl_weight: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
        """(KL to N(0, I), the KL term with free bits, its weight per dimension for the gradient:
        beta * kl_weight / B, zero for the dimensions held at the free-bits floor)."""
        cfg = self.model.config
        kl_dims = 0.5 * (mu * mu + std * std - 1.0 - logvar).mean(0)  # (D,)
        kl = kl_dims.sum()
        c = cfg.beta * kl_weight
        if cfg.free_bits > 0:
            return kl, kl_dims.clamp(min=cfg.free_bits).sum(), (kl_dims > cfg.free_bits).to(mu.dtype).mul_(c / len(mu))
        return kl, kl, c / len(mu)

    def _encoder_backward_kl(self, g_z: torch.Tensor, mu: torch.Tensor, std: torch.Tensor, eps: torch.Tensor,
                             c_dims: torch.Tensor | float, enc_hs: list[torch.Tensor]) -> None:
        """The encoder's gradients from dL/dz through z = mu + std * eps, plus the KL's (``_kl``)."""
        g_mu = g_z + mu * c_dims
        g_logvar = (g_z * eps * std).mul_(0.5).add_((std * std - 1.0).mul_(0.5) * c_dims)
        self._backward("e", self.enc, self.enc_act, enc_hs, torch.cat([g_mu, g_logvar], dim=1), need_input_grad=False)

    def _check(self) -> torch.Tensor:
        """The sum of the gradients written since the last call (non-finite when any is)."""
        out, self._checks = torch.stack(self._checks).sum(), []
        return out

    def _recon(self, xf: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x|z) per example (B,), d(-mean log p)/d params (B, N)) for the decoder's output."""
        if self.sigma is None:  # Bernoulli with logits: log p = x*l - softplus(l)
            log_px = torch.sum(xf * params - F.softplus(params), dim=1)
            g_params = torch.sigmoid(params).sub_(xf)  # d(-log p)/dl
        else:
            r = (xf - params) / self.sigma
            log_px = -0.5 * (r * r).sum(1) - xf.shape[1] * (math.log(self.sigma) + 0.5 * math.log(2 * math.pi))
            g_params = r.mul_(-1.0 / self.sigma)
        return log_px, g_params.mul_(1.0 / xf.shape[0])


class FastStep(_HandDerived):
    """``step(x, kl_weight)`` sets ``p.grad`` for every parameter and returns the loss dict,
    plus "grad_check", a sum over all gradients that is non-finite when any gradient is."""

    def __init__(self, model: nn.Module, matmul_dtype: torch.dtype | None = None) -> None:
        if not supports(model):
            raise ValueError("FastStep does not support this model")
        super().__init__(model, matmul_dtype)

    def step(self, x: torch.Tensor, kl_weight: float = 1.0, **cond: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One step on x (B, *shape); a conditional model's condition comes as its batch field (y= or c=)."""
        cfg = self.model.config
        b = x.shape[0]
        self._checks = []
        xf = x.reshape(b, -1)
        with torch.no_grad():
            h = self.model.condition(**cond) if cond else None  # (B, E): joins x and z
            # encoder -> (mu, logvar) -> z
            out, enc_hs = self._forward("e", self.enc, self.enc_act, xf if h is None else torch.cat([xf, h], 1))
            mu, logvar = out.chunk(2, dim=1)
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(mu)
            z = torch.addcmul(mu, std, eps)
            # decoder -> likelihood
            params, dec_hs = self._forward("d", self.dec, self.dec_act, z if h is None else torch.cat([z, h], 1))
            log_px, g_params = self._recon(xf, params)
            recon = -log_px.mean()
            kl, kl_term, c_dims = self._kl(mu, std, logvar, kl_weight)
            loss = recon + cfg.beta * kl_weight * kl_term
            # backward: decoder, then the reparameterisation and the KL
            g_z = self._backward("d", self.dec, self.dec_act, dec_hs, g_params, need_input_grad=True)
            if h is not None:
                g_z = g_z[:, :mu.shape[1]]  # the condition is data: no gradient
            self._encoder_backward_kl(g_z, mu, std, eps, c_dims, enc_hs)
            grad_check = torch.stack(self._checks).sum()
        # "grad_check" is finite exactly when every gradient is (up to overflow of the sum).
        return {"loss": loss, "elbo": -(recon + kl), "recon": recon, "kl": kl, "grad_check": grad_check}


# -- the adversarial autoencoder ------------------------------------------------------------------
def supports_aae(model: nn.Module) -> bool:
    """True when ``FastAAEStep`` computes exactly this model's ``train_step``: an AAE (not a
    subclass) with an MLP encoder and decoder as ``supports`` asks of a VAE, and an MLP
    discriminator (linear layers with ReLU, tanh or LeakyReLU between them). The prior may be any: the step
    only draws from it."""
    if type(model) is not AAE or getattr(model, "perceptual", None) is not None:
        return False
    if type(model.encoder) is not MLPEncoder or type(model.decoder) is not MLPDecoder:
        return False
    if type(model.likelihood) not in (BernoulliLikelihood, FixedGaussianLikelihood):
        return False
    return all(_linears_and_act(seq) is not None for seq in (model.encoder.net, model.decoder.net, model.discriminator))


class FastAAEStep(_HandDerived):
    """``AAE.train_step`` without autograd, in either of its schedules.

    ``step(x, apply)`` runs the batch's updates in the model's order; before each it has written
    that player's gradients into ``p.grad`` and calls ``apply(player, loss, grad_check)``, which
    checks and steps that player's optimizer and says whether it did (``steps.HandDerivedPlayersStep``).
    The random draws (the reparameterisation noise, then the prior's samples) come in the same
    order as in ``train_step``, so both engines train alike from the same seed (tested).

    The discriminator D(z) = logit; with BCE on logits: the generator's loss mean softplus(-D(z))
    has d/dD = (sigmoid(D) - 1) / B, and the discriminator's mean softplus(-D(p)) + mean softplus(D(z))
    has d/dD(p) = (sigmoid(D(p)) - 1) / B and d/dD(z) = sigmoid(D(z)) / B.
    """

    def __init__(self, model: nn.Module, matmul_dtype: torch.dtype | None = None) -> None:
        if not supports_aae(model):
            raise ValueError("FastAAEStep does not support this model")
        super().__init__(model, matmul_dtype)
        self.disc, self.disc_act = _linears_and_act(model.discriminator)

    def _encode(self, xf: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(mu, logvar, eps or None, z, the encoder's layer inputs)."""
        out, hs = self._forward("e", self.enc, self.enc_act, xf)
        mu, logvar = out.chunk(2, dim=1)
        if self.model.deterministic:
            return mu, logvar, None, mu, hs
        eps = torch.randn_like(mu)
        return mu, logvar, eps, torch.addcmul(mu, torch.exp(0.5 * logvar), eps), hs

    def _encoder_backward(self, g_z: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None,
                          hs: list[torch.Tensor]) -> None:
        if eps is None:  # z = mu: the log-variance head gets no gradient
            g_out = torch.cat([g_z, torch.zeros_like(g_z)], dim=1)
        else:  # z = mu + exp(logvar / 2) * eps
            g_out = torch.cat([g_z, g_z * eps * torch.exp(0.5 * logvar) * 0.5], dim=1)
        self._backward("e", self.enc, self.enc_act, hs, g_out, need_input_grad=False)

    def _generator_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the generator's loss, its gradient on z); the discriminator's .grad is not touched."""
        return self._generator_loss_grad("c", *self._forward("c", self.disc, self.disc_act, z))

    def _generator_loss_grad(self, name: str, f: torch.Tensor, hs: list[torch.Tensor], weight: float = 1.0,
                             tag: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """``_generator_grad`` from the discriminator's forward pass ``name`` on the codes (logits
        ``f``, layer inputs ``hs``), the gradient scaled by ``weight``."""
        g_loss = F.softplus(-f).mean()
        g_z = self._backward(name, self.disc, self.disc_act, hs, torch.sigmoid(f).sub_(1.0).mul_(weight / len(f)),
                             need_input_grad=True, param_grads=False, tag=tag)
        return g_loss, g_z

    def _discriminator_grad(self, prior_z: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the discriminator's loss, its accuracy) on prior draws (real) and codes (fake), one
        pass over both; sets the discriminator's gradients."""
        logits, hs = self._forward("r", self.disc, self.disc_act, torch.cat([prior_z, z]))
        return self._discriminator_loss_grad(logits, hs, len(z))

    def _discriminator_loss_grad(self, logits: torch.Tensor, hs: list[torch.Tensor], b: int
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``_discriminator_grad`` from its forward pass: ``logits`` (2B, 1) of [prior draws; codes]
        and the layer inputs ``hs``."""
        real, fake = logits[:b], logits[b:]
        d_loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        acc = ((real > 0).to(real.dtype).mean() + (fake < 0).to(fake.dtype).mean()) / 2
        g = torch.sigmoid(logits)
        g[:b] -= 1.0
        self._backward("r", self.disc, self.disc_act, hs, g.mul_(1.0 / b), need_input_grad=False)
        return d_loss, acc

    def step(self, x: torch.Tensor, apply: Callable[[str, torch.Tensor, torch.Tensor], bool],
             kl_weight: float = 1.0, mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One batch; ``kl_weight`` is ignored (an AAE has no KL term), and so is ``mean`` (no
        update depends on the batch's values)."""
        m = self.model
        xf = x.reshape(x.shape[0], -1)
        self._checks = []
        with torch.no_grad():
            mu, logvar, eps, z, enc_hs = self._encode(xf)
            params, dec_hs = self._forward("d", self.dec, self.dec_act, z)
            log_px, g_params = self._recon(xf, params)
            recon = -log_px.mean()
            out = {"loss": recon, "recon": recon}
            if not m.deterministic:
                kl = m.prior.kl(mu, logvar, z).sum(-1).mean()
                out.update(kl=kl, elbo=-(recon + kl))
            g_z = self._backward("d", self.dec, self.dec_act, dec_hs, g_params, need_input_grad=True)
            if m.config.phases == "joint":  # reconstruction + generator loss, then the discriminator
                # One discriminator pass over [prior draws; codes] serves both updates: the
                # autoencoder's update leaves the discriminator's weights and the codes as they were.
                # (The prior is drawn after the noise, as in train_step: the same random stream.)
                b = len(z)
                prior_z = m.prior.sample(b, device=x.device, dtype=z.dtype)
                logits, hs = self._forward("r", self.disc, self.disc_act, torch.cat([prior_z, z]))
                w = m.config.adversarial_weight
                g_loss, g_adv = self._generator_loss_grad("r", logits[b:], [h[b:] for h in hs], w, tag="gen")
                self._encoder_backward(g_z.add_(g_adv), logvar, eps, enc_hs)
                apply("autoencoder", recon + w * g_loss, self._check())
                d_loss, acc = self._discriminator_loss_grad(logits, hs, b)
                apply("discriminator", d_loss, self._check())
            else:  # the paper's order: reconstruction; discriminator; generator on the same new codes
                self._encoder_backward(g_z, logvar, eps, enc_hs)
                apply("autoencoder", recon, self._check())
                _, logvar, eps, codes, enc_hs = self._encode(xf)
                prior_z = m.prior.sample(len(x), device=x.device, dtype=codes.dtype)
                d_loss, acc = self._discriminator_grad(prior_z, codes)
                apply("discriminator", d_loss, self._check())
                g_loss, g_codes = self._generator_grad(codes)
                self._encoder_backward(g_codes, logvar, eps, enc_hs)
                apply("generator", g_loss, self._check())
        return {**out, "disc_loss": d_loss, "gen_loss": g_loss, "critic_acc": acc}


# -- the VAE-GAN ----------------------------------------------------------------------------------
def _discriminator_layers(model: nn.Module) -> tuple[list[nn.Linear], nn.Module | None] | None:
    """The VAE-GAN's MLP discriminator (Flatten, then Linear/act pairs, then the head) as one
    stack whose last hidden output is the feature layer Dis_l; None for the conv one."""
    feats = list(model.discriminator.features)
    if not feats or type(feats[0]) is not nn.Flatten or not isinstance(model.discriminator.head, nn.Linear):
        return None
    return _linears_and_act(feats[1:] + [model.discriminator.head])


def supports_vaegan(model: nn.Module) -> bool:
    """True when ``FastVAEGANStep`` computes exactly this model's ``train_step``: a VAE-GAN (not a
    subclass) with MLP encoder, decoder and discriminator, a Bernoulli or fixed-variance Gaussian
    likelihood and the standard normal prior."""
    if type(model) is not VAEGAN or getattr(model, "perceptual", None) is not None:
        return False
    if type(model.encoder) is not MLPEncoder or type(model.decoder) is not MLPDecoder:
        return False
    if type(model.likelihood) not in (BernoulliLikelihood, FixedGaussianLikelihood) or type(model.prior) is not StandardNormalPrior:
        return False
    return (_linears_and_act(model.encoder.net) is not None and _linears_and_act(model.decoder.net) is not None
            and _discriminator_layers(model) is not None)


class FastVAEGANStep(_HandDerived):
    """``VAEGAN.train_step`` without autograd: one forward pass of the encoder, of the decoder on
    [z; z_p] and of the discriminator on [x; x~; x_p], then each player's gradient by hand, and the
    updates in the model's order under its equilibrium rule (``apply`` as for ``FastAAEStep``).

    With Dis(.) = (logit, features f), FR = 1/2 sum_f (f(x~) - f(x))^2 / (B s^2) (f(x) and s^2
    detached) and the non-saturating GAN loss: the encoder's gradient reaches x~ through FR only
    (A = dFR/dx~, back through the discriminator's feature layers), the decoder's is gamma * A plus
    the GAN loss's (back from the logits of x~ and x_p), the discriminator's is its BCE's on all
    three parts. The decoder's output goes to x~ through the likelihood's mean (sigmoid for
    Bernoulli, identity for the fixed-variance Gaussian)."""

    def __init__(self, model: nn.Module, matmul_dtype: torch.dtype | None = None) -> None:
        if not supports_vaegan(model):
            raise ValueError("FastVAEGANStep does not support this model")
        super().__init__(model, matmul_dtype)
        self.dis, self.dis_act = _discriminator_layers(model)

    def _mean_grad(self, g_mean: torch.Tensor, params: torch.Tensor, xm: torch.Tensor) -> torch.Tensor:
        """d/d params from d/d mean; ``xm`` = mean(params)."""
        return g_mean if self.sigma is not None else g_mean.mul_(xm * (1.0 - xm))

    def step(self, x: torch.Tensor, apply: Callable[[str, torch.Tensor, torch.Tensor], bool],
             kl_weight: float = 1.0, mean: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        m, cfg = self.model, self.model.config
        b = x.shape[0]
        xf = x.reshape(b, -1)
        k = len(self.dis) - 1  # hs[k]: the discriminator's features, the head's input
        with torch.no_grad():
            out, enc_hs = self._forward("e", self.enc, self.enc_act, xf)
            mu, logvar = out.chunk(2, dim=1)
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(mu)
            z = torch.addcmul(mu, std, eps)
            z_p = m.prior.sample(b, device=x.device, dtype=x.dtype)
            params, dec_hs = self._forward("d", self.dec, self.dec_act, torch.cat([z, z_p]))  # (2B, N)
            recon = -m.likelihood.log_prob(params[:b].view(b, 1, *x.shape[1:]), x).mean()
            # the discriminator's input [x; x~; x_p] in one persistent buffer, the decoder's means
            # written straight into it (no concatenated copy per step)
            dis_in = self._buf("cx", (3 * b, xf.shape[1]), xf)
            dis_in[:b].copy_(xf)
            x_fake = dis_in[b:]  # [x~; x_p]
            torch.sigmoid(params, out=x_fake) if self.sigma is None else x_fake.copy_(params)
            logits, dis_hs = self._forward("c", self.dis, self.dis_act, dis_in)  # (3B, 1)
            logits = logits[:, 0]
            l_real, l_tilde, l_p = logits[:b], logits[b:2 * b], logits[2 * b:]
            f = dis_hs[k].to(logits.dtype)  # (float32 also under bfloat16 matmuls)
            f_real, f_tilde = f[:b], f[b:2 * b]
            var = f_real.var(0, unbiased=False).mean().clamp(min=1e-8) if b > 1 else f.new_ones(())
            diff = f_tilde - f_real
            feature_recon = 0.5 * (diff * diff).sum(1).mean() / var
            kl, kl_term, c_dims = self._kl(mu, std, logvar, kl_weight)
            real_bce = F.softplus(-l_real).mean()
            fake_tilde, fake_p = F.softplus(l_tilde).mean(), F.softplus(l_p).mean()
            dis_loss = real_bce + fake_tilde + fake_p
            gan_loss = F.softplus(-l_tilde).mean() + F.softplus(-l_p).mean()
            enc_loss = cfg.beta * kl_weight * kl_term + feature_recon
            acc = ((l_real > 0).float().mean() + (logits[b:] < 0).float().mean()) / 2  # (float32, as train_step's)
            fake_bce = (fake_tilde + fake_p) / 2
            avg = mean or (lambda t: t)
            train_dis, train_dec = equilibrium_rule(float(avg(real_bce)), float(avg(fake_bce)), cfg.equilibrium, cfg.margin)
            out = {"loss": enc_loss, "elbo": -(recon + kl), "recon": recon, "kl": kl, "feature_recon": feature_recon,
                   "dis_loss": dis_loss, "gan_loss": gan_loss, "critic_acc": acc,
                   "dis_updated": torch.tensor(float(train_dis)), "gan_updated": torch.tensor(float(train_dec))}

            # the encoder: beta * KL + FR, FR reaching z through x~ and the decoder
            g_f = diff.mul_(1.0 / (b * var))  # dFR/df(x~), (B, F)
            hs_tilde = [h[b:2 * b] for h in dis_hs]
            g_a = _act_backward(self.dis_act, g_f.clone() if train_dec else g_f, hs_tilde[k]) if k > 0 else g_f
            a_x = self._backward("c", self.dis[:k], self.dis_act, hs_tilde[:k], g_a, True, param_grads=False, tag="fr")
            a_params = self._mean_grad(a_x, params[:b], x_fake[:b])
            g_z = self._backward("d", self.dec, self.dec_act, [h[:b] for h in dec_hs], a_params, True,
                                 param_grads=False, tag="enc")
            self._checks = []
            self._encoder_backward_kl(g_z, mu, std, eps, c_dims, enc_hs)
            apply("encoder", enc_loss, self._check())
            if train_dec:  # the decoder: gamma * FR + the GAN loss, through x~ and x_p
                g_logit = torch.sigmoid(logits[b:]).sub_(1.0).mul_(1.0 / b).unsqueeze(1)  # (2B, 1)
                extra = torch.zeros_like(f[b:])
                extra[:b] = g_f.mul_(cfg.gamma)
                g_x = self._backward("c", self.dis, self.dis_act, [h[b:] for h in dis_hs], g_logit, True,
                                     param_grads=False, add_at={k: extra}, tag="gan")
                self._checks = []
                self._backward("d", self.dec, self.dec_act, dec_hs, self._mean_grad(g_x, params, x_fake), False)
                apply("decoder", cfg.gamma * feature_recon + gan_loss, self._check())
            if train_dis:  # the discriminator: its BCE on the data (1) and on x~ and x_p (0)
                g_logit = torch.sigmoid(logits).mul_(1.0 / b)
                g_logit[:b] -= 1.0 / b
                self._checks = []
                self._backward("c", self.dis, self.dis_act, dis_hs, g_logit.unsqueeze(1), False)
                apply("discriminator", dis_loss, self._check())
        return out


def players_step(model: nn.Module, matmul_dtype: torch.dtype | None = None) -> _HandDerived | None:
    """The hand-derived step of a model with several players, where there is one (else None)."""
    for ok, step in ((supports_aae, FastAAEStep), (supports_vaegan, FastVAEGANStep)):
        if ok(model):
            return step(model, matmul_dtype)
    return None
