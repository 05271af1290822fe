"""Bernoulli log-likelihood with logits, summed per example, with a hand-written backward.

The training step spends much of its non-matmul time here (784 values per MNIST image), so the
forward is two fused passes and the backward one: d/dl [x*l - softplus(l)] = x - sigmoid(l).
The data may broadcast against the logits: with k samples per example (IWAE), logits (k, B, N)
are scored against x (B, N) without materialising k copies of x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .amp import float32_terms


class _BernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(logits, x)
        # -log p = softplus(l) - x*l, built in one buffer; (..., N) -> (...)
        t = F.softplus(logits)
        t.addcmul_(x, logits, value=-1.0)  # x broadcasts against the logits
        return torch.sum(t, dim=-1).neg_()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        logits, x = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        g_logits = torch.sigmoid(logits).sub_(x).mul_(-g) if ctx.needs_input_grad[0] else None
        g_x = None
        if ctx.needs_input_grad[1]:
            g_x = logits * g
            g_x = g_x.sum(tuple(range(g_x.dim() - x.dim()))) if g_x.dim() > x.dim() else g_x
        return g_logits, g_x


@float32_terms
def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i [x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)] per example, in nats: (B, ...) -> (B,).

    Also valid for grey levels x in [0, 1] (the "continuous Bernoulli" cross-entropy without
    its normaliser, as in the PyTorch VAE example).
    """
    b = logits.shape[0]
    return _BernoulliLogProb.apply(logits.reshape(b, -1), x.reshape(b, -1))


@float32_terms
def bernoulli_log_prob_k(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The same per-example sum for k logit sets per example: logits (k, B, ...), x (B, ...) -> (k, B).

    x is broadcast, never copied k times (values equal ``bernoulli_log_prob`` on the expanded x
    up to float rounding).
    """
    k, b = logits.shape[0], logits.shape[1]
    return _BernoulliLogProb.apply(logits.reshape(k, b, -1), x.reshape(b, -1))
