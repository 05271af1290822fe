"""Priors p(z). A prior owns its KL term against a diagonal-Gaussian posterior."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..functional.amp import wrap_methods
from ..functional.kl import gaussian_log_prob, kl_normal_std_normal, standard_normal_log_prob
from ..registry import Registry

PRIORS: Registry = Registry("prior")


class Prior(nn.Module):
    """Base class: ``log_prob(z)`` (summed over the latent axis) and ``kl(mu, logvar)`` per dim."""

    analytic_kl: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        # log p(z) and the KL in float32 under mixed precision (functional/amp.py)
        super().__init_subclass__(**kwargs)
        wrap_methods(cls, ("log_prob", "kl"))

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


@PRIORS.register("gmm-ring")
class RingMixturePrior(Prior):
    """The adversarial autoencoder's mixture of 10 Gaussians on a ring (Makhzani et al. 2015, fig. 4).

    In each pair of latent dimensions (0, 1), (2, 3), ... component k (k = 0..9, equally likely)
    is a 2-D Gaussian elongated along the ray at angle 2 pi k / 10: centred at radius ``shift``,
    standard deviation ``radial_std`` along the ray and ``tangential_std`` across it. Every pair
    uses the same component k (so the codes form 10 clusters, one per component), and an odd last
    dimension is N(0, 1). The density is a mixture, so ``kl`` is a one-sample Monte Carlo estimate
    log q(z|x) - log p(z) at ``z``, spread evenly over the dimensions' log p share.
    """

    components = 10
    shift, radial_std, tangential_std = 1.4, 0.5, 0.1  # the values of the common AAE code

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        angles = 2 * torch.pi * torch.arange(self.components, dtype=torch.float64) / self.components
        # rows: the unit vectors along (radial) and across (tangential) each component's ray
        self.register_buffer("radial", torch.stack([angles.cos(), angles.sin()], -1).float(), persistent=False)
        self.register_buffer("tangential", torch.stack([-angles.sin(), angles.cos()], -1).float(), persistent=False)

    def _pairs(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.latent_dim // 2
        rest = z[..., 2 * n:] if self.latent_dim % 2 else None
        return z[..., : 2 * n].reshape(*z.shape[:-1], n, 2), rest

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        pairs, rest = self._pairs(z)  # (..., P, 2)
        radial = pairs @ self.radial.to(z.dtype).T - self.shift  # (..., P, K): offset along each ray
        tangential = pairs @ self.tangential.to(z.dtype).T  # (..., P, K)
        log_comp = (standard_normal_log_prob(radial / self.radial_std) - math.log(self.radial_std)
                    + standard_normal_log_prob(tangential / self.tangential_std) - math.log(self.tangential_std))
        out = torch.logsumexp(log_comp.sum(-2), dim=-1) - math.log(self.components)  # same k in every pair
        if rest is not None:
            out = out + standard_normal_log_prob(rest).sum(-1)
        return out

    def sample(self, n: int, device: torch.device | str = "cpu", temperature: float = 1.0,
               dtype: torch.dtype | None = None) -> torch.Tensor:
        pairs = self.latent_dim // 2
        k = torch.randint(self.components, (n,), device=device)
        radial, tangential = self.radial.to(device, dtype or torch.get_default_dtype()), self.tangential.to(
            device, dtype or torch.get_default_dtype())
        a = self.shift + temperature * self.radial_std * torch.randn(n, pairs, 1, device=device, dtype=radial.dtype)
        b = temperature * self.tangential_std * torch.randn(n, pairs, 1, device=device, dtype=radial.dtype)
        z = (a * radial[k][:, None] + b * tangential[k][:, None]).reshape(n, 2 * pairs)
        if self.latent_dim % 2:
            z = torch.cat([z, temperature * torch.randn(n, 1, device=device, dtype=z.dtype)], -1)
        return z

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            raise ValueError("the ring mixture prior has no closed-form KL; pass the sample z")
        log_q = gaussian_log_prob(z, mu, logvar)  # (B, D)
        return log_q - (self.log_prob(z) / self.latent_dim)[..., None]
