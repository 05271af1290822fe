"""Classify examples with a trained semi-supervised run (M2, M1+M2): its q(y|x).

``predict_proba`` gives class probabilities, ``summarize`` the accuracy and confusion matrix
where labels are known (-1 = unknown), ``write_predictions`` a CSV a spreadsheet can read.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.batch import UNLABELLED
from ..errors import UsageError
from ..io import atomic_path
from .common import LoadedRun


def require_classifier(run: LoadedRun) -> None:
    """One line naming the fix when the run's model has no classifier q(y|x)."""
    if not callable(getattr(run.model, "classify", None)):
        raise UsageError(f"{run.dir} holds a {run.config.model.model!r} model, which has no classifier; only m2 "
                         "(semi-supervised) runs classify: train one with --model m2 --labels-per-class N")


@torch.no_grad()
def predict_proba(model: Any, x: torch.Tensor, *, batch_size: int = 1000) -> torch.Tensor:
    """q(y|x) for every example: x (N, *spec.shape) model units -> (N, K) float64 on the CPU, rows sum to 1."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    out = [model.classify(x[i:i + batch_size].to(model.device, model.dtype)).to("cpu", torch.float64)
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, int(model.num_classes), dtype=torch.float64)


def summarize(probs: torch.Tensor, y: torch.Tensor | None, names: Sequence[str]) -> dict[str, Any]:
    """What the predictions say: "n", "classes", "predicted_counts" (per class), and where labels
    are known (y (N,) int64, -1 = unknown): "n_labelled", "accuracy" (share of the labelled
    examples predicted right; None without labels) and "confusion" (K x K counts, rows = true
    class, columns = predicted)."""
    k = probs.shape[1]
    pred = probs.argmax(1)
    res: dict[str, Any] = {"n": len(pred), "classes": list(names),
                           "predicted_counts": torch.bincount(pred, minlength=k).tolist(),
                           "n_labelled": 0, "accuracy": None}
    if y is not None:
        lab = y != UNLABELLED
        if bool(lab.any()):
            t, p = y[lab], pred[lab]
            conf = torch.bincount(t * k + p, minlength=k * k).view(k, k)
            res.update(n_labelled=int(lab.sum()), accuracy=float((t == p).double().mean()), confusion=conf.tolist())
    return res


def write_predictions(path: str | Path, probs: torch.Tensor, names: Sequence[str],
                      y: torch.Tensor | None = None) -> Path:
    """CSV, written atomically: index, predicted (class name), p_<class> per class (probabilities),
    and "label" (the known class name, empty where unknown) when ``y`` is given."""
    pred = probs.argmax(1).tolist()
    header = ["index", "predicted", *[f"p_{n}" for n in names]] + (["label"] if y is not None else [])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for i, (row, c) in enumerate(zip(probs.tolist(), pred)):
        cells = [i, names[c], *[f"{v:.6g}" for v in row]]
        if y is not None:
            cells.append(names[int(y[i])] if int(y[i]) != UNLABELLED else "")
        w.writerow(cells)
    p = Path(path)
    with atomic_path(p) as tmp:
        tmp.write_text(buf.getvalue())
    return p
