"""Conditions for the application verbs: which field a model reads, labels named on the command line,
and one example's condition repeated for many outputs.

Written against the model interface, not a class: a model conditioned on class labels lists "y"
in ``batch_fields`` (the CVAE, M2), one conditioned on attribute vectors or inputs lists "c".
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.batch import Batch, model_inputs
from ..errors import UsageError
from .common import LoadedRun, class_names, label_index

Cond = dict[str, torch.Tensor]


def condition_field(model: Any) -> str | None:
    """"y" (class labels), "c" (condition vectors or inputs) or None for an unconditional model."""
    fields = tuple(getattr(model, "batch_fields", ()))
    return "y" if "y" in fields else "c" if "c" in fields else None


def require_labels(run: LoadedRun, flag: str) -> None:
    """One line when ``flag`` (a label option) is used on a run that does not take class labels."""
    field = condition_field(run.model)
    if field == "y":
        return
    model = run.config.model.model
    if field is None:
        raise UsageError(f"{flag}: this run is not conditional (model {model}); train one with --model cvae "
                         "on labelled data to generate by class")
    kind = "conditioning inputs" if len(run.spec.cond_shape or ()) > 1 else "attribute vectors"
    raise UsageError(f"{flag}: this run is conditioned on {kind} c, not on class labels; "
                     "its conditions come from the examples (--input)")


def run_label(run: LoadedRun, text: str, flag: str = "--label") -> int:
    """A class given by name or index on the command line -> its index, for a label-conditional run.

    Raises UsageError (one line) for a run that takes no labels, or a label it does not know
    (listing the classes)."""
    require_labels(run, flag)
    return label_index(str(text), run.source, run.spec.num_classes)


def label_name(run: LoadedRun, index: int) -> str:
    """The printable name of class ``index`` of the run."""
    names = class_names(run.source, run.spec.num_classes)
    return names[index] if 0 <= index < len(names) else str(index)


def per_class_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """(num_classes * per_class,) int64: per_class 0s, then per_class 1s, ... (one grid row per class)."""
    if per_class < 1:
        raise UsageError(f"--per-class must be at least 1, got {per_class}")
    return torch.arange(num_classes).repeat_interleave(per_class)


def cond_of(model: Any, batch: Batch) -> Cond:
    """The condition ``model`` reads from ``batch`` ({} for an unconditional model), e.g. {"y": (N,)}.
    Raises UsageError when the batch lacks it (inputs without labels for a label-conditional model)."""
    cond = model_inputs(model, batch)
    missing = [f for f, v in cond.items() if v is None]
    if missing:
        what = "labels" if missing[0] == "y" else "conditions (c)"
        raise UsageError(f"this model is conditional and these inputs have no {what}; give inputs with {what}"
                         + (" or name the class with --label" if missing[0] == "y" else ""))
    return {f: v for f, v in cond.items() if v is not None}


def example_cond(run: LoadedRun, ex: Batch, label: str | None, what: str) -> Cond:
    """The condition under which one example (a 1-row Batch) is encoded: its own label (or
    ``label`` when the example has none) for a label-conditional model, its c for a c-conditioned one."""
    field = condition_field(run.model)
    if field == "y" and (ex.y is None or int(ex.y[0]) < 0):
        if label is None:
            raise UsageError(f"{what}: this example has no label and the run is conditional on labels; "
                             "name its class with --label")
        return {"y": torch.tensor([run_label(run, label)])}
    return cond_of(run.model, ex)
