"""KL weight schedules (warm-up against posterior collapse)."""

from __future__ import annotations

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
