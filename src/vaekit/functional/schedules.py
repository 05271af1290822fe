"""KL weight schedules (warm-up against posterior collapse) and annealing temperatures (AIS)."""

from __future__ import annotations

import torch

SCHEDULES = ("linear", "cyclical")


def kl_weight_at(progress: float, warmup: float, schedule: str = "linear") -> float:
    """KL weight in [0, 1] after ``progress`` epochs (fractional) of training.

    linear: rises from 0 to 1 over the first ``warmup`` epochs, then stays at 1.
    cyclical (Fu et al. 2019): repeats cycles of ``2 * warmup`` epochs, rising over the first
    half of each cycle and holding at 1 for the second half.
    ``warmup <= 0`` means no warm-up (always 1).
    """
    if warmup <= 0:
        return 1.0
    if schedule == "linear":
        return min(1.0, max(0.0, progress / warmup))
    if schedule == "cyclical":
        phase = progress % (2.0 * warmup)
        return min(1.0, phase / warmup)
    raise ValueError(f"unknown KL schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


AIS_SCHEDULES = ("sigmoid", "linear")


def ais_temperatures(steps: int, kind: str = "sigmoid", radius: float = 4.0) -> torch.Tensor:
    """Inverse temperatures 0 = beta_0 < beta_1 < ... < beta_steps = 1 of an annealing path: float64 (steps + 1,).

    sigmoid (Grosse et al. 2015, used by Wu et al. 2017 for decoder-based models): sigma(t) at
    ``steps + 1`` evenly spaced t in [-radius, radius], rescaled to run from exactly 0 to 1, so
    the steps are smallest at both ends, where the intermediate distributions change fastest
    relative to their width. linear: evenly spaced.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive whole number, got {steps}")
    t = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ValueError(f"unknown AIS schedule {kind!r}; valid: {', '.join(AIS_SCHEDULES)}")
    s = torch.sigmoid(radius * (2.0 * t - 1.0))
    b = (s - s[0]) / (s[-1] - s[0])
    b[0], b[-1] = 0.0, 1.0  # exact ends, whatever the rounding
    return b
