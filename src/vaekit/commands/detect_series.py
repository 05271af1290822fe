"""``vaekit detect`` on a run trained on series windows: every window and time step of a series
scored, a label-free threshold, flags, a CSV and a plot (``apps.stream``)."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..apps.stream import THRESHOLDS, score_series, stream_metrics, threshold_of
from ..data.sequences import apply_scaler, check_series_length, read_labels, read_series
from ..errors import DataError, UsageError
from ..io import atomic_path

#: the share of normal validation steps flagged by --threshold quantile when --contamination is not given
SERIES_CONTAMINATION = 0.01


def _training_series(run, data_dir: str | None):
    """The run's training series: a list of (series, training rows, validation rows), one per file (a run
    trained on a folder of series has several; their validation rows set the threshold)."""
    src = Path(run.source["source"])
    if not src.exists() and data_dir:
        src = Path(data_dir) / src.name
    if not src.exists():
        raise DataError(f"the run's training series {run.source['source']} is not found; it sets the threshold "
                        "(its validation rows): give its folder with --data-dir")
    label = run.source.get("label_column")
    if src.is_dir():
        out = []
        for f in run.source.get("files") or []:
            if not (src / f["name"]).is_file():
                raise DataError(f"{src / f['name']}, one of the run's training series, is not found")
            rows = f["split_rows"]
            out.append((read_series(src / f["name"], label), int(rows["train"]), int(rows["val"])))
        return out
    s = read_series(src, label)
    a, v = _parts(run, len(s))
    return [(s, a, v)]


def _parts(run, n: int) -> tuple[int, int]:
    rows = run.source.get("split_rows") or {}
    a, v = int(rows.get("train", n)), int(rows.get("val", 0))
    return a, v


def _write_csv(path: Path, index: list[str] | None, scores: np.ndarray, flags: np.ndarray, threshold: float,
               labels: np.ndarray | None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["timestamp" if index is not None else "index", "score", "flag", "threshold"]
               + (["label"] if labels is not None else []))
    for i in range(len(scores)):
        s = scores[i]
        w.writerow([index[i] if index is not None else i, "" if not np.isfinite(s) else repr(float(s)), int(flags[i]),
                    repr(threshold)] + ([int(labels[i])] if labels is not None else []))
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _ranges(flags: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return list(zip(edges[0::2], edges[1::2]))


def _plot(path: Path, values: np.ndarray, scores: np.ndarray, flags: np.ndarray, threshold: float,
          labels: np.ndarray | None, channels: list[str], max_channels: int = 4) -> None:
    from matplotlib.figure import Figure

    from ..figures import _save_figure

    d = min(max_channels, values.shape[1])
    fig = Figure(figsize=(11, 2.0 * d + 2.2), layout="constrained")
    axes = fig.subplots(d + 1, 1, sharex=True, squeeze=False)[:, 0]
    t = np.arange(len(values))
    for j in range(d):
        ax = axes[j]
        ax.plot(t, values[:, j], lw=0.6, color=f"C{j}")
        ax.set_ylabel(str(channels[j])[:18], fontsize=8)
        for a, b in _ranges(flags):
            ax.axvspan(a, b, color="red", alpha=0.25, lw=0)
        if labels is not None:
            for a, b in _ranges(labels):
                ax.axvspan(a, b, ymin=0.0, ymax=0.06, color="k", alpha=0.8, lw=0)
    ax = axes[-1]
    ax.plot(t, scores, lw=0.6, color="0.2")
    ax.axhline(threshold, color="red", ls="--", lw=0.8, label=f"threshold {threshold:.4g}")
    ax.set_ylabel("score (nats)", fontsize=8)
    ax.set_xlabel("time step")
    ax.legend(fontsize=7, loc="upper right")
    title = "flagged ranges in red"
    if labels is not None:
        title += "; labelled anomalies as black bars"
    if values.shape[1] > d:
        title += f"; first {d} of {values.shape[1]} channels"
    fig.suptitle(title, fontsize=9)
    _save_figure(path, fig)


def detect_series(run, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Score a series with a series run; returns the JSON result (and writes the CSV and plot)."""
    if args.score is not None and args.score not in ("nll", "recon"):
        raise UsageError(f"--score {args.score} is not offered for series runs: they score each step by "
                         "-log p(x_t | x_<t, z) (leave --score out)")
    if args.threshold not in THRESHOLDS:
        raise UsageError(f"unknown --threshold {args.threshold!r}; valid: {', '.join(THRESHOLDS)}")
    if args.mcmc < 0:
        raise UsageError(f"--mcmc must be >= 0 (iterations of imputing missing values), got {args.mcmc}")
    stride = args.stride or 1
    if stride < 1:
        raise UsageError(f"--stride must be a positive integer, got {stride}")
    window, scaler = int(run.source["window"]), run.source["scaler"]
    contamination = SERIES_CONTAMINATION if args.contamination is None else args.contamination
    parts = None
    if args.input is None:  # the test rows of the training series
        parts = _training_series(run, args.data_dir)
        if len(parts) > 1:
            raise UsageError("this run was trained on a folder of series; give the series to score with --input")
        train, a, v = parts[0]
        lo = a + v
        if len(train) - lo < window:
            raise DataError("the run's series has no test part of one window or more; give --input SERIES")
        values, index = train.values[lo:], None if train.index is None else train.index[lo:]
        labels = None if train.labels is None else train.labels[lo:]
        where = f"the test rows of {run.source['source']}"
    else:
        s = read_series(args.input, run.source.get("label_column"))
        values, index, labels, where = s.values, s.index, s.labels, str(args.input)
        if values.shape[1] != len(scaler["mean"]):
            raise DataError(f"{args.input} has {values.shape[1]} value columns but the run was trained on "
                            f"{len(scaler['mean'])} ({', '.join(map(str, run.source.get('channels', [])))}); give a "
                            "series with the same columns")
    if args.labels is not None:
        labels = read_labels(args.labels, len(values))
    check_series_length(values, window, where)
    if args.limit is not None:
        if args.limit < window:
            raise UsageError(f"--limit {args.limit} is shorter than one window of {window}")
        values, labels = values[:args.limit], None if labels is None else labels[:args.limit]
        index = None if index is None else index[:args.limit]
    scaled = apply_scaler(values, scaler)
    sc = score_series(run.model, scaled, window, stride=stride, mcmc=args.mcmc, seed=args.seed)
    # the threshold from the validation rows of the training series (normal operation), never test labels
    refs = []
    for train, a, v in parts or _training_series(run, args.data_dir):
        if v < window:
            continue
        ref = score_series(run.model, apply_scaler(train.values[a:a + v], scaler), window, stride=stride,
                           mcmc=args.mcmc, seed=args.seed).point
        refs.append(ref if train.labels is None else ref[train.labels[a:a + v] == 0])
    if not refs:
        raise DataError(f"the run's validation part is shorter than one window of {window}, so no label-free "
                        "threshold can be set; retrain with a larger --val-fraction")
    ref = np.concatenate(refs)
    threshold = threshold_of(ref, args.threshold, contamination=contamination, risk=args.risk)
    flags = np.isfinite(sc.point) & (sc.point > threshold)
    fig = out.with_suffix(".png")
    _write_csv(out, index, sc.point, flags, threshold, labels)
    _plot(fig, values, sc.point, flags, threshold, labels, run.source.get("channels") or [])
    res: dict[str, Any] = {"out": str(out), "plot": str(fig), "rows": int(len(values)), "windows": int(len(sc.window)),
                           "window": window, "stride": stride, "mcmc": args.mcmc, "threshold": threshold,
                           "threshold_method": args.threshold, "threshold_from": "validation rows of the training series",
                           "flagged": int(flags.sum())}
    if args.threshold == "quantile":
        res["contamination"] = contamination
    else:
        res["risk"] = args.risk
    if labels is not None:
        res.update(stream_metrics(sc.point, flags, labels))
    return res
