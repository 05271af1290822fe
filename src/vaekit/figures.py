"""Figures of a run: image grids (Pillow) and charts (matplotlib, rendered with Agg).

Data arrive in data units: values in [0, 1] for the "binary" and "8bit" kinds, standardised real
values for "continuous". ``kind=None`` guesses from the values. Images are (N, C, H, W) with C = 1
(grey) or 3 (RGB); tables and flat vectors are (N, D). Every file is written atomically (temp
file beside it, then rename), through ``_atomic`` only.

Charts use ``matplotlib.figure.Figure`` directly instead of pyplot: a bare Figure renders PNGs
with the Agg canvas without touching pyplot's global state, so importing this module never
switches the backend of a user's interactive session and no figure is left open in a registry.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from .io import atomic_path

__all__ = ["display_images", "grid_array", "image_grid", "reconstruction_grid", "save_image_grid", "save_kl_per_dim",
           "save_png", "save_reconstructions", "save_samples", "save_training_curves"]

PathLike = str | os.PathLike
UNIT_KINDS = ("binary", "8bit", "unit")  # kinds whose values already lie in [0, 1]
MIN_CELL_PX = 28  # auto-upscale small images so each grid cell is at least this many pixels


# -- shared helpers ------------------------------------------------------------------------------
def _atomic(path: PathLike, write: Any) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path``; no half-written file is ever
    visible, and on failure nothing (not even the temp file) is left behind."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def _save_figure(path: PathLike, fig: Figure, dpi: int = 100) -> Path:
    # format given explicitly: the temp file's suffix is ".tmp", not ".png"
    return _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float32).numpy()
    return np.asarray(a, dtype=np.float64)


def _display_range(ref: np.ndarray, kind: str | None) -> tuple[float, float]:
    """Value range shown from black to white: [0, 1] for unit kinds; otherwise a robust range
    (0.5th-99.5th percentile of the reference data) so a few outliers don't wash it out."""
    finite = ref[np.isfinite(ref)]
    in_unit = finite.size == 0 or (finite.min() >= -1e-6 and finite.max() <= 1 + 1e-6)
    if kind in UNIT_KINDS or (kind is None and in_unit):
        return 0.0, 1.0
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def _to_unit(a: np.ndarray, rng: tuple[float, float]) -> np.ndarray:
    lo, hi = rng
    return np.clip(np.nan_to_num((a - lo) / (hi - lo), nan=0.0), 0.0, 1.0)


def _as_images(a: Any) -> np.ndarray | None:
    """(N, C, H, W) float array, or None for tabular (N, D) data. (N, H, W) counts as grey."""
    a = _np(a)
    if a.ndim == 3:
        return a[:, None]
    return a if a.ndim == 4 else None


# -- image grids -------------------------------------------------------------------------------------
def image_grid(images: Any, nrow: int | None = None, pad: int = 2, pad_value: float = 0.5) -> np.ndarray:
    """Tile images (N, C, H, W) with values in [0, 1] into one uint8 array (H', W', C').

    ``nrow`` images per row (default ceil(sqrt(N))); rows = ceil(N / nrow);
    H' = rows * H + (rows + 1) * pad, W' = nrow * W + (nrow + 1) * pad. C' = 1 for grey, 3 for
    RGB; a 4th channel (alpha) is dropped and other channel counts are averaged to grey.
    Values outside [0, 1] are clipped, NaN shows as 0; gaps and empty cells get ``pad_value``.
    """
    a = _as_images(images)
    if a is None or len(a) == 0:
        raise ValueError(f"image_grid needs a non-empty (N, C, H, W) array, got shape {np.shape(_np(images))}")
    n, c, h, w = a.shape
    if c == 4:
        a = a[:, :3]
    elif c not in (1, 3):
        a = a.mean(1, keepdims=True)
    c = a.shape[1]
    nrow = max(1, min(n, nrow or math.ceil(math.sqrt(n))))
    rows = math.ceil(n / nrow)
    out = np.full((rows * h + (rows + 1) * pad, nrow * w + (nrow + 1) * pad, c), pad_value, dtype=np.float64)
    for i, img in enumerate(a):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y : y + h, x : x + w] = img.transpose(1, 2, 0)
    return (np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(path: PathLike, array: Any) -> Path:
    """Write an image array atomically as PNG: uint8 (or floats in [0, 1]) of shape (H, W),
    (H, W, 1), (H, W, 3) or (H, W, 4)."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]  # Pillow has no (H, W, 1) mode
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"save_png needs (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}")
    img = Image.fromarray(np.ascontiguousarray(a))
    return _atomic(path, lambda tmp: img.save(tmp, format="PNG"))


def _auto_upscale(h: int, w: int, upscale: int | None) -> int:
    if upscale is not None:
        return max(1, int(upscale))
    return max(1, min(32, math.ceil(MIN_CELL_PX / max(1, min(h, w)))))


def _upscaled(a: np.ndarray, s: int) -> np.ndarray:
    """Nearest-neighbour upscale of (N, C, H, W) by an integer factor (keeps pixels crisp)."""
    return a if s == 1 else a.repeat(s, axis=2).repeat(s, axis=3)


def display_images(images: Any, kind: str | None = None) -> np.ndarray:
    """Images (N, C, H, W) (or (N, H, W)) in data units -> (N, C, H, W) float64 in [0, 1], with the
    display range the figures use (see ``_display_range``)."""
    a = _as_images(images)
    if a is None:
        raise ValueError(f"expected images (N, C, H, W), got shape {np.shape(_np(images))}")
    return _to_unit(a, _display_range(a, kind))


def grid_array(images: Any, nrow: int | None = None, upscale: int | None = None, *, kind: str | None = None,
               pad: int = 2) -> np.ndarray:
    """``save_image_grid``'s picture as a uint8 array (H', W', C') instead of a file."""
    a = display_images(images, kind)
    return image_grid(_upscaled(a, _auto_upscale(a.shape[2], a.shape[3], upscale)), nrow, pad)


def save_image_grid(path: PathLike, images: Any, nrow: int | None = None, upscale: int | None = None,
                    *, kind: str | None = None, pad: int = 2) -> Path:
    """Images (N, C, H, W) in data units as one PNG grid; small images are upscaled (nearest
    neighbour, default: to >= 28 px per cell, e.g. 8x8 -> 32x32). See ``image_grid`` for sizes."""
    if _as_images(images) is None:
        raise ValueError(f"save_image_grid needs images (N, C, H, W), got shape {np.shape(_np(images))}")
    return save_png(path, grid_array(images, nrow, upscale, kind=kind, pad=pad))


# -- reconstructions and samples ------------------------------------------------------------------
def save_reconstructions(path: PathLike, x: Any, x_hat: Any, n: int = 16, *, kind: str | None = None,
                         ncol: int = 8, sequence: bool = False) -> Path:
    """Originals ``x`` and their reconstructions ``x_hat`` (same shape, data units), first ``n``.

    Images (N, C, H, W): blocks of two rows, originals (upper row) directly above their
    reconstructions, ``ncol`` per row, a wider gap between blocks. Tables (N, D): a chart with
    heatmaps of originals and reconstructions (example x feature, one colour scale) and a
    scatter of reconstructed against true values.
    """
    xa, xb = _np(x), _np(x_hat)
    if xa.shape != xb.shape:
        raise ValueError(f"x and x_hat differ in shape: {xa.shape} vs {xb.shape}")
    if sequence:  # sequences: originals solid, reconstructions dashed
        return save_series(path, xa, xb, n=min(n, 8), title="originals (solid) and reconstructions (dashed)",
                           labels=("original", "reconstruction"))
    n = max(1, min(n, len(xa)))
    xa, xb = xa[:n], xb[:n]
    if _as_images(xa) is not None:
        return save_png(path, reconstruction_grid(xa, xb, n, kind=kind, ncol=ncol))
    rng = _display_range(xa, kind)  # from the originals, so both rows share one scale
    return _save_table_recon(path, xa.reshape(n, -1), xb.reshape(n, -1), rng, kind)


def reconstruction_grid(x: Any, x_hat: Any, n: int = 16, *, kind: str | None = None, ncol: int = 8) -> np.ndarray:
    """``save_reconstructions``' picture of images as a uint8 array (H', W', C'): blocks of two
    rows, the first ``n`` originals ``x`` (N, C, H, W) above their reconstructions ``x_hat``, on
    the originals' display range."""
    xa, xb = _np(x), _np(x_hat)
    n = max(1, min(n, len(xa)))
    imgs = _as_images(xa[:n])
    if imgs is None or xa.shape != xb.shape:
        raise ValueError(f"expected two image arrays (N, C, H, W) of one shape, got {xa.shape} and {xb.shape}")
    rng = _display_range(imgs, kind)  # from the originals, so both rows share one scale
    ori, rec = _to_unit(imgs, rng), _to_unit(_as_images(xb[:n]), rng)
    s = _auto_upscale(ori.shape[2], ori.shape[3], None)
    ori, rec = _upscaled(ori, s), _upscaled(rec, s)
    ncol = max(1, min(ncol, n))
    blank = np.full((ncol * math.ceil(n / ncol) - n, *ori.shape[1:]), 0.5)
    ori, rec = np.concatenate([ori, blank]), np.concatenate([rec, blank])
    blocks = [image_grid(np.concatenate([ori[i : i + ncol], rec[i : i + ncol]]), nrow=ncol)
              for i in range(0, len(ori), ncol)]
    gap = np.full((4, blocks[0].shape[1], blocks[0].shape[2]), 255, dtype=np.uint8)
    return np.concatenate([p for b in blocks for p in (b, gap)][:-1])


def _save_table_recon(path: PathLike, xa: np.ndarray, xb: np.ndarray, rng: tuple[float, float],
                      kind: str | None) -> Path:
    n, d = xa.shape
    if rng != (0.0, 1.0):  # standardised data: a diverging map centred on 0
        m = max(abs(rng[0]), abs(rng[1]))
        rng, cmap = (-m, m), "RdBu_r"
    else:
        cmap = "viridis"
    fig = Figure(figsize=(13, max(3.0, 0.25 * n + 1.5)))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for ax, data, title in ((axes[0], xa, "originals"), (axes[1], xb, "reconstructions")):
        im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=rng[0], vmax=rng[1], interpolation="nearest")
        ax.set(title=title, xlabel=f"feature (of {d})")
    axes[0].set_ylabel("example")
    fig.colorbar(im, ax=axes[:2].tolist(), label="value (data units)", shrink=0.9)
    ax = axes[2]
    ax.scatter(xa.ravel(), xb.ravel(), s=6, alpha=min(1.0, max(0.05, 300.0 / xa.size)), edgecolors="none")
    lo, hi = np.nanmin([xa.min(), xb.min()]), np.nanmax([xa.max(), xb.max()])
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="perfect (y = x)")
    rmse = float(np.sqrt(np.nanmean((xa - xb) ** 2)))
    ax.set(title=f"reconstructed vs true (RMSE {rmse:.3g})", xlabel="true value", ylabel="reconstructed value")
    ax.legend(loc="upper left")
    return _save_figure(path, fig)


def save_series(path: PathLike, x: Any, x_hat: Any = None, *, n: int = 8, max_channels: int = 4,
                title: str = "", labels: tuple[str, str] = ("data", "model")) -> Path:
    """Sequences (N, T, D) as line plots, one panel per sequence (first ``n``), its first
    ``max_channels`` channels in their own colours; with ``x_hat`` (same shape) each panel overlays
    it dashed (a reconstruction against its original)."""
    a = _np(x)
    b = None if x_hat is None else _np(x_hat)
    if a.ndim != 3 or (b is not None and b.shape != a.shape):
        raise ValueError(f"series plots take (N, T, D) arrays, got {a.shape}" + ("" if b is None else f" and {b.shape}"))
    n = max(1, min(n, len(a)))
    d = max(1, min(max_channels, a.shape[2]))
    cols = 2 if n > 1 else 1
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.0 * cols, 1.6 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    t = np.arange(a.shape[1])
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        for j in range(d):
            ax.plot(t, a[i, :, j], color=f"C{j}", lw=1.0, label=f"{labels[0]} ch {j}" if i == 0 else None)
            if b is not None:
                ax.plot(t, b[i, :, j], color=f"C{j}", lw=1.0, ls="--", label=f"{labels[1]} ch {j}" if i == 0 else None)
        ax.tick_params(labelsize=7)
    if b is not None or d > 1:
        axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(title or f"{n} of {len(a)} sequences, first {d} of {a.shape[2]} channels", fontsize=9)
    return _save_figure(path, fig)


def save_samples(path: PathLike, samples: Any, *, kind: str | None = None, reference: Any = None,
                 max_dims: int = 4, nrow: int | None = None, sequence: bool = False) -> Path:
    """Generated examples: an image grid for images (N, C, H, W); for tables (N, D) a pair plot
    of the first ``max_dims`` features (histograms on the diagonal, scatter elsewhere), with
    optional ``reference`` data (real examples, same D) drawn underneath for comparison;
    ``sequence``: (N, T, D) sequences as line plots (``save_series``)."""
    a = _np(samples)
    if sequence:
        return save_series(path, a, title=f"{min(8, len(a))} of {len(a)} generated sequences (data units)")
    if _as_images(a) is not None:
        return save_image_grid(path, a, nrow=nrow, kind=kind)
    a = a.reshape(len(a), -1)
    ref = None if reference is None else _np(reference).reshape(len(reference), -1)
    d = max(1, min(max_dims, a.shape[1]))
    fig = Figure(figsize=(2.6 * d + 0.5, 2.6 * d + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(d, d, squeeze=False))
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if i == j:
                bins = np.histogram_bin_edges(np.concatenate([a[:, i], ref[:, i]]) if ref is not None else a[:, i], 30)
                if ref is not None:
                    ax.hist(ref[:, i], bins=bins, color="0.6", alpha=0.6, density=True, label="data")
                ax.hist(a[:, i], bins=bins, color="C0", alpha=0.7, density=True, label="samples")
            else:
                if ref is not None:
                    ax.scatter(ref[:, j], ref[:, i], s=4, c="0.6", alpha=0.4, edgecolors="none")
                ax.scatter(a[:, j], a[:, i], s=4, c="C0", alpha=0.6, edgecolors="none")
            if i == d - 1:
                ax.set_xlabel(f"feature {j}")
            if j == 0:
                ax.set_ylabel(f"feature {i}" if i else "density (feature 0)")
    if ref is not None:
        axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{len(a)} samples: first {d} of {a.shape[1]} features (data units)")
    return _save_figure(path, fig)


# -- training curves and the latent space -----------------------------------------------------
_CURVE_PANELS = (  # (title, y label, [(record key, legend label, sign)])
    ("-ELBO", "-ELBO (nats per example)", [("train_elbo", "train", -1.0), ("val_elbo", "validation", -1.0),
                                            ("val_iwae", "validation, -(k-sample bound)", -1.0)]),
    ("Reconstruction", "-log p(x|z) (nats per example)", [("train_recon", "train", 1.0), ("val_recon", "validation", 1.0)]),
    ("KL(q(z|x) || p(z))", "KL (nats per example)", [("train_kl", "train", 1.0), ("val_kl", "validation", 1.0)]),
    ("KL weight (warm-up)", "weight on the KL term", [("kl_weight", "kl_weight", 1.0)]),
    ("Throughput", "training examples / s", [("samples_per_s", "train", 1.0)]),
)


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            e = r.get("epoch")
            xs.append((e if isinstance(e, (int, float)) else i) + 1)  # epochs count from 0: plot epochs completed
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def save_training_curves(path: PathLike, records: Sequence[dict]) -> Path:
    """Per-epoch curves from metrics.jsonl records: -ELBO, reconstruction and KL (train and
    validation, nats per example), the KL weight and throughput, each panel only when its keys
    exist. The epoch kept as best is marked (the records' ``best_epoch``; without it, the best
    validation ELBO)."""
    panels = [(t, yl, [(lab, *_series(records, k), s) for k, lab, s in keys if len(_series(records, k)[0])])
              for t, yl, keys in _CURVE_PANELS]
    panels = [p for p in panels if p[2]]
    ncols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if not panels:
        axes[0].text(0.5, 0.5, "no training records", ha="center", va="center")
        axes[0].set_axis_off()
    last = records[-1].get("best_epoch") if records else None
    if isinstance(last, int) and last >= 0:
        best: float | None = float(last + 1)  # epochs count from 0: the epoch completed
    else:
        bx, by = _series(records, "val_elbo")
        best = float(bx[int(np.argmax(by))]) if len(by) else None
    for ax, (title, ylabel, lines) in zip(axes, panels):
        for label, xs, ys, sign in lines:
            ax.plot(xs, sign * ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
        if best is not None:
            ax.axvline(best, color="0.5", ls=":", lw=1, label=f"best val epoch ({best:g})")
        ax.set(title=title, xlabel="epochs completed", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(panels) :] if panels else []:
        ax.set_axis_off()
    return _save_figure(path, fig)


def save_kl_per_dim(path: PathLike, kl_per_dim: Sequence[float], *, posterior_mean_var: Sequence[float] | None = None,
                    threshold: float = 0.01) -> Path:
    """Bar chart of the mean KL per latent dimension (nats per example).

    With ``posterior_mean_var`` (``evaluate``'s Var_x E_q[z_d]) bars are coloured active /
    inactive by Burda et al.'s rule Var > ``threshold``. Without it, a line at threshold / 2
    nats: for the N(0, I) prior KL_d >= mu_d^2 / 2 per example, so mean KL_d >= Var_x(mu_d) / 2
    and dims below the line cannot be active.
    """
    kl = np.asarray(kl_per_dim, dtype=np.float64).ravel()
    d = np.arange(len(kl))
    fig = Figure(figsize=(max(5.0, 0.3 * len(kl) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    pos = kl[kl > 0]
    log = pos.size > 0 and pos.max() / max(pos.min(), 1e-12) > 100  # several decades: log axis
    shown = np.maximum(kl, 1e-4) if log else kl
    if posterior_mean_var is not None:
        active = np.asarray(posterior_mean_var, dtype=np.float64).ravel() > threshold
        ax.bar(d[active], shown[active], color="C0", label=f"active (Var_x E[z_d] > {threshold:g})")
        ax.bar(d[~active], shown[~active], color="0.7", label="inactive")
        title = f"KL per latent dim: {int(active.sum())} of {len(kl)} active, total {kl.sum():.2f} nats"
    else:
        ax.bar(d, shown, color="C0")
        title = f"KL per latent dim (total {kl.sum():.2f} nats)"
    ax.axhline(threshold / 2, color="C3", ls="--", lw=1,
               label=f"{threshold / 2:g} nats: below, inactive (Var_x E[z_d] <= {threshold:g}; N(0, I) prior)")
    if log:
        ax.set_yscale("log")
    ax.set(title=title, xlabel="latent dimension d", ylabel="KL_d (nats per example)")
    ax.set_xticks(d if len(d) <= 64 else d[:: math.ceil(len(d) / 32)])
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22))  # below: never hides bars
    return _save_figure(path, fig)
