"""Discretized logistic likelihood for 8-bit data (Salimans et al. 2017, single component)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .amp import float32_terms


@float32_terms
def discretized_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bins: int = 256
) -> torch.Tensor:
    """Elementwise log P(x) in nats for x on the grid k / (bins - 1), k = 0..bins-1, in [0, 1].

    The logistic(mean, exp(log_scale)) density (mean, scale in the same [0, 1] units) is
    integrated over each bin of width 1 / (bins - 1); the two edge bins take the tails, so the
    probabilities of all bins sum to 1.
    """
    half = 0.5 / (bins - 1)
    inv_s = torch.exp(-log_scale)
    centred = x - mean
    plus_in = inv_s * (centred + half)
    min_in = inv_s * (centred - half)
    log_cdf_plus = F.logsigmoid(plus_in)  # log CDF at the upper bin edge
    log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 - CDF) at the lower bin edge
    # log(CDF(plus) - CDF(min)) computed stably as log CDF(plus) + log(1 - exp(log CDF(min) - log CDF(plus)))
    log_cdf_min = F.logsigmoid(min_in)
    diff = (log_cdf_min - log_cdf_plus).clamp(max=-1e-30)
    log_mid = log_cdf_plus + torch.log(-torch.expm1(diff))
    # Far in the tails the difference underflows; use the density at the centre times the bin width.
    mid_in = inv_s * centred
    log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in) + math.log(2 * half)
    log_mid = torch.where(log_mid > -20.0, log_mid, torch.maximum(log_mid, log_pdf_mid))
    lo = x < half  # first bin: CDF(upper edge)
    hi = x > 1.0 - half  # last bin: 1 - CDF(lower edge)
    return torch.where(lo, log_cdf_plus, torch.where(hi, log_one_minus_cdf_min, log_mid))
