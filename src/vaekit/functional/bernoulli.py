"""Bernoulli log-likelihood with logits, summed per example, with a hand-written backward.

The training step spends much of its non-matmul time here (784 values per MNIST image), so the
forward is two fused passes and the backward one: d/dl [x*l - softplus(l)] = x - sigmoid(l).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _BernoulliLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(logits, x)
        # log p = x*l - softplus(l); (B, N) -> (B,)
        return torch.sum(x * logits - F.softplus(logits), dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        logits, x = ctx.saved_tensors
        g_logits = (x - torch.sigmoid(logits)).mul_(grad.unsqueeze(1)) if ctx.needs_input_grad[0] else None
        g_x = logits * grad.unsqueeze(1) if ctx.needs_input_grad[1] else None
        return g_logits, g_x


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i [x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)] per example, in nats: (B, ...) -> (B,).

    Also valid for grey levels x in [0, 1] (the "continuous Bernoulli" cross-entropy without
    its normaliser, as in the PyTorch VAE example).
    """
    b = logits.shape[0]
    return _BernoulliLogProb.apply(logits.reshape(b, -1), x.reshape(b, -1))
