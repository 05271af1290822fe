"""Working in latent space: embed, interpolate, traverse one dimension, edit toward an attribute,
and a 2-D map of the latent space."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..data.batch import Batch, as_batch, model_inputs
from ..errors import DataError, UsageError

METHODS = ("linear", "slerp")


@torch.no_grad()
def embed(model: Any, x: torch.Tensor | Batch, *, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and variances of q(z|x): two (N, D) float32 CPU tensors.

    x: (N, *spec.shape), or a Batch that also carries what a conditional model reads (q(z|x,c)
    under each example's own label or condition)."""
    b = as_batch(x)
    mus, vars_ = [], []
    for i in range(0, len(b), batch_size):
        part = b[i:i + batch_size].to(model.device)
        mu, logvar = model.encode(part.x, **model_inputs(model, part))
        mus.append(mu.float().cpu())
        vars_.append(logvar.float().exp().cpu())
    if not mus:
        d = model.latent_dim
        return torch.zeros(0, d), torch.zeros(0, d)
    return torch.cat(mus), torch.cat(vars_)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between vectors a, b (D,) at fractions t (S,) -> (S, D).

    Follows the great circle between the directions while interpolating the norms linearly, so
    intermediate points keep a typical norm under a Gaussian prior (White 2016). Falls back to
    linear interpolation when a and b are (anti)parallel or zero.
    """
    na, nb = a.norm(), b.norm()
    t = t[:, None]
    if na == 0 or nb == 0:
        return (1 - t) * a + t * b
    ua, ub = a / na, b / nb
    omega = torch.arccos((ua * ub).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-4 or (torch.pi - omega).abs() < 1e-4:
        return (1 - t) * a + t * b
    so = torch.sin(omega)
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / so
    return direction * ((1 - t) * na + t * nb)


def _rows(cond: dict[str, torch.Tensor] | None, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A condition of one example ({f: (1, ...)}) repeated for n decoded frames."""
    return {f: v[:1].expand(n, *v.shape[1:]).to(device) for f, v in (cond or {}).items()}


@torch.no_grad()
def interpolate(model: Any, x_from: torch.Tensor, x_to: torch.Tensor, *, steps: int = 10,
                method: str = "linear", cond_from: dict[str, torch.Tensor] | None = None,
                cond_to: dict[str, torch.Tensor] | None = None,
                cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Decoded path between two examples' posterior means: (steps, *spec.shape), CPU.

    x_from, x_to: (1, *shape) or (*shape). The first and last frames decode the endpoints' own
    posterior means (their reconstructions). Conditional models: each endpoint is encoded under
    its own condition (``cond_from``, ``cond_to``: {"y": (1,)} or {"c": (1, ...)}), and every
    frame is decoded under ``cond`` (default ``cond_from``): the label held fixed, the style moving.
    """
    if steps < 2:
        raise UsageError(f"--steps must be at least 2, got {steps}")
    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    shape = tuple(model.spec.shape)
    dev = model.device
    if cond_from:
        ends = [model.encode(x.reshape(1, *shape).to(dev), **_rows(cf, 1, dev))[0]
                for x, cf in ((x_from, cond_from), (x_to, cond_to or cond_from))]
        mu = torch.cat(ends)
    else:
        mu, _ = model.encode(torch.stack([x_from.reshape(shape), x_to.reshape(shape)]).to(dev))
    t = torch.linspace(0.0, 1.0, steps, device=mu.device, dtype=mu.dtype)
    z = (1 - t[:, None]) * mu[0] + t[:, None] * mu[1] if method == "linear" else slerp(mu[0], mu[1], t)
    return model.decode_mean(z, **_rows(cond or cond_from, steps, dev)).cpu()


def _latent_dims(model: Any) -> int:
    return int(getattr(model, "latent_dim", model.config.latent_dim))


@torch.no_grad()
def traverse(model: Any, dims: Sequence[int], *, base: torch.Tensor | None = None, span: float = 3.0,
             steps: int = 9, cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Sweep each latent dimension in ``dims`` over [-span, span] with the others held at ``base``
    (a (D,) latent, default the prior mean 0): returns (len(dims), steps, *spec.shape), CPU.
    Conditional models decode every frame under ``cond`` ({"y": (1,)} or {"c": (1, ...)})."""
    d = _latent_dims(model)
    bad = [i for i in dims if not 0 <= i < d]
    if bad:
        raise UsageError(f"--dim {bad[0]} is out of range: the latent space has {d} dimensions (0 to {d - 1})")
    if steps < 2 or not span > 0:
        raise UsageError(f"--steps must be >= 2 and --span > 0, got {steps} and {span}")
    z0 = torch.zeros(d) if base is None else base.reshape(d).float().cpu()
    vals = torch.linspace(-span, span, steps)
    z = z0.repeat(len(dims), steps, 1)  # (R, S, D)
    for r, i in enumerate(dims):
        z[r, :, i] = vals
    z = z.reshape(-1, d).to(model.device)
    out = model.decode_mean(z, **_rows(cond, len(z), model.device)).cpu()
    return out.reshape(len(dims), steps, *out.shape[1:])


@torch.no_grad()
def transfer(model: Any, x: torch.Tensor, own: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """"The same style, another class": encode x (1, *shape) under its own condition ``own``
    ({"y": (1,)}), decode the posterior mean under each target condition ({"y": (T,)}):
    returns (T, *spec.shape), CPU."""
    dev = model.device
    mu, _ = model.encode(x.reshape(1, *model.spec.shape).to(dev), **_rows(own, 1, dev))
    t = {f: v.to(dev) for f, v in targets.items()}
    n = len(next(iter(t.values())))
    return model.decode_mean(mu.expand(n, -1), **t).cpu()


def most_active_dims(kl_per_dim: Sequence[float], n: int = 8) -> list[int]:
    """The ``n`` latent dimensions carrying the most KL (the ones worth traversing)."""
    order = np.argsort(-np.asarray(kl_per_dim, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:n]]


def attribute_vector(z: torch.Tensor, y: torch.Tensor, target: int, *, source: int | None = None) -> torch.Tensor:
    """The direction from one attribute to another in latent space, (D,).

    z: (N, D) posterior means of labelled examples, y: (N,) labels. The vector is the mean latent
    of class ``target`` minus the mean latent of class ``source`` (or, without a source, of all
    examples not in ``target``) -- the difference of class means (Larsen et al. 2016; White 2016).
    """
    if y is None:
        raise DataError("editing toward a label needs labelled data, and this run's data have no labels")
    y = torch.as_tensor(y).to(z.device)  # a mask on another device cannot index z (labels on the CPU, z on a GPU)
    into = y == target
    away = (y == source) if source is not None else ~into
    if not into.any():
        raise DataError(f"no examples with label {target} to define the attribute")
    if not away.any():
        raise DataError("no examples outside the target label to define the attribute")
    return z[into].mean(0) - z[away].mean(0)


@torch.no_grad()
def edit(model: Any, x: torch.Tensor, vector: torch.Tensor, strengths: Sequence[float]) -> torch.Tensor:
    """Move one example (1, *shape) along ``vector`` (D,) by each strength: (len(strengths), *shape).

    z = E[z|x] + s * vector, decoded to its mean; strength 0 is the plain reconstruction.
    """
    mu, _ = model.encode(x.reshape(1, *model.spec.shape).to(model.device))
    s = torch.as_tensor(list(strengths), dtype=mu.dtype, device=mu.device)
    return model.decode_mean(mu + s[:, None] * vector.to(mu)).cpu()


def pca_2d(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """PCA of rows a (N, D) onto 2 axes: (coords (N, 2), centre (D,), axes (<=2, D), share of the
    variance they hold). A thin SVD of the centred rows, each axis signed so its largest loading is
    positive; fewer than 2 axes when N = 1 (the missing one is drawn at zero). ``centre + p @ axes``
    maps a 2-D position back."""
    centre = a.mean(0)
    c = a - centre
    _, sv, vt = np.linalg.svd(c, full_matrices=False)
    axes = vt[:2]
    axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])[:, None]
    share = float((sv[:2] ** 2).sum() / max((sv ** 2).sum(), 1e-300))
    coords = np.zeros((len(a), 2))
    coords[:, :len(axes)] = c @ axes.T
    return coords, centre, axes, share


def map_2d(z: np.ndarray | torch.Tensor, *, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """Latents (N, D) -> 2-D coordinates (N, 2) for plotting, and axis description.

    D <= 2 is shown as is (D = 1 against zero); otherwise PCA (a thin SVD of the centred latents,
    each axis signed so its largest loading is positive, with the explained variance in the
    description; importing scikit-learn for it would cost more than a second of every training
    run's report) or t-SNE (scikit-learn, ``method="tsne"``, perplexity adapted to small N).
    """
    a = np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
    n, d = a.shape
    if d == 1:
        return np.column_stack([a[:, 0], np.zeros(n)]), "z (1 latent dimension)"
    if d == 2:
        return a, "z1 / z2"
    if method == "pca" or n < 5:
        coords, _, _, share = pca_2d(a)
        return coords, f"PCA of {d}-D posterior means ({100 * share:.0f}% of variance)"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perp = float(min(30.0, max(2.0, (n - 1) / 3)))
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(a), \
            f"t-SNE of {d}-D posterior means"
    raise UsageError(f"--map must be pca or tsne, got {method!r}")
