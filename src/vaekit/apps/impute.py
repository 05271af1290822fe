"""Fill in missing values with a trained VAE, keeping the observed values fixed.

Four samplers of p(x_mis | x_obs), all batched over examples and chains:

- ``"hmc"``, Hamiltonian Monte Carlo on the latent variables (the default): the chain targets
  p(z | x_obs), proportional to p(z) p(x_obs | z), using the decoder's gradient with respect to z
  (leapfrog steps, one Metropolis correction per trajectory). Each chain tunes its own step size
  toward an acceptance rate of 0.7 during burn-in, then keeps it fixed. It needs no encoder, so it
  does not suffer when q(z | x) is a poor guess for an unusual pattern of missing values (the
  encoder never saw half an image); with two stochastic layers it runs on (z1, z2) jointly, with
  target p(z2) p(z1 | z2) p(x_obs | z1).

- ``"pseudo-gibbs"`` (Rezende, Mohamed and Wierstra 2014): z ~ q(z | x_obs, x_mis), then
  x_mis ~ p(x_mis | z), repeated. Simple, but its stationary law is only approximately the
  conditional, and it can get stuck when q is poor on unusual inputs.
- ``"mwg"``, Metropolis-within-Gibbs (Mattei and Frellsen 2018, "Leveraging the exact likelihood
  of deep latent variable models"): the z draw from q(z | x_obs, x_mis) is a proposal, accepted
  with probability min(1, rho),
  rho = p(z*) p(x_obs|z*) q(z_old | x) / (p(z_old) p(x_obs|z_old) q(z* | x)), x = current fill;
  the chain over (z, x_mis) then targets the exact conditional p(z, x_mis | x_obs).
- ``"importance"``: self-normalised importance sampling of E[x_mis | x_obs] with proposal
  q(z | current fill) and weights p(x_obs|z) p(z) / q(z|x), in rounds that re-fill x_mis with the
  latest estimate (the single-imputation estimator of Mattei and Frellsen's MIWAE, 2019, with a
  VAE's encoder as the proposal).

In bench/bench_impute.py HMC had the lowest error of the four everywhere; on MNIST with the bottom
half missing the encoder-based samplers could not beat KNN and HMC could (numbers in
bench/results/impute_denoise.md).

The returned fill is an estimate of the conditional mean E[x_mis | x_obs]: the decoder means
E[x|z] averaged over the draws after burn-in of several independent chains per example
(Rao-Blackwellised), or importance-weighted.
For Bernoulli models these are probabilities, for Gaussian ones the mean, in model units.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import DataError, UsageError
from ..functional.hmc import adapt_step_size, hmc_step, log_prob_and_grad
from ..functional.kl import gaussian_log_prob
from .generate import seeded

METHODS = ("hmc", "mwg", "importance", "pseudo-gibbs")
# HMC had the lowest error of the methods in bench/bench_impute.py; numbers in
# bench/results/impute_denoise.md.
DEFAULT_METHOD = "hmc"
DEFAULT_ITERS = {"hmc": 100, "importance": 1000, "mwg": 250, "pseudo-gibbs": 250}
# Independent chains per example, averaged: one chain tends to stay in one mode (one digit the top
# half could belong to), and averaging over several lowers the error of the conditional-mean
# estimate (MNIST bottom half with MWG: RMSE 0.234 with 1 chain x 1000 steps, 0.211 with 8 x 250).
DEFAULT_CHAINS = 8
DEFAULT_LEAPFROG = 5  # leapfrog steps per HMC trajectory
HMC_TARGET_ACCEPT = 0.7
HMC_INIT_STEP = 0.05
# HMC keeps the decoder's activations for the gradient: rows per pass are capped so that rows x
# values per example stays under this (MNIST: all 4000 rows; 64x64 RGB images: ~320 rows).
HMC_PASS_VALUES = 4_000_000
ROUNDS = 2  # importance: the first round's estimate becomes the fill the second round's proposal sees
CHUNK = 50  # importance samples per decoder pass (memory: batch * CHUNK examples)


def missing_mask(x: torch.Tensor, mask: Any = None) -> torch.Tensor:
    """Where values are missing: NaN in ``x`` or True (non-zero) in ``mask``. Returns bool (N, *shape).

    ``mask`` is None, or anything broadcastable to x's shape: (N, *shape), one (*shape) for all
    examples, or a flat (N, D) / (D,) for image data with D values per example. Images (C, H, W)
    also take a mask of pixels without the channel axis: one (H, W) for every example and channel,
    or (N, H, W) when C is 1.
    """
    miss = torch.isnan(x)
    if mask is None:
        return miss
    m = torch.as_tensor(mask)
    if m.dtype.is_floating_point and torch.isnan(m).any():
        raise DataError("the mask holds NaN values; use 0 (observed) and 1 (missing)")
    m = m != 0
    shape = tuple(x.shape[1:])
    if m.dim() >= 1 and m.shape[-1] == math.prod(shape) and tuple(m.shape[-len(shape):]) != shape:
        m = m.reshape(*m.shape[:-1], *shape)  # flat masks for images
    elif len(shape) == 3 and m.dim() in (2, 3) and tuple(m.shape[-2:]) == shape[1:] and tuple(m.shape) != shape:
        # a mask of pixels: (H, W) for every channel; (N, H, W) for single-channel images
        m = m.expand(shape) if m.dim() == 2 else (m.unsqueeze(1) if shape[0] == 1 else m)
    if m.dim() == len(shape):
        m = m.unsqueeze(0)
    if m.dim() != x.dim() or tuple(m.shape[1:]) != shape or m.shape[0] not in (1, x.shape[0]):
        raise DataError(f"the mask has shape {tuple(torch.as_tensor(mask).shape)}, but the inputs are "
                        f"{tuple(x.shape)}: give one mask of shape {shape} or one per example")
    return miss | m.to(miss.device)


def check_method(method: str, iters: int | None) -> int:
    """Validate a method name and step count; returns the number of steps to run."""
    if method not in METHODS:
        raise UsageError(f"unknown imputation method {method!r}; valid: {', '.join(METHODS)}")
    n = DEFAULT_ITERS[method] if iters is None else iters
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise UsageError(f"--iters must be a positive whole number, got {iters}")
    return int(n)


@torch.no_grad()
def model_mean(model: Any, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """The model's marginal mean E_p(z)[E[x|z]], (*shape), from ``n`` prior draws: close to the
    training data's mean for a trained model (0 for standardised tables), with no data needed."""
    with seeded(seed):
        return model.sample(n, mean=True).mean(0).cpu()


@torch.no_grad()
def impute(model: Any, x: torch.Tensor, mask: Any = None, *, method: str = DEFAULT_METHOD, iters: int | None = None,
           chains: int = DEFAULT_CHAINS, burn_in: int | None = None, init: Any = None, seed: int | None = 0,
           batch_size: int = 4000, leapfrog: int = DEFAULT_LEAPFROG) -> torch.Tensor:
    """Fill the missing values of ``x`` with a trained VAE; the observed values come back unchanged.

    x: float (N, *spec.shape) in model units (what ``load_inputs`` returns: [0, 1] images,
        standardised tables) with NaN where values are missing; ``mask`` adds missing positions
        (True/1 = missing; see ``missing_mask``). A row with every value missing is allowed: its
        fill is the model's own marginal (the prior pushed through the decoder).
    method: "hmc" (default), "mwg", "importance" or "pseudo-gibbs" (see the module docstring).
    iters: steps per chain for "hmc"/"mwg"/"pseudo-gibbs", importance samples for "importance"
        (default ``DEFAULT_ITERS``). chains: independent chains per example (all but "importance"),
        averaged. burn_in: steps per chain discarded before averaging (default iters // 2; HMC
        tunes its step size during these). leapfrog: leapfrog steps per HMC trajectory.
    batch_size: rows per encoder/decoder pass (examples x chains); bounds memory.
    init: starting values for the missing entries: a tensor broadcastable to x, or None for the
        model's marginal mean (``model_mean``, about the training mean).
    seed: makes the result repeatable without touching the caller's random state (None: unseeded).
    Returns float32 (N, *spec.shape) on the CPU: observed entries bit for bit as given, missing
    entries an estimate of E[x_mis | x_obs] (decoder means: probabilities for Bernoulli models).
    """
    steps = check_method(method, iters)
    if callable(getattr(model, "complete", None)):  # its networks read the given part and the mask themselves
        raise UsageError("this run is a completion model (--model completion): fill the missing part with "
                         "vaekit complete RUN --input ... --mask ...")
    if method in ("mwg", "importance") and getattr(model.config, "latent_dim2", 0):
        # MWG's acceptance ratio and the importance weights need p(z1) in closed form; with a
        # second stochastic layer it is an integral over z2.
        raise UsageError(f"--method {method} needs a model with one stochastic layer (p(z) in closed form); "
                         "this run has two: use --method hmc or pseudo-gibbs")
    burn = steps // 2 if burn_in is None else int(burn_in)
    if not 0 <= burn < steps:
        raise UsageError(f"burn_in must be in [0, iters), got {burn_in} with iters {steps}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(chains, bool) or int(chains) != chains or chains < 1:
        raise UsageError(f"--chains must be a positive whole number, got {chains}")
    if isinstance(leapfrog, bool) or int(leapfrog) != leapfrog or leapfrog < 1:
        raise UsageError(f"--leapfrog must be a positive whole number, got {leapfrog}")
    reps = 1 if method == "importance" else int(chains)
    x = torch.as_tensor(x, dtype=torch.float32).cpu()
    miss = missing_mask(x, mask).cpu()
    out = x.clone()
    if not miss.any():
        return out
    with seeded(seed):
        start = model_mean(model, seed=None) if init is None else torch.as_tensor(init, dtype=torch.float32)
        start = torch.broadcast_to(start, x.shape)
        rows = miss.flatten(1).any(1).nonzero().flatten()  # only rows with something to fill
        rows_per_pass = batch_size
        if method == "hmc":
            rows_per_pass = min(batch_size, max(1, HMC_PASS_VALUES // max(1, math.prod(x.shape[1:]))))
        per = max(1, rows_per_pass // reps)  # examples per pass
        for i in range(0, len(rows), per):
            r = rows[i:i + per]
            xb, mb = x[r].to(model.device), miss[r].to(model.device)
            xb = torch.where(mb, start[r].to(model.device), xb)
            if method == "importance":
                est = _importance(model, xb, mb, steps)
            else:  # the chains of one example are rows j, j + len(r), j + 2 len(r), ...
                rep = (reps, *[1] * (xb.dim() - 1))
                if method == "hmc":
                    est = _hmc(model, xb.repeat(rep), mb.repeat(rep), steps, burn, int(leapfrog))
                else:
                    est = _chain(model, xb.repeat(rep), mb.repeat(rep), steps, burn, mh=method == "mwg")
                est = est.view(reps, *xb.shape).mean(0)
            out[r] = torch.where(mb, est, xb).cpu()
    return out


def _log_px_obs(model: Any, params: torch.Tensor, x: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """log p(x_obs | z) summed over the observed values only: (B,) in nats. x has no NaN."""
    lp = model.likelihood.dist(params).base_dist.log_prob(x)
    return torch.where(obs, lp, torch.zeros_like(lp)).flatten(1).sum(1)


def _chain(model: Any, x: torch.Tensor, miss: torch.Tensor, steps: int, burn: int, *, mh: bool) -> torch.Tensor:
    """Pseudo-Gibbs (mh=False) or Metropolis-within-Gibbs (mh=True) over a batch. x: (B, *shape)
    filled; returns the mean of E[x|z_t] over the kept steps t >= burn, (B, *shape)."""
    obs = ~miss
    lik = model.likelihood
    z = params = lw_old = None
    total = torch.zeros_like(x)
    for t in range(steps):
        mu, logvar = model.encode(x)
        z_new = model.reparameterize(mu, logvar)
        params_new = model.decoder(z_new)
        if mh:
            lw_new = model.prior.log_prob(z_new) + _log_px_obs(model, params_new, x, obs)
            if z is None:  # the first draw starts the chain
                z, params, lw_old = z_new, params_new, lw_new
            else:
                log_rho = (lw_new - gaussian_log_prob(z_new, mu, logvar).sum(-1)) - (lw_old - gaussian_log_prob(z, mu, logvar).sum(-1))
                accept = torch.log(torch.rand_like(log_rho)) < log_rho  # (B,)
                z = torch.where(accept[:, None], z_new, z)
                params = torch.where(accept.view(-1, *[1] * (params.dim() - 1)), params_new, params)
                lw_old = torch.where(accept, lw_new, lw_old)
        else:
            params = params_new
        x = torch.where(miss, lik.sample(params), x)
        if t >= burn:
            total += lik.mean(params)
    return total / (steps - burn)


def _importance(model: Any, x: torch.Tensor, miss: torch.Tensor, k: int) -> torch.Tensor:
    """Self-normalised importance estimate of E[x_mis | x_obs] in ROUNDS rounds of k samples in
    all, each round proposing from q(z | current fill). x: (B, *shape) filled; returns (B, *shape)."""
    obs = ~miss
    b, shape = x.shape[0], x.shape[1:]
    per_round = [k // ROUNDS + (1 if j < k % ROUNDS else 0) for j in range(ROUNDS)]
    for kr in (n for n in per_round if n > 0):
        mu, logvar = model.encode(x)
        top = torch.full((b,), -math.inf, device=x.device)  # running max of the log weights
        norm = torch.zeros(b, device=x.device)  # sum of exp(log_w - top)
        acc = torch.zeros_like(x)  # sum of exp(log_w - top) * E[x|z]
        for c in range(0, kr, CHUNK):  # streamed: memory stays at CHUNK * B examples
            kc = min(CHUNK, kr - c)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(kc, *mu.shape, device=mu.device, dtype=mu.dtype)
            params = model.decoder(z.reshape(kc * b, -1))
            xk = x.expand(kc, *x.shape).reshape(kc * b, *shape)
            ok = obs.expand(kc, *obs.shape).reshape(kc * b, *shape)
            log_w = (model.prior.log_prob(z) - gaussian_log_prob(z, mu, logvar).sum(-1)
                     + _log_px_obs(model, params, xk, ok).view(kc, b))  # (kc, B)
            new_top = torch.maximum(top, log_w.max(0).values)
            scale, w = torch.exp(top - new_top), torch.exp(log_w - new_top)  # (B,), (kc, B)
            norm = norm * scale + w.sum(0)
            acc = acc * scale.view(b, *[1] * len(shape)) + torch.einsum(
                "kb,kb...->b...", w, model.likelihood.mean(params).view(kc, b, *shape))
            top = new_top
        x = torch.where(miss, acc / norm.view(b, *[1] * len(shape)), x)
    return x


def _hmc_start(model: Any, x: torch.Tensor) -> torch.Tensor:
    """A chain's first state: z ~ q(z | x) ([z1, z2] with z2 ~ q(z2 | z1) for two-layer models), (B, D)."""
    mu, logvar = model.encode(x)
    z = model.reparameterize(mu, logvar)
    if getattr(model, "latent_dim2", 0):
        mu2, lv2 = model.encoder2(z)
        z = torch.cat([z, model.reparameterize(mu2, lv2)], -1)
    return z


def _log_joint(model: Any, state: torch.Tensor, x: torch.Tensor, obs: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(z) + log p(x_obs | z) (B,) and the decoder's parameters; with two layers,
    state = [z1, z2] and log p(z2) + log p(z1 | z2) + log p(x_obs | z1) (``model.log_prior``)."""
    log_prior = model.log_prior(state)
    params = model.decoder(state[:, :model.config.latent_dim])
    return log_prior + _log_px_obs(model, params, x, obs), params


def _hmc(model: Any, x: torch.Tensor, miss: torch.Tensor, steps: int, burn: int, leapfrog: int) -> torch.Tensor:
    """Hamiltonian Monte Carlo on z targeting p(z | x_obs), one chain per row of x. x: (B, *shape)
    filled (the fill only seeds the first state, through the encoder); returns the mean of E[x|z_t]
    over the kept steps t >= burn, (B, *shape)."""
    obs = ~miss

    def target(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return log_prob_and_grad(lambda v: _log_joint(model, v, x, obs), s)

    state = _hmc_start(model, x)
    lp, g, params = target(state)
    eps = torch.full((state.shape[0], 1), HMC_INIT_STEP, device=x.device, dtype=state.dtype)
    total = torch.zeros_like(x)
    for t in range(steps):
        state, lp, g, params, rate = hmc_step(target, state, lp, g, params, eps, leapfrog)
        if t < burn:  # tune each chain's step size toward the target acceptance rate, then freeze it
            eps = adapt_step_size(eps, rate, HMC_TARGET_ACCEPT)
        else:
            total += model.likelihood.mean(params)
    return total / (steps - burn)
