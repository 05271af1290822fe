"""Pictures of latent-space operations: frame sequences (interpolations, traversals, edits) and
the 2-D latent map. Written atomically through ``vaekit.figures``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..data.spec import DataSpec
from ..figures import _np, _save_figure, save_image_grid


def save_frames(path: str | Path, frames: Any, spec: DataSpec, *, row_labels: Sequence[str] | None = None,
                col_labels: Sequence[str] | None = None, title: str = "") -> Path:
    """Rows of frames, (R, S, *shape) or (S, *shape), model units.

    Images: one grid, S frames per row. Tables: one heatmap per row (frame x feature), so the way
    each feature changes along the path can be read off.
    """
    a = _np(frames)
    if a.ndim == len(spec.shape) + 1:
        a = a[None]
    r, s = a.shape[:2]
    if spec.is_image:
        return save_image_grid(path, a.reshape(r * s, *spec.shape), nrow=s, kind=spec.kind)
    fig = Figure(figsize=(min(16.0, 2 + 0.35 * spec.dim), 1.2 + 0.25 * s * r + 0.4 * r), layout="constrained")
    axes = np.atleast_1d(fig.subplots(r, 1, squeeze=False)[:, 0])
    m = float(np.nanmax(np.abs(a))) or 1.0
    for i, ax in enumerate(axes):
        im = ax.imshow(a[i].reshape(s, -1), aspect="auto", cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_ylabel(row_labels[i] if row_labels else "step")
        if col_labels is not None and len(col_labels) == s:
            ax.set_yticks(range(s), col_labels, fontsize=7)
        ax.set_xlabel(f"feature (of {spec.dim})")
    fig.colorbar(im, ax=list(axes), label="value (model units)")
    if title:
        fig.suptitle(title)
    return _save_figure(path, fig)


def save_latent_map(path: str | Path, coords: np.ndarray, *, labels: np.ndarray | None = None,
                    names: Sequence[str] | None = None, axes_label: str = "", title: str = "") -> Path:
    """Scatter of 2-D latent coordinates (N, 2), one colour per class when labels (N,) exist."""
    c = np.asarray(coords, dtype=np.float64)
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    size, alpha = (6, 0.6) if len(c) > 2000 else (12, 0.8)
    if labels is None:
        ax.scatter(c[:, 0], c[:, 1], s=size, alpha=alpha, edgecolors="none")
    else:
        lab = np.asarray(labels)
        classes = np.unique(lab)
        cmap = "tab10" if len(classes) <= 10 else "tab20"
        cm = matplotlib.colormaps[cmap]
        for j, k in enumerate(classes):
            m = lab == k
            name = names[int(k)] if names is not None and 0 <= int(k) < len(names) else str(k)
            ax.scatter(c[m, 0], c[m, 1], s=size, alpha=alpha, edgecolors="none", color=cm(j % cm.N), label=name)
        ax.legend(markerscale=2, fontsize=8, loc="best", ncols=1 if len(classes) <= 12 else 2, title="label")
    ax.set(xlabel=f"{axes_label} · axis 1" if axes_label else "axis 1", ylabel="axis 2", title=title or "latent map")
    return _save_figure(path, fig)


def save_confusion_matrix(path: str | Path, confusion: Sequence[Sequence[int]], names: Sequence[str], *,
                          title: str = "confusion matrix") -> Path:
    """A classifier's K x K confusion matrix (rows: true class, columns: predicted), each row
    shaded by its share of that class's examples and labelled with the counts."""
    conf = np.asarray(confusion, dtype=np.int64)
    k = conf.shape[0]
    share = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    size = min(9.0, 2.5 + 0.55 * k)
    fig = Figure(figsize=(size, size * 0.9), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7 if k > 10 else 8,
                        color="white" if share[i, j] > 0.5 else "black")
    labels = [str(n) for n in names] if len(names) == k else [str(i) for i in range(k)]
    ax.set_xticks(range(k), labels, rotation=45 if max(map(len, labels)) > 2 else 0, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return _save_figure(path, fig)
