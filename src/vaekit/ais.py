"""Annealed importance sampling (Neal 2001) of log p(x) on the generative model alone.

Wu, Burda, Salakhutdinov and Grosse (2017), "On the quantitative analysis of decoder-based
models": AIS needs only p(z) and p(x|z), not an encoder, so models without a tractable posterior
(adversarially trained ones, implicit encoders) and VAEs are measured the same way.

Per example, each of ``chains`` independent chains starts at z_0 ~ p(z) and moves along the
geometric path f_t(z) = p(z) p(x|z)^beta_t, 0 = beta_0 < ... < beta_T = 1 (``functional.
ais_temperatures``, sigmoidal by default). At step t the log weight gains
(beta_t - beta_{t-1}) log p(x | z_{t-1}), then one HMC trajectory (``functional.hmc``; ``leapfrog``
steps) leaving f_t invariant moves z. exp(log weight) is an unbiased estimate of p(x), so the
log-mean-exp over chains is a stochastic lower bound on log p(x) that tightens as T grows (the NLL
reported is an upper bound in expectation, like the importance-sampled one).

The HMC step size follows the posterior as it narrows from p(z) to p(z|x), separately for each
example: it is tuned toward an acceptance rate of ``TARGET_ACCEPT`` by ``TUNE_CHAINS`` extra chains
per example that run alongside and whose weights are dropped. A chain that tuned its own step size
from its own acceptances would not leave f_t invariant (its kernel would depend on its current
state), and the estimate would no longer be a lower bound: on a linear-Gaussian model with known
log p(x), self-tuned chains overestimated log p(x) by ~0.15-0.2 nats per example, with or without
more steps; the counted chains here see step sizes that do not depend on their own states.

All chains of all examples in a pass move together as rows of one batch; log weights accumulate
in float64. The gradient with respect to z of log p(z) and of log p(x|z) are kept apart, so a
change of temperature costs no extra decoder pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .data.batch import Batch, as_batch, model_inputs
from .errors import UsageError
from .functional.bounds import log_mean_exp, log_mean_exp_std_err
from .functional.hmc import adapt_step_size, hmc_step
from .functional.schedules import AIS_SCHEDULES, ais_temperatures
from .metrics import _eval_context, _mean_and_se, _progress, _scan, iw_chunk_rows

__all__ = ["DEFAULT_CHAINS", "DEFAULT_LEAPFROG", "DEFAULT_STEPS", "ais_log_px", "check_ais", "evaluate_ais"]

DEFAULT_STEPS = 500  # temperatures; Wu et al. use 1000-10000 for final numbers
DEFAULT_CHAINS = 16  # independent chains per example
DEFAULT_LEAPFROG = 10  # leapfrog steps per HMC trajectory (Wu et al.: 10)
TARGET_ACCEPT = 0.65  # Wu et al.'s target; optimal for HMC is ~0.65 (Neal 2011)
INIT_STEP = 0.1  # p(z) is ~N(0, I): a first step well inside it, grown by the adaptation
STEP_RANGE = (1e-4, 1.5)  # leapfrog on N(0, I) (beta = 0) is unstable from 2 up; the low end stops a stall at 0
TUNE_CHAINS = 4  # per example: they set the step size, their weights are not counted
#: Seed offset of the AIS pass, apart from metrics' ELBO (0) and NLL (1) passes.
_SEED_OFFSET = 2


def check_ais(model: Any, steps: int, chains: int = DEFAULT_CHAINS, leapfrog: int = DEFAULT_LEAPFROG,
              schedule: str = "sigmoid") -> None:
    """Refuse bad settings or a model AIS cannot score, with one line naming the fix (UsageError)."""
    for flag, v in (("--ais-steps", steps), ("--ais-chains", chains), ("leapfrog", leapfrog)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
            raise UsageError(f"{flag} must be a positive whole number (e.g. {DEFAULT_STEPS if flag == '--ais-steps' else 16}), "
                             f"got {v!r}")
    if schedule not in AIS_SCHEDULES:
        raise UsageError(f"unknown AIS schedule {schedule!r}; valid: {', '.join(AIS_SCHEDULES)}")
    if not getattr(model, "has_log_joint", False):
        name = getattr(getattr(model, "config", None), "model", type(model).__name__)
        raise UsageError(f"--ais anneals from p(z) to p(z) p(x|z), and model {name!r} does not score log p(z) and "
                         "log p(x|z) (model.log_joint); evaluate this run without --ais")


def _target(model: Any, x: torch.Tensor, fields: dict[str, Any], beta: float):
    """The HMC target log p(z) + beta log p(x|z) for rows of x. Its aux, (B, 2 + 2D), holds
    [log p(x|z), log p(z), grad log p(x|z), grad log p(z)], so ``_at`` re-tempers it for free."""
    def target(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.enable_grad():  # two leaves: one backward pass gives both gradients apart
            sp, sl = s.detach().requires_grad_(True), s.detach().requires_grad_(True)
            lpr = model.log_prior(sp, **fields)
            ll = model.log_likelihood(x, sl, **fields)
            g_pr, g_ll = torch.autograd.grad(lpr.sum() + ll.sum(), (sp, sl))
        aux = torch.cat([ll.detach()[:, None], lpr.detach()[:, None],
                         torch.nan_to_num(g_ll, nan=0.0, posinf=0.0, neginf=0.0),
                         torch.nan_to_num(g_pr, nan=0.0, posinf=0.0, neginf=0.0)], -1)
        return _at(beta, aux) + (aux,)
    return target


def _at(beta: float, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log f_beta (B,), its gradient (B, D)) from a target's aux."""
    d = (aux.shape[1] - 2) // 2
    return aux[:, 1] + beta * aux[:, 0], aux[:, 2 + d:] + beta * aux[:, 2:2 + d]


def _anneal(model: Any, x: torch.Tensor, fields: dict[str, Any], betas: list[float], leapfrog: int, n: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """AIS for the rows of x (R, *shape): R = chains * n, row c * n + j is chain c of example j; the
    first ``TUNE_CHAINS`` chains of each example tune its step size. Returns the counted chains'
    log weights (chains - TUNE_CHAINS, n) float64 and mean acceptance rates, same shape."""
    state = model.prior_sample(len(x), **fields)  # (R, D)
    _, _, aux = _target(model, x, fields, betas[0])(state)
    chains = len(x) // n
    log_w = torch.zeros(chains, n, dtype=torch.float64, device=x.device)
    eps = torch.full((n, 1), INIT_STEP, dtype=state.dtype, device=x.device)  # one per example
    accepted = torch.zeros(chains, n, dtype=torch.float64, device=x.device)
    for t in range(1, len(betas)):
        log_w += (betas[t] - betas[t - 1]) * aux[:, 0].double().view(chains, n)
        if t == len(betas) - 1:  # the last transition would not change any weight
            break
        lp, g = _at(betas[t], aux)
        state, _, _, aux, rate = hmc_step(_target(model, x, fields, betas[t]), state, lp, g, aux,
                                          eps.repeat(chains, 1), leapfrog)
        rate = rate.view(chains, n)
        eps = adapt_step_size(eps, rate[:TUNE_CHAINS].mean(0), TARGET_ACCEPT).clamp(*STEP_RANGE)
        accepted += rate.double()
    return log_w[TUNE_CHAINS:], accepted[TUNE_CHAINS:] / max(1, len(betas) - 2)


def _ais_fn(model: Any, steps: int, chains: int, leapfrog: int, schedule: str):
    """Per batch of examples: "log_px", "mc_std_err", "accept" (B,), chains of a few examples at a time."""
    betas = ais_temperatures(steps, schedule).tolist()
    per_pass = max(1, iw_chunk_rows(model) // (TUNE_CHAINS + chains))  # examples whose chains share a decoder pass

    def fn(b: Batch) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {"log_px": [], "mc_std_err": [], "accept": []}
        for i in range(0, len(b), per_pass):
            part = b[i:i + per_pass]
            n = len(part)
            rep = part.select(torch.arange(n).repeat(TUNE_CHAINS + chains))  # row c * n + j: chain c of example j
            log_w, acc = _anneal(model, rep.x, model_inputs(model, rep), betas, leapfrog, n)
            out["log_px"].append(log_mean_exp(log_w, 0))
            out["mc_std_err"].append(log_mean_exp_std_err(log_w, 0))
            out["accept"].append(acc.mean(0))
        return {k: torch.cat(v) for k, v in out.items()}
    return fn


def ais_log_px(model: Any, x: torch.Tensor | Batch, *, steps: int = DEFAULT_STEPS, chains: int = DEFAULT_CHAINS,
               leapfrog: int = DEFAULT_LEAPFROG, schedule: str = "sigmoid", batch_size: int = 1000, seed: int = 0,
               progress: bool = False) -> dict[str, torch.Tensor]:
    """AIS estimates of log p(x) per example (log p(x|c) for conditional models), float64 on the CPU:
    "log_px" (N,) nats (log-mean-exp over the ``chains`` counted chains; ``TUNE_CHAINS`` more run to tune
    the step size), "mc_std_err" (N,) its Monte Carlo standard
    error over the chains (delta method), "accept" (N,) the mean HMC acceptance rate.

    x: (N, *model.spec.shape), or a Batch carrying what a conditional model reads. Deterministic
    given ``seed`` (and batch_size); the caller's RNG state, modes and precision are restored.
    """
    check_ais(model, steps, chains, leapfrog, schedule)
    x = as_batch(x)
    if len(x) == 0:
        raise ValueError("AIS needs at least one example")
    bar = _progress(len(x), progress, "AIS")
    try:
        with _eval_context(model, seed, None):
            return _scan(model, x, batch_size, _ais_fn(model, int(steps), int(chains), int(leapfrog), schedule),
                         seed + _SEED_OFFSET, bar)
    finally:
        if bar is not None:
            bar.close()


def evaluate_ais(model: Any, x: torch.Tensor | Batch, *, steps: int = DEFAULT_STEPS, chains: int = DEFAULT_CHAINS,
                 leapfrog: int = DEFAULT_LEAPFROG, schedule: str = "sigmoid", batch_size: int = 1000, seed: int = 0,
                 progress: bool = False) -> dict[str, Any]:
    """The AIS NLL of ``model`` on ``x`` as a JSON-able dict (nats per example, means over the N examples):

    ``ais_nll`` = -log p(x) (an upper bound in expectation, like ``metrics.evaluate``'s ``nll``);
    ``ais_nll_std_err``: its standard error over examples (as ``nll_std_err``); ``ais_nll_mc_std_err``:
    the Monte Carlo error of the mean from the chains alone (what a rerun with another seed would
    move); ``ais_bits_per_dim``; ``ais_accept_rate`` (mean HMC acceptance); the settings
    ``ais_steps``, ``ais_chains``, ``ais_leapfrog``, ``ais_schedule``; ``n``.
    """
    t = ais_log_px(model, x, steps=steps, chains=chains, leapfrog=leapfrog, schedule=schedule,
                   batch_size=batch_size, seed=seed, progress=progress)
    nll, se = _mean_and_se(-t["log_px"])
    n = len(t["log_px"])
    return {"ais_nll": nll, "ais_nll_std_err": se,
            "ais_nll_mc_std_err": float(t["mc_std_err"].pow(2).sum().sqrt() / n),
            "ais_bits_per_dim": nll / (model.spec.dim * math.log(2.0)),
            "ais_accept_rate": float(t["accept"].mean()),
            "ais_steps": int(steps), "ais_chains": int(chains), "ais_leapfrog": int(leapfrog),
            "ais_schedule": schedule, "n": n}
