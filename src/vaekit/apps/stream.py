"""Anomaly detection on a stream: score every window and every time step of a series with a
sequence VAE trained on normal operation (``vaekit train --data SERIES --window W``).

Scores (nats, higher = more anomalous). Each window is encoded (z = the posterior mean) and the
autoregressive decoder gives -log p(x_t | x_<t, z) for each of its steps, over the observed channels.
A time step's score is taken from the window that holds it as late as possible (with stride 1: the
window that ends on it, so the score uses only the past, as an online detector would; OmniAnomaly
and Donut score the last point of each window the same way); the first W - 1 steps take the first
window's. A window's score is the mean over its observed steps. Steps with no observed value get no
score (NaN) and are never flagged.

Donut's test-time ingredient, ``mcmc`` iterations of imputation (Xu et al. 2018, section 3.3.3):
missing values are replaced by the decoder's means, the window is encoded again with the filled-in
values, and so on; the likelihood still counts observed values only.

Thresholds without test labels: ``quantile`` (the 1 - contamination quantile of the validation
part's step scores) or ``pot`` (peaks over threshold, Siffer et al. 2017: a generalised Pareto
tail fitted to the validation scores above their ``pot_level`` quantile, and the score exceeded with
probability ``risk``). With labels, the metrics of ``stream_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.sequences import cut_windows
from ..errors import UsageError

THRESHOLDS = ("quantile", "pot")


@dataclass
class StreamScores:
    """point: (T,) step scores (NaN where nothing is observed); window: (N,) window scores;
    starts: (N,) window start rows."""

    point: np.ndarray
    window: np.ndarray
    starts: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def mcmc_fill(model: Any, x: torch.Tensor, mask: torch.Tensor, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Donut's MCMC imputation: ``iters`` rounds of z ~ q(z | x with the current fill-ins), the
    missing values replaced by the decoder's means (one step ahead, teacher-forced by the filled
    window); the observed values are kept. x, mask (B, T, D) on the model's device."""
    xin, enc_mask, full = x, mask, torch.ones_like(mask)
    for _ in range(iters):
        mu, logvar = model.encode(xin, mask=enc_mask)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen).to(mu)
        mean = model.likelihood.mean(model._decode(z, xin, enc_mask))
        xin = torch.where(mask > 0, x, mean)
        enc_mask = full
    return xin


@torch.no_grad()
def impute_series(model: Any, values: np.ndarray, window: int, *, iters: int = 10, batch_size: int = 256,
                  seed: int = 0) -> np.ndarray:
    """A scaled series (T, D) with its missing values (NaN) filled: every window (stride 1) imputed
    by ``mcmc_fill``, each missing value taken from the window that holds it as late as possible
    (the most past around it). Observed values are returned unchanged."""
    if not getattr(model, "autoregressive", False):
        raise UsageError("series imputation needs a run trained on series windows (vaekit train --data SERIES --window W)")
    x, m, starts = cut_windows(values, window, 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    filled = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(model.device, model.dtype)
        mb = m[i:i + batch_size].to(model.device, model.dtype)
        filled.append(mcmc_fill(model, xb, mb, iters, gen).float().cpu() if bool((mb == 0).any()) else xb.float().cpu())
    f = torch.cat(filled).numpy()  # (N, W, D)
    rows = np.arange(len(values))
    j = np.searchsorted(starts, rows - window + 1, side="left").clip(0, len(starts) - 1)
    best = f[j, rows - starts[j]]  # (T, D)
    return np.where(np.isnan(values), best, values)


@torch.no_grad()
def step_scores(model: Any, x: torch.Tensor, mask: torch.Tensor, *, mcmc: int = 0, batch_size: int = 256,
                seed: int = 0) -> torch.Tensor:
    """-log p(x_t | x_<t, z) per window and step, observed channels only: (N, W); NaN at steps
    with no observed value. ``mcmc``: iterations of Donut's imputation of the missing values first."""
    if not getattr(model, "autoregressive", False):
        raise UsageError("stream detection needs a run trained on series windows (vaekit train --data SERIES "
                         "--window W); this run's model does not read sequences")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(model.device, model.dtype)
        mb = mask[i:i + batch_size].to(model.device, model.dtype)
        enc_mask, xin = mb, xb
        if mcmc > 0 and bool((mb == 0).any()):
            xin, enc_mask = mcmc_fill(model, xb, mb, mcmc, gen), torch.ones_like(mb)
        mu, _ = model.encode(xin, mask=enc_mask)
        lp = model.step_log_px(xin, mu, enc_mask, score_mask=mb)
        nll = -lp
        nll[mb.sum(-1) == 0] = float("nan")
        out.append(nll.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, x.shape[1])


def point_scores(steps: np.ndarray, starts: np.ndarray, n_rows: int, window: int) -> np.ndarray:
    """Each row's score from the window holding it as late as possible: (n_rows,)."""
    rows = np.arange(n_rows)
    j = np.searchsorted(starts, rows - window + 1, side="left").clip(0, len(starts) - 1)
    pos = rows - starts[j]
    return steps[j, pos]


def score_series(model: Any, values: np.ndarray, window: int, *, stride: int = 1, mcmc: int = 0,
                 batch_size: int = 256, seed: int = 0) -> StreamScores:
    """Scores of a scaled series (T, D) with NaN where missing (see the module docstring)."""
    x, m, starts = cut_windows(values, window, stride)
    steps = step_scores(model, x, m, mcmc=mcmc, batch_size=batch_size, seed=seed).numpy()
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            win = np.nanmean(steps, axis=1)
    return StreamScores(point_scores(steps, starts, len(values), window), win, starts,
                        {"window": window, "stride": stride, "mcmc": mcmc, "windows": int(len(starts))})


# -- thresholds -----------------------------------------------------------------------------------------
def pot_threshold(scores: np.ndarray, *, risk: float = 1e-3, level: float = 0.98) -> float:
    """Peaks over threshold (SPOT's initial step): fit a generalised Pareto distribution to the
    excesses of ``scores`` over their ``level`` quantile and return the score exceeded with
    probability ``risk``. Falls back to the largest score when the tail is too short to fit."""
    from scipy.stats import genpareto

    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 20:
        raise UsageError(f"peaks over threshold needs at least 20 reference scores, got {len(s)}; use --threshold quantile")
    t = float(np.quantile(s, level))
    peaks = s[s > t] - t
    if len(peaks) < 5 or np.ptp(peaks) <= 0:
        return float(s.max())
    gamma, _, sigma = genpareto.fit(peaks, floc=0.0)
    ratio = risk * len(s) / len(peaks)
    if abs(gamma) < 1e-8:
        return t - sigma * np.log(ratio)
    return float(t + sigma / gamma * (ratio ** (-gamma) - 1))


def threshold_of(reference: np.ndarray, method: str, *, contamination: float = 0.01, risk: float = 1e-3,
                 level: float = 0.98) -> float:
    if method not in THRESHOLDS:
        raise UsageError(f"unknown --threshold {method!r}; valid: {', '.join(THRESHOLDS)}")
    ref = np.asarray(reference, np.float64)
    ref = ref[np.isfinite(ref)]
    if not len(ref):
        raise UsageError("no reference scores to set a threshold from (the run's validation part is empty); "
                         "retrain with --val-fraction > 0")
    if method == "quantile":
        return float(np.quantile(ref, 1 - contamination))
    return pot_threshold(ref, risk=risk, level=level)


# -- metrics --------------------------------------------------------------------------------------------
def point_adjust(flags: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Flags with every labelled anomaly segment flagged whole when any of its points is (the
    "point-adjusted" protocol of Xu et al. 2018 that many papers report; it rewards even random scores)."""
    adj = flags.astype(bool).copy()
    lab = labels.astype(bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], lab.astype(np.int8), [0]])))
    for a, b in zip(edges[0::2], edges[1::2]):
        if adj[a:b].any():
            adj[a:b] = True
    return adj


def _prf(flags: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    tp = float((flags & labels).sum())
    p = tp / max(1.0, float(flags.sum()))
    r = tp / max(1.0, float(labels.sum()))
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def stream_metrics(scores: np.ndarray, flags: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """AUC-PR (average precision), AUROC, precision/recall/F1 of ``flags`` without point adjustment,
    the point-adjusted F1, and the best F1 over all thresholds (with and without adjustment: the
    latter is what Donut reports). Rows with no score are left out."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    ok = np.isfinite(scores)
    s, f, y = scores[ok], flags[ok].astype(bool), labels[ok].astype(bool)
    out: dict[str, Any] = {"scored_rows": int(ok.sum()), "anomalous_rows": int(y.sum())}
    if y.all() or not y.any():
        out.update(auc_pr=None, auroc=None, note="the labels hold one class only: AUC-PR and AUROC are undefined")
    else:
        out.update(auc_pr=float(average_precision_score(y, s)), auroc=float(roc_auc_score(y, s)))
    p, r, f1 = _prf(f, y)
    _, _, f1_pa = _prf(point_adjust(f, y), y)
    out.update(precision=p, recall=r, f1=f1, f1_point_adjusted=f1_pa)
    if y.any():
        pr, rc, _ = precision_recall_curve(y, s)
        best = np.max(np.where(pr + rc > 0, 2 * pr * rc / np.maximum(pr + rc, 1e-12), 0.0))
        out["best_f1"] = float(best)
    return out
