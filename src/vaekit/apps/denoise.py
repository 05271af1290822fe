"""Denoise examples by projecting them through a trained VAE: x -> E[x | z = E[z|x]].

The encoder maps a noisy input close to the latent code of a clean example, and the decoder mean
renders that example without the noise the model never learned to produce. Iterating (``steps``
> 1) pulls further toward the model's typical examples, which removes more noise but also more
detail.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UsageError


@torch.no_grad()
def denoise(model: Any, x: torch.Tensor, *, steps: int = 1, batch_size: int = 1000) -> torch.Tensor:
    """Reconstruct ``x`` through the posterior mean ``steps`` times.

    x: float (N, *spec.shape) in model units ([0, 1] images, standardised tables), no NaN.
    Returns float32 (N, *spec.shape) on the CPU: decoder means (probabilities for Bernoulli
    models, means for Gaussian ones), model units. Deterministic.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise UsageError(f"--steps must be a positive whole number, got {steps}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    x = torch.as_tensor(x, dtype=torch.float32)
    if torch.isnan(x).any():
        raise UsageError("the inputs hold missing (NaN) values; fill them with vaekit impute first")
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(model.device)
        for _ in range(int(steps)):
            mu, _ = model.encode(xb)
            xb = model.decode_mean(mu)
        out.append(xb.float().cpu())
    return torch.cat(out) if out else x.clone()


def psnr(clean: torch.Tensor, other: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per example, (N,) in dB: 10 log10(peak^2 / MSE), for images in [0, 1]."""
    mse = (torch.as_tensor(clean, dtype=torch.float64) - torch.as_tensor(other, dtype=torch.float64)).pow(2)
    return 10.0 * torch.log10(peak ** 2 / mse.flatten(1).mean(1).clamp_min(1e-12))
