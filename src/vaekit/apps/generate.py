"""Generate new examples and reconstruct given ones."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..errors import UsageError


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Fork torch's CPU (and current CUDA) RNG and seed it: a seed gives the same result every
    time without disturbing the caller's random stream. ``None`` forks without seeding."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@torch.no_grad()
def sample(model: Any, n: int, *, temperature: float = 1.0, seed: int | None = 0, mean: bool = True,
           batch_size: int = 4096) -> torch.Tensor:
    """``n`` new examples from the model, (n, *spec.shape) float32 on the CPU, model units.

    z ~ N(0, temperature^2 I) through the decoder; ``mean`` returns the decoder means E[x|z]
    (smooth images), otherwise draws from p(x|z) (the model's full noise, better for data
    augmentation of tables). ``temperature`` < 1 trades variety for typicality.
    """
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    if not temperature > 0:
        raise UsageError(f"--temperature must be positive, got {temperature}")
    with seeded(seed):
        out = [model.sample(min(batch_size, n - i), temperature=temperature, mean=mean).cpu()
               for i in range(0, n, batch_size)]
    return torch.cat(out)


@torch.no_grad()
def reconstruct(model: Any, x: torch.Tensor, *, batch_size: int = 1000) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstructions through the posterior mean and per-example errors.

    x: (N, *spec.shape) model units. Returns (x_hat (N, *shape) decoder means at z = E[z|x], and
    {"sq_error": (N,) mean squared error per value, model units; "recon_nll": (N,) -log p(x|z=E[z|x])
    in nats}). All on the CPU, float32.
    """
    x_hat, sq, nll = [], [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(model.device)
        mu, _ = model.encode(xb)
        params = model.decoder(mu)
        xh = model.likelihood.mean(params)
        x_hat.append(xh.cpu())
        sq.append((xh - xb).pow(2).flatten(1).mean(1).cpu())
        nll.append((-model.likelihood.log_prob(params, xb)).cpu())
    return torch.cat(x_hat), {"sq_error": torch.cat(sq), "recon_nll": torch.cat(nll)}
