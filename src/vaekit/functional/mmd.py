"""Maximum mean discrepancy (Gretton et al. 2012) between two samples, with Gaussian kernels.

MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y) for x, x' ~ P and y, y' ~ Q; with a
characteristic kernel it is 0 exactly when P = Q. ``mmd2_unbiased`` is the U-statistic
(Gretton et al.'s eq. 3): the within-sample sums leave out i = j, so its expectation is exactly
MMD^2 -- 0 for two samples of one distribution, where it is as often negative as positive (the
biased V-statistic, which keeps i = j, is always positive there).

The kernel is a sum of Gaussians exp(-||a - b||^2 / (2 s^2)) at several bandwidths s, each a
multiple of the median distance between the pooled points (the median heuristic), so one number
is sensitive to differences at several length scales without tuning one bandwidth. Everything
is computed in float64, block by block, so 10k x 10k points need no more memory than one block.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["DEFAULT_SCALES", "median_distance", "mmd2_unbiased"]

#: Bandwidths as multiples of the pooled median distance.
DEFAULT_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of a (n, D) and b (m, D): (n, m), >= 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return d.clamp_(min=0.0)


def median_distance(x: torch.Tensor, y: torch.Tensor, max_points: int = 2000) -> float:
    """Median Euclidean distance between distinct points of the pooled sample x (n, D) and y (m, D).

    More than ``max_points`` pooled points: an evenly spaced subset of that many (deterministic,
    no random draws). Returns a positive float (1.0 if every distance is 0)."""
    pooled = torch.cat([x, y]).to(torch.float64)
    if len(pooled) > max_points:
        pooled = pooled[torch.linspace(0, len(pooled) - 1, max_points).round().long()]
    d = _sq_dists(pooled, pooled)
    iu = torch.triu_indices(len(pooled), len(pooled), offset=1)
    med = float(d[iu[0], iu[1]].median().sqrt()) if iu.shape[1] else 0.0
    return med if med > 0 else 1.0


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, gammas: torch.Tensor, chunk: int) -> torch.Tensor:
    """sum_{i, j} sum_s exp(-gamma_s ||a_i - b_j||^2), over all pairs (diagonal included): 0-dim."""
    total = a.new_zeros(())
    for i in range(0, len(a), chunk):
        d = _sq_dists(a[i:i + chunk], b)  # (c, m)
        for g in gammas:
            total += torch.exp(-g * d).sum()
    return total


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] | None = None,
                  scales: Sequence[float] = DEFAULT_SCALES, chunk: int = 1024) -> torch.Tensor:
    """The unbiased estimate of MMD^2 between samples x (n, D) and y (m, D), n, m >= 2: 0-dim float64.

    Kernel: sum over ``bandwidths`` s of exp(-||a - b||^2 / (2 s^2)); None sets them to ``scales``
    times ``median_distance(x, y)``. The estimate may be slightly negative when the two
    distributions are the same (it is unbiased, not clipped at 0).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two sets of points of one dimension, (n, D) and (m, D); got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points in each sample, got {n} and {m}")
    x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
    if bandwidths is None:
        med = median_distance(x, y)
        bandwidths = [s * med for s in scales]
    if not bandwidths or any(not s > 0 for s in bandwidths):
        raise ValueError(f"bandwidths must be positive, got {list(bandwidths)}")
    gammas = torch.tensor([0.5 / (s * s) for s in bandwidths], dtype=torch.float64)
    k_diag = float(len(gammas))  # k(a, a): each Gaussian is 1 at distance 0
    kxx = (_kernel_sum(x, x, gammas, chunk) - n * k_diag) / (n * (n - 1))
    kyy = (_kernel_sum(y, y, gammas, chunk) - m * k_diag) / (m * (m - 1))
    kxy = _kernel_sum(x, y, gammas, chunk) / (n * m)
    return kxx + kyy - 2.0 * kxy
