"""Generate new examples and reconstruct given ones."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..data.batch import Batch, as_batch, model_inputs
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
def sample(model: Any, n: int, *, y: torch.Tensor | None = None, c: torch.Tensor | None = None,
           temperature: float = 1.0, seed: int | None = 0, mean: bool = True, batch_size: int = 4096) -> torch.Tensor:
    """``n`` new examples from the model, (n, *spec.shape) float32 on the CPU, model units.

    z ~ N(0, temperature^2 I) (or the model's conditional prior) through the decoder; ``mean``
    returns the decoder means E[x|z] (smooth images), otherwise draws from p(x|z) (the model's
    full noise, better for data augmentation of tables). ``temperature`` < 1 trades variety for
    typicality. Conditional models need the condition of each example: ``y`` (n,) int64 class
    indices for a model that reads labels (``"y" in model.batch_fields``: CVAE, M2), or ``c``
    (n, *spec.cond_shape) for one that reads conditions.
    """
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")
    if not temperature > 0:
        raise UsageError(f"--temperature must be positive, got {temperature}")
    cond = {f: torch.as_tensor(v) for f, v in (("y", y), ("c", c)) if v is not None}
    for f, v in cond.items():
        if f not in getattr(model, "batch_fields", ()):
            raise UsageError(f"this model does not read {f!r} (it is not conditional on {'labels' if f == 'y' else 'c'})")
        if len(v) != n:
            raise UsageError(f"{n} examples need {n} values of {f}, got {len(v)}")
    with seeded(seed):
        out = [model.sample(min(batch_size, n - i), temperature=temperature, mean=mean,
                            **{f: v[i:i + batch_size].to(model.device) for f, v in cond.items()}).cpu()
               for i in range(0, n, batch_size)]
    return torch.cat(out)


@torch.no_grad()
def figure_samples(model: Any, test: Batch | None = None, *, n: int = 64, per_class: int = 8,
                   seed: int | None = None, mean: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    """Samples for a run's figures: (x (N, *shape) CPU, their labels or None, images per grid row or None).

    Unconditional models: ``n`` samples. Label-conditional models: ``per_class`` of every class,
    in class order (a grid with one row per class). Models conditioned on c: one sample for each
    of the first ``n`` conditions of ``test``.
    """
    fields = getattr(model, "batch_fields", ())
    if "y" in fields:
        y = torch.arange(int(model.spec.num_classes)).repeat_interleave(per_class)
        return sample(model, len(y), y=y, seed=seed, mean=mean), y, per_class
    if "c" in fields:
        if test is None or test.c is None:
            raise UsageError("samples of a model conditioned on c need conditions (a Batch with c)")
        c = test.c[:n]
        return sample(model, len(c), c=c, seed=seed, mean=mean), None, None
    return sample(model, n, seed=seed, mean=mean), None, None


@torch.no_grad()
def augment(run_or_model: Any, per_class: int, *, temperature: float = 1.0, seed: int | None = 0,
            mean: bool | None = None, classes: Sequence[int] | None = None, agree: bool = False,
            device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """A labelled synthetic data set from a label-conditional model: (x, y) ready for a classifier.

    run_or_model: a run directory (path), a ``LoadedRun`` or a model whose ``batch_fields`` holds
    "y" (``--model cvae`` on labelled data, or M2). Draws ``per_class`` examples of each class
    (or of ``classes``, indices), in class order. Returns x float32 (N, *spec.shape) -- in the
    user's units when a run is given (tables get their training mean and std back), model units
    for a bare model -- and y int64 (N,) class indices (names: ``apps.common.class_names``).
    ``mean`` (default: True for images, False for tables) as in :func:`sample`; flatten x with
    ``x.reshape(len(x), -1)`` for scikit-learn.
    ``agree`` keeps only the examples that the model's own classifier q(y|x) labels as the class
    they were drawn for (models with a classifier: M2), drawing more until every class has
    ``per_class``: a label-noise filter for generated training data.
    """
    from .common import LoadedRun, open_run, to_original_units

    run = open_run(run_or_model, device=device) if isinstance(run_or_model, (str, Path)) else run_or_model
    model = run.model if isinstance(run, LoadedRun) else run
    if "y" not in getattr(model, "batch_fields", ()):
        raise UsageError("augment needs a model conditional on class labels (--model cvae or m2 on labelled data)")
    k = int(model.spec.num_classes or 0)
    chosen = list(range(k)) if classes is None else [int(i) for i in classes]
    if not chosen or any(not 0 <= i < k for i in chosen):
        raise UsageError(f"classes must be indices in 0..{k - 1}, got {classes}")
    if per_class < 1:
        raise UsageError(f"per_class must be at least 1, got {per_class}")
    mean = model.spec.is_image if mean is None else mean
    if agree:
        x, y = agreeing_samples(model, chosen, int(per_class), temperature=temperature, seed=seed, mean=mean)
    else:
        y = torch.tensor(chosen).repeat_interleave(int(per_class))
        x = sample(model, len(y), y=y, temperature=temperature, seed=seed, mean=mean)
    xs = to_original_units(x, run.source) if isinstance(run, LoadedRun) else x.double().numpy()
    return xs.astype(np.float32), y.numpy()


def agreeing_samples(model: Any, classes: list[int], per_class: int, *, temperature: float, seed: int | None,
                      mean: bool, max_rounds: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` samples of each class that ``model.classify`` labels as that class, in class
    order. Each round draws what is still missing divided by the agreement rate seen so far."""
    if not hasattr(model, "classify"):
        raise UsageError("keeping only the samples a model's own classifier agrees with needs a model with "
                         "its own classifier (--model m2); this one has none: leave --agree / agree=True off")
    from .classify import predict_proba

    kept: dict[int, list[torch.Tensor]] = {c: [] for c in classes}
    drawn, agreed = dict.fromkeys(classes, 0), dict.fromkeys(classes, 0)
    for r in range(max_rounds):
        need = {c: per_class - sum(map(len, kept[c])) for c in classes}
        need = {c: m for c, m in need.items() if m > 0}
        if not need:
            break
        counts = {c: math.ceil(1.2 * m / max(agreed[c] / drawn[c] if drawn[c] else 0.5, 0.02)) + 8
                  for c, m in need.items()}
        y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in counts.items()])
        x = sample(model, len(y), y=y, temperature=temperature, seed=None if seed is None else seed + 7919 * r,
                   mean=mean)
        ok = predict_proba(model, x).argmax(1) == y
        for c, m in need.items():
            good = x[(y == c) & ok]
            drawn[c] += counts[c]
            agreed[c] += len(good)
            kept[c].append(good[:m])
    short = [c for c in classes if sum(map(len, kept[c])) < per_class]
    if short:
        c = short[0]
        raise UsageError(f"the model's classifier agreed with only {agreed[c]} of {drawn[c]} samples drawn for "
                         f"class {c}; train the model longer or leave --agree / agree=True off")
    return (torch.cat([torch.cat(kept[c]) for c in classes]),
            torch.tensor(classes).repeat_interleave(per_class))


@torch.no_grad()
def known_labels(model: Any, x: torch.Tensor, cond: dict[str, Any]) -> dict[str, Any]:
    """``cond`` with unlabelled examples' labels (-1) replaced by the class the model's own q(y|x)
    finds most likely, for a model that has one (M2: ``fill_labels``); as given otherwise. A
    semi-supervised run's data keeps its unlabelled examples in every split, and decoding needs a
    class for each."""
    fill, y = getattr(model, "fill_labels", None), cond.get("y")
    if fill is None or y is None or not bool((torch.as_tensor(y) < 0).any()):
        return cond
    dev = getattr(model, "device", x.device)
    return {**cond, "y": fill(x.to(dev), torch.as_tensor(cond["y"]).to(dev))}


@torch.no_grad()
def reconstruct(model: Any, x: torch.Tensor | Batch, *, batch_size: int = 1000
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstructions through the posterior mean and per-example errors.

    x: (N, *spec.shape) model units, or a Batch that also carries what a conditional model reads
    (its labels or conditions; each example is encoded and decoded under its own). Returns
    (x_hat (N, *shape) decoder means at z = E[z|x], and {"sq_error": (N,) mean squared error per
    value, model units; "recon_nll": (N,) -log p(x|z=E[z|x]) in nats}). All on the CPU, float32.
    """
    b = as_batch(x)
    x_hat, sq, nll = [], [], []
    for i in range(0, len(b), batch_size):
        part = b[i:i + batch_size].to(model.device)
        xb = part.x
        cond = known_labels(model, xb, model_inputs(model, part))
        if getattr(model, "autoregressive", False):  # sequences: one-step-ahead means, teacher-forced by x
            mu, _ = model.encode(xb, **cond)
            xh, nl = model.reconstruct(xb, **cond), -model.log_likelihood(xb, mu, **cond)
        elif cond and not hasattr(model, "decode_params"):  # a conditional model without raw parameters
            mu, _ = model.encode(xb, **cond)
            xh, nl = model.reconstruct(xb, **cond), -model.decode(mu, **cond).log_prob(xb)
        else:
            mu, _ = model.encode(xb, **cond)
            params = model.decode_params(mu, **cond) if cond else model.decoder(mu)
            xh, nl = model.likelihood.mean(params), -model.likelihood.log_prob(params, xb)
        x_hat.append(xh.cpu())
        if part.mask is None:
            sq.append((xh - xb).pow(2).flatten(1).mean(1).cpu())
        else:  # observed values only
            m = part.mask.to(xh.dtype)
            sq.append(((xh - xb).pow(2) * m).flatten(1).sum(1).div(m.flatten(1).sum(1).clamp(min=1)).cpu())
        nll.append(nl.cpu())
    return torch.cat(x_hat), {"sq_error": torch.cat(sq), "recon_nll": torch.cat(nll)}
