"""Closed-form Gaussian terms, per latent dimension (callers sum over the last axis)."""

from __future__ import annotations

import math

import torch

from .amp import float32_terms

_LOG_2PI = math.log(2.0 * math.pi)


@float32_terms
def kl_normal_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, exp(logvar)) || N(0, 1) ) per dimension, in nats; same shape as ``mu``."""
    return 0.5 * (mu * mu + logvar.exp() - 1.0 - logvar)


@float32_terms
def kl_normal_normal(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor
                     ) -> torch.Tensor:
    """KL( N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)) ) per dimension, in nats (broadcasting)."""
    d = mu_q - mu_p
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + d * d) * torch.exp(-logvar_p) - 1.0)


@float32_terms
def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, exp(logvar)) in nats (broadcasting).

    Finite for every finite logvar where x == mu: an encoder with no KL in its objective (the
    adversarial autoencoder's Gaussian one) can drive logvar below -177, where 1/sigma overflows
    float32 and its samples z = mu + sigma * eps equal mu exactly; (x - mu)/sigma is then 0/0.
    The residual is taken as 0 there (its limit), without a NaN in the gradient either."""
    d = x - mu
    # where x == mu, 1/sigma is computed at logvar 0 instead (r is 0 either way): no inf * 0
    r = d * torch.exp(-0.5 * torch.where(d == 0, torch.zeros_like(logvar), logvar))
    return -0.5 * (_LOG_2PI + logvar + r * r)


@float32_terms
def gaussian_log_prob_at_eps(eps: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(mu + sigma * eps; mu, sigma^2) = -eps^2/2 - logvar/2 - log(2 pi)/2, in
    nats: the density of a reparameterised sample from its noise (mu drops out)."""
    return -0.5 * (_LOG_2PI + logvar + eps * eps)


@float32_terms
def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; 0, 1) in nats."""
    return -0.5 * (_LOG_2PI + z * z)
