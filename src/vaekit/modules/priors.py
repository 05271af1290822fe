"""Priors p(z). A prior owns its KL term against a diagonal-Gaussian posterior."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..functional.kl import kl_normal_std_normal, standard_normal_log_prob
from ..registry import Registry

PRIORS: Registry = Registry("prior")


class Prior(nn.Module):
    """Base class: ``log_prob(z)`` (summed over the latent axis) and ``kl(mu, logvar)`` per dim."""

    analytic_kl: bool = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) in nats, summed over the last axis: (..., D) -> (...)."""
        raise NotImplementedError

    def sample(self, n: int, device: torch.device | str = "cpu", temperature: float = 1.0,
               dtype: torch.dtype | None = None) -> torch.Tensor:
        """n draws, (n, D), in ``dtype`` (default: torch's default dtype); ``temperature`` scales
        the standard deviation."""
        raise NotImplementedError

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per latent dimension, (B, D) in nats.

        Analytic where the prior allows it; otherwise a one-sample Monte Carlo estimate at ``z``.
        """
        raise NotImplementedError


@PRIORS.register("standard-normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I), with the closed-form KL."""

    analytic_kl = True

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_prob(z).sum(-1)

    def sample(self, n: int, device: torch.device | str = "cpu", temperature: float = 1.0,
               dtype: torch.dtype | None = None) -> torch.Tensor:
        return temperature * torch.randn(n, self.latent_dim, device=device, dtype=dtype)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return kl_normal_std_normal(mu, logvar)
