"""Sample quality in a reference classifier's features (``vaekit evaluate RUN --sample-quality``).

Samples and test examples are embedded in the penultimate layer of a classifier trained on the
run's own dataset (``modules.feature_nets``; by default vaekit's reference CNN, trained once per
dataset and cached, ``apps.feature_net.reference_feature_net``). Between the two sets:

- the Frechet distance of Gaussians fitted to them (Heusel et al. 2017's formula). It is NOT the
  Inception FID: the features are those of a small classifier of this dataset, so the numbers
  compare models on the same data and feature net only, and every output says so.
- precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls
  around its points reaching their k-th nearest neighbour; precision is the share of samples
  inside the test data's manifold, recall the share of test examples inside the samples'.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy import linalg

from ..data.batch import Batch
from ..errors import UsageError

DEFAULT_K = 3
DEFAULT_N = 10000


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||m_a - m_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the rows of
    ``a`` (N, F) and ``b`` (M, F), in float64.

    tr (S_a S_b)^(1/2) is computed as tr (S_a^(1/2) S_b S_a^(1/2))^(1/2), the square root of a
    symmetric positive semi-definite matrix, by two symmetric eigen-decompositions (eigenvalues
    clipped at 0): no complex parts or non-convergence as with sqrtm of the non-symmetric product.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two sets of >= 2 feature vectors of one size, got {a.shape} and {b.shape}")
    m = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root_a @ sb @ root_a
    inner = 0.5 * (inner + inner.T)
    tr_root = np.sqrt(np.clip(linalg.eigvalsh(inner), 0, None)).sum()
    return float(max(m @ m + np.trace(sa) + np.trace(sb) - 2.0 * tr_root, 0.0))


def _kth_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of x (N, F) to its k-th nearest other row: (N,)."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)  # (c, N), the point itself at distance 0 comes first
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each row of points (M, F): is it within radii[i] of some centres[i]? (M,) bool."""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centres)  # (c, N)
        out.append((d <= radii[None, :]).any(1))
    return torch.cat(out)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K, chunk: int = 1024) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019's improved precision and recall of ``fake`` (M, F) against
    ``real`` (N, F), k-nearest-neighbour balls; each in [0, 1]."""
    if k < 1:
        raise UsageError(f"--pr-k (k of the k-NN balls) must be at least 1, got {k}")
    r, f = torch.as_tensor(np.asarray(real, np.float64)), torch.as_tensor(np.asarray(fake, np.float64))
    if len(r) <= k or len(f) <= k:
        raise UsageError(f"precision/recall with k={k} needs more than {k} examples in each set, "
                         f"got {len(r)} and {len(f)}")
    precision = _inside(f, r, _kth_radius(r, k, chunk), chunk).double().mean()
    recall = _inside(r, f, _kth_radius(f, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


@torch.no_grad()
def embed_all(net: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """The net's penultimate features of x (N, *shape): (N, F) float64."""
    net.eval()
    return torch.cat([net.embed(x[i:i + batch_size].float()).double() for i in range(0, len(x), batch_size)]).numpy()


def describe(meta: dict[str, Any]) -> str:
    """What the distance is, for every output: e.g. "classifier Frechet distance (vaekit reference
    small-cnn on fashion-mnist, penultimate features; not Inception FID)"."""
    if meta.get("format") == "onnx":
        who = f"ONNX feature net {meta.get('file', '?')}"
    else:
        who = ("vaekit reference" if meta.get("format") == "vaekit-feature-net" else "feature net") \
            + f" {meta.get('architecture', '?')} on {meta.get('dataset', '?')}"
    return f"classifier Fréchet distance ({who}, penultimate features; not Inception FID)"


def model_samples(model: Any, test: Batch, n: int, seed: int) -> torch.Tensor:
    """n decoder-mean samples (n, *shape) on the CPU; a conditional model gets the labels or
    conditions of the test examples in turn."""
    from .generate import known_labels, sample

    fields = getattr(model, "batch_fields", ())
    reps = -(-n // len(test))
    y = None
    if "y" in fields and test.y is not None:  # (unlabelled test examples: the model's own q(y|x) names them)
        y = known_labels(model, test.x, {"y": test.y})["y"].cpu().repeat(reps)[:n]
    c = test.c.repeat(reps, *[1] * (test.c.dim() - 1))[:n] if "c" in fields and test.c is not None else None
    return sample(model, n, y=y, c=c, seed=seed)


def sample_quality(run: Any, test: Batch, *, net: torch.nn.Module, meta: dict[str, Any], net_path: str | Path,
                   n_samples: int | None = None, k: int = DEFAULT_K, seed: int = 0) -> dict[str, Any]:
    """FD, precision and recall of ``n_samples`` samples of ``run.model`` against the examples of
    ``test`` (the first n_samples of them; default min(len(test), 10000)) in ``net``'s features."""
    shape = tuple(int(s) for s in meta["input_shape"])
    if shape != tuple(run.spec.shape):
        raise UsageError(f"--feature-net {net_path} takes inputs of shape {shape}, but this run's examples have "
                         f"shape {tuple(run.spec.shape)}; give a feature net of this data (vaekit features)")
    n = n_samples or min(len(test), DEFAULT_N)
    if n < 2:
        raise UsageError(f"--n-samples must be at least 2, got {n}")
    real = embed_all(net, test.x[:n])
    fake = embed_all(net, model_samples(run.model, test, n, seed))
    precision, recall = precision_recall(real, fake, k)
    return {"fd": frechet_distance(real, fake), "fd_features": describe(meta), "precision": precision,
            "recall": recall, "k": k, "n_samples": n, "n_real": len(real), "feature_net": str(net_path),
            "feature_net_test_accuracy": meta.get("test_accuracy")}


def evaluate_sample_quality(run_dir: str | Path, *, feature_net: str | None = None, n_samples: int | None = None,
                            k: int = DEFAULT_K, split: str = "test", data_dir: str | None = None, seed: int = 0,
                            device: str = "auto", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``vaekit evaluate RUN --sample-quality``: the run's samples against its ``split``, in the
    features of ``feature_net`` or of the dataset's cached reference classifier."""
    from ..run import load_run_data
    from .common import open_run
    from .feature_net import load_feature_net, reference_feature_net

    if n_samples is not None and n_samples < 2:
        raise UsageError(f"--n-samples must be at least 2, got {n_samples}")
    if feature_net is not None:
        net, meta = load_feature_net(feature_net)
        path: str | Path = feature_net
    run = open_run(run_dir, device=device)
    # every label visible (a semi-supervised run hides some): the reference net is the dataset's, not the run's
    cfg = dataclasses.replace(run.config, data=dataclasses.replace(run.config.data, labels_per_class=None))
    data = load_run_data(cfg, data_dir)
    if feature_net is None:
        net, meta, path = reference_feature_net(data, log=log)
    test = {"test": data.test, "val": data.val, "train": data.train}[split]
    return sample_quality(run, test, net=net, meta=meta, net_path=path, n_samples=n_samples, k=k, seed=seed)
