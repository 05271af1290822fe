"""Variational bounds on log p(x), in nats per example."""

from __future__ import annotations

import math

import torch

from .amp import float32_terms


@float32_terms
def log_mean_exp(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Stable log(mean(exp(t))) along ``dim``."""
    return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The K-sample importance-weighted bound from log weights of shape (K, B) -> (B,).

    ``log_w[k, b] = log p(x_b, z_kb) - log q(z_kb | x_b)`` with ``z_kb ~ q(z | x_b)``. K = 1 gives
    the ELBO; as K grows the bound increases towards log p(x) (Burda et al. 2015).
    """
    return log_mean_exp(log_w, dim=0)


def log_mean_exp_std_err(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Monte Carlo standard error of ``log_mean_exp(t, dim)`` as an estimate of log E[exp(t)].

    By the delta method: with w = exp(t), sd(log mean w) ~= sd(w) / (sqrt(n) * mean(w)), n the
    size of ``dim`` (computed on w / max w, so it never overflows). Meaningful when the weights
    are not dominated by one draw; 0 along a dim of size 1 (no spread to measure).
    """
    n = t.shape[dim]
    if n < 2:
        return torch.zeros_like(t.select(dim, 0))
    w = torch.exp(t - t.amax(dim=dim, keepdim=True))
    return w.std(dim=dim) / (math.sqrt(n) * w.mean(dim=dim))
