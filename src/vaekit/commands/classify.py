"""``vaekit classify``: class predictions and probabilities from a semi-supervised run (M2, M1+M2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..apps.classify import predict_proba, require_classifier, summarize, write_predictions
from ..apps.common import check_out, class_names, run_inputs
from ._shared import add_run_args, emit, open_from_args, positive

MATRIX_MAX = 20  # classes up to which the text output prints the confusion matrix


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="predict classes with a semi-supervised (m2) run; accuracy where labels exist")
    add_run_args(p)
    p.add_argument("--input", default=None,
                   help="image folder (class subfolders give labels), image file, .npy/.npz (y: labels) or .csv "
                        "(default: the run's --split)")
    p.add_argument("--out", default=None,
                   help="CSV of predictions: index, predicted class, p_<class> per class (and the label when known); "
                        "default RUN/predictions-<split or input name>.csv")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--batch-size", type=int, default=1000, help="examples per batch")
    p.add_argument("--json", action="store_true", help="print one JSON object (accuracy, confusion matrix, ...)")
    p.set_defaults(func=cmd_classify)


def _matrix_lines(res: dict) -> list[str]:
    names, conf = res["classes"], res["confusion"]
    width = max(5, *(len(n) for n in names), *(len(str(v)) for row in conf for v in row))
    lines = ["confusion matrix (rows: true class, columns: predicted):",
             " " * width + " " + " ".join(n.rjust(width) for n in names)]
    lines += [names[i].rjust(width) + " " + " ".join(str(v).rjust(width) for v in row) for i, row in enumerate(conf)]
    return lines


def cmd_classify(args: argparse.Namespace) -> int:
    positive("--batch-size", args.batch_size, integer=True)
    run = open_from_args(args)
    require_classifier(run)
    name = Path(args.input).stem if args.input else args.split
    out = check_out(args.out or run.dir / f"predictions-{name}.csv", (".csv",))
    s = run_inputs(run, args.input, split=args.split, data_dir=args.data_dir, limit=args.limit, labels="run")
    names = class_names(run.source, run.spec.num_classes)
    probs = predict_proba(run.model, s.x, batch_size=args.batch_size)
    write_predictions(out, probs, names, s.y)
    res = {**summarize(probs, s.y, names), "out": str(out)}
    lines = [f"classified {res['n']} examples: wrote {out}"]
    if res["accuracy"] is not None:
        lines.append(f"accuracy {res['accuracy']:.4f} on the {res['n_labelled']} labelled examples "
                     f"(error {100 * (1 - res['accuracy']):.2f}%)")
        if len(names) <= MATRIX_MAX:
            lines += _matrix_lines(res)
    else:
        lines.append("no labels in these examples: no accuracy")
    return emit(args, res, lines)
