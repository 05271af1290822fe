"""``vaekit detect``: per-example anomaly scores of a trained run, a threshold, flags, a histogram."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..apps.anomaly import DEFAULT_SCORE, SCORES, check_contamination, detect
from ..apps.common import check_out, class_names, label_index, run_inputs
from ..data.batch import Batch
from ..errors import UsageError, VaekitError
from ..io import atomic_path
from ._shared import add_run_args, emit, open_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import _finite

    p = sub.add_parser("detect", help="anomaly scores (higher = more anomalous), a threshold and flags")
    add_run_args(p, split=False)
    p.add_argument("--input", default=None, help="image folder/file, .npy/.npz or .csv (default: the run's test split)")
    p.add_argument("--score", default=None, help=f"{' | '.join(SCORES)} (default {DEFAULT_SCORE}; conditional runs: "
                                                "elbo, i.e. -log p(x|c) bounded under each example's own label)")
    p.add_argument("--contamination", type=_finite, default=None,
                   help="share of NORMAL (validation) data to flag: the threshold is its (1 - c) quantile; in (0, 0.5] "
                        "(default 0.05; series runs: 0.01 of validation time steps)")
    p.add_argument("--labels", default=None, help="series runs: per-row anomaly labels (.npy or one-column CSV) for "
                                                  "AUC-PR, AUROC and F1")
    p.add_argument("--threshold", default="quantile",
                   help="series runs: quantile (of validation step scores, see --contamination) | pot (peaks over "
                        "threshold on the validation scores, see --risk)")
    p.add_argument("--risk", type=_finite, default=1e-3, help="series runs, --threshold pot: the probability of "
                                                              "exceeding the threshold on normal data")
    p.add_argument("--mcmc", type=int, default=0, help="series runs: iterations of Donut's MCMC imputation of "
                                                       "missing values before scoring (0: off)")
    p.add_argument("--stride", type=int, default=None, help="series runs: rows between scored windows (default 1: "
                                                            "every step scored by the window ending on it)")
    p.add_argument("--normal-label", default=None,
                   help="with labelled inputs: the class that is normal (others are anomalies) for AUROC / AP; "
                        "default: when the inputs hold two classes, the later one (e.g. 1 = outlier) is the anomaly")
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples for --score nll")
    p.add_argument("--limit", type=int, default=None, help="only the first N inputs")
    p.add_argument("--out", default=None, help="per-example CSV (default RUN/scores.csv); the histogram goes beside it (.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_detect)


def _anomaly_labels(y: torch.Tensor | None, source: dict[str, Any], num_classes: int | None,
                    normal: str | None) -> np.ndarray | None:
    """Class indices -> anomaly flags (N,) bool, or None when it is not clear which class is normal."""
    if y is None:
        if normal is not None:
            raise UsageError("--normal-label was given but the inputs have no labels")
        return None
    if normal is not None:
        return y.numpy() != label_index(normal, source, num_classes)
    present = np.unique(y.numpy())
    if len(present) == 2:  # e.g. 0 = normal, 1 = outlier (ODDS): the later class is the anomaly
        return y.numpy() == present.max()
    return None


def _reference(run, args: argparse.Namespace) -> torch.Tensor | Batch | None:
    """The run's validation split (normal data the model did not train on), or None if unavailable;
    with its labels or conditions for a conditional model."""
    try:
        s = run_inputs(run, None, split="val", data_dir=args.data_dir)
    except VaekitError:
        return None
    return s if getattr(run.model, "batch_fields", ()) else s.x


def _write_csv(path: Path, det, labels: list[str] | None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "score", "flag", "threshold"] + (["label"] if labels is not None else []))
    for i, (s, f) in enumerate(zip(det.scores, det.flags)):
        w.writerow([i, repr(float(s)), int(f), repr(det.threshold)] + ([labels[i]] if labels is not None else []))
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _histogram(path: Path, det, anomalous: np.ndarray | None) -> None:
    from matplotlib.figure import Figure

    from ..figures import _save_figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    s = det.scores
    bins = np.histogram_bin_edges(s[np.isfinite(s)], bins=50)
    if anomalous is not None:
        ax.hist(s[~anomalous], bins=bins, alpha=0.6, label="normal (label)")
        ax.hist(s[anomalous], bins=bins, alpha=0.6, label="anomalous (label)")
    else:
        ax.hist(s, bins=bins, alpha=0.8, label="inputs")
    ax.axvline(det.threshold, color="k", ls="--", label=f"threshold {det.threshold:.4g}")
    ax.set_xlabel(f"anomaly score ({det.score}, nats; higher = more anomalous)")
    ax.set_ylabel("examples")
    ax.legend(fontsize=8)
    _save_figure(path, fig)


def cmd_detect(args: argparse.Namespace) -> int:
    if args.score is not None and args.score not in SCORES:
        raise UsageError(f"unknown --score {args.score!r}; valid: {', '.join(SCORES)}")
    if args.contamination is not None:
        check_contamination(args.contamination)
    if args.iw_samples < 1:
        raise UsageError(f"--iw-samples must be >= 1, got {args.iw_samples}")
    if not 0 < args.risk < 1:
        raise UsageError(f"--risk must be in (0, 1), got {args.risk}")
    run = open_from_args(args)
    if run.source.get("kind_of_source") == "series":
        return _detect_series(run, args)
    series_only = [flag for flag, v, default in (("--labels", args.labels, None), ("--threshold", args.threshold, "quantile"),
                                                 ("--mcmc", args.mcmc, 0), ("--stride", args.stride, None))
                   if v != default]
    if series_only:
        raise UsageError(f"{', '.join(series_only)}: for runs trained on a series (--window); this run was trained "
                         f"on {run.source.get('kind_of_source', 'other')} data; drop {series_only[0]}")
    if args.contamination is None:
        args.contamination = 0.05
    conditional = bool(getattr(run.model, "batch_fields", ()))
    gaussian_q = getattr(run.model, "has_elbo", True)  # False: no q(z|x) to score by (a deterministic AAE)
    if args.score is None:
        args.score = "elbo" if conditional else (DEFAULT_SCORE if gaussian_q else "recon")
    elif args.score in ("excess", "elbo", "nll") and not gaussian_q:
        raise UsageError(f"--score {args.score} needs q(z|x), which this {run.model.config.model!r} run has not "
                         "(a deterministic encoder); use --score recon (or evaluate --ais for -log p(x))")
    elif args.score == "excess" and conditional:
        raise UsageError("--score excess is for unconditional runs; this run is conditional: use --score elbo, "
                         "nll or recon (scores of x under its own label or condition)")
    out = check_out(args.out or run.dir / "scores.csv", (".csv",))
    fig_path = out.with_suffix(".png")
    s = run_inputs(run, args.input, split="test", data_dir=args.data_dir, limit=args.limit)
    anomalous = _anomaly_labels(s.y, run.source, run.spec.num_classes, args.normal_label)
    ref = _reference(run, args)
    if ref is None and args.score == "excess" and run.model.config.likelihood == "bernoulli":
        ref = s.x  # no validation data: the inputs themselves stand in as the reference
    inputs = s if conditional else s.x
    det = detect(run.model, inputs, labels=anomalous, reference=ref, score=args.score,
                 contamination=args.contamination, iw_samples=args.iw_samples, seed=args.seed)
    names = class_names(run.source, run.spec.num_classes)
    labels = None if s.y is None else [names[int(c)] if int(c) < len(names) else str(int(c)) for c in s.y]
    _write_csv(out, det, labels)
    _histogram(fig_path, det, anomalous)
    res = {"out": str(out), "histogram": str(fig_path), "n": int(len(det.scores)), "score": det.score,
           "threshold": det.threshold, "threshold_from": det.threshold_from, "contamination": det.contamination,
           "flagged": int(det.flags.sum()), "auroc": det.auroc, "average_precision": det.average_precision}
    lines = [f"scored {res['n']} examples ({det.score}); threshold {det.threshold:.4g} nats "
             f"(the {1 - det.contamination:.3g} quantile of the {det.threshold_from} scores); "
             f"flagged {res['flagged']}"]
    if det.auroc is not None:
        lines.append(f"AUROC {det.auroc:.4f}, average precision {det.average_precision:.4f}")
    lines.append(f"wrote {out} and {fig_path}")
    return emit(args, res, lines)


def _detect_series(run, args: argparse.Namespace) -> int:
    from .detect_series import detect_series

    out = check_out(args.out or run.dir / "scores.csv", (".csv",))
    res = detect_series(run, args, out)
    lines = [f"scored {res['rows']} time steps ({res['windows']} windows of {res['window']}); threshold "
             f"{res['threshold']:.4g} nats ({res['threshold_method']}, from the {res['threshold_from']}); "
             f"flagged {res['flagged']}"]
    if res.get("auc_pr") is not None:
        lines.append(f"AUC-PR {res['auc_pr']:.4f}, AUROC {res['auroc']:.4f}, F1 {res['f1']:.4f} "
                     f"(point-adjusted {res['f1_point_adjusted']:.4f}; best F1 over thresholds {res['best_f1']:.4f})")
    lines.append(f"wrote {res['out']} and {res['plot']}")
    return emit(args, res, lines)
