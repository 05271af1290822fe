"""Hamiltonian Monte Carlo transitions (Neal 2011), batched: one independent chain per row.

Pure tensor math on a target given as a function; nothing here knows about models. Used by
imputation (``apps.impute``: the target is p(z | x_obs)) and by annealed importance sampling
(``vaekit.ais``: the targets are p(z) p(x|z)^beta).

A target is a callable ``target(state) -> (log_prob, grad, aux)``: the unnormalised log density
(B,), its gradient with respect to the state (B, D), both detached, and ``aux``, any tensor with
B rows that the caller wants carried along with the accepted state (decoder outputs, likelihood
terms), or None. ``log_prob_and_grad`` builds such a callable from a plain log density.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Target = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]


def log_prob_and_grad(fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]], state: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(log p (B,), d log p / d state (B, D), aux) for ``fn(state) -> (log p (B,), aux)``, all detached.

    Works inside ``torch.no_grad()``. Rows are independent, so the gradient of the sum is each
    row's own gradient. Non-finite gradient entries become 0 (the trajectory then fails its
    Metropolis test rather than poisoning the state).
    """
    with torch.enable_grad():
        s = state.detach().requires_grad_(True)
        lp, aux = fn(s)
        (g,) = torch.autograd.grad(lp.sum(), s)
    return lp.detach(), torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0), None if aux is None else aux.detach()


def _where(accept: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(accept.view(-1, *[1] * (new.dim() - 1)), new, old)


def hmc_step(target: Target, state: torch.Tensor, log_prob: torch.Tensor, grad: torch.Tensor,
             aux: torch.Tensor | None, step_size: torch.Tensor, leapfrog: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One HMC trajectory per row with a unit mass matrix, then a Metropolis correction.

    state (B, D) with its ``log_prob`` (B,), ``grad`` (B, D) and ``aux`` under ``target`` (as the
    target returned them); step_size (B, 1) per chain; ``leapfrog`` >= 1 steps, each one call of
    ``target``. Returns the next (state, log_prob, grad, aux) -- each row either the trajectory's
    end or unchanged -- and the acceptance probability min(1, exp(-delta H)) per row (B,), which
    ``adapt_step_size`` uses. A trajectory that diverges (NaN or infinite energy) is rejected.
    Draws: one standard normal momentum (B, D), then one uniform (B,).
    """
    p0 = torch.randn_like(state)
    s, p = state, p0 + 0.5 * step_size * grad
    for j in range(leapfrog):
        s = s + step_size * p
        lp_new, g_new, aux_new = target(s)
        p = p + (step_size if j < leapfrog - 1 else 0.5 * step_size) * g_new
    log_rho = (lp_new - 0.5 * (p ** 2).sum(-1)) - (log_prob - 0.5 * (p0 ** 2).sum(-1))
    log_rho = torch.nan_to_num(log_rho, nan=-math.inf, posinf=-math.inf)  # a diverged trajectory is rejected
    accept = torch.log(torch.rand_like(log_rho)) < log_rho
    state = _where(accept, s, state)
    log_prob, grad = torch.where(accept, lp_new, log_prob), _where(accept, g_new, grad)
    if aux is not None:
        aux = _where(accept, aux_new, aux)
    return state, log_prob, grad, aux, log_rho.clamp(max=0.0).exp()


def adapt_step_size(step_size: torch.Tensor, accept_prob: torch.Tensor, target_rate: float, gain: float = 0.5
                    ) -> torch.Tensor:
    """Each chain's next step size (B, 1): ``step_size * exp(gain * (accept_prob - target_rate))``.

    Too many rejections shrink the step, too few grow it; the fixed point is an average
    acceptance probability of ``target_rate``. accept_prob (B,) from ``hmc_step``.
    """
    return step_size * torch.exp(gain * (accept_prob[:, None] - target_rate))
