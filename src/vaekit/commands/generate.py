"""``vaekit sample`` and ``vaekit reconstruct``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..apps.common import check_example_out, check_out, class_names, run_inputs, save_array, write_examples
from ..apps.conditional import condition_field, label_name, per_class_labels, require_labels, run_label
from ..apps.generate import agreeing_samples, reconstruct, sample, seeded
from ..errors import UsageError
from ._shared import add_run_args, emit, open_from_args, positive

FIGURE_MAX = 64  # examples drawn in the reconstruction figure; errors cover all --n


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import _finite

    p = sub.add_parser("sample", help="generate new examples (image grid, array, table or image folder)")
    add_run_args(p, split=False)
    p.add_argument("--n", type=int, default=None, help="how many examples (default 64)")
    p.add_argument("--label", default=None,
                   help="conditional runs: generate this class (a name or index of the training labels)")
    p.add_argument("--per-class", type=int, default=None,
                   help="conditional runs: N of every class (a grid with one row per class; .npz/.csv/folder "
                        "keep the labels: a labelled synthetic data set)")
    p.add_argument("--agree", action="store_true",
                   help="with --per-class or --label, on a run with its own classifier (M2): keep only samples "
                        "that classifier labels as the class asked for (fewer wrong labels in synthetic data)")
    p.add_argument("--input", default=None,
                   help="runs conditioned on attribute vectors or inputs: take the conditions from these "
                        "examples (default: the run's test split), cycled to --n")
    p.add_argument("--temperature", type=_finite, default=1.0, help="scale of the prior's std (<1: more typical)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draw", action="store_true",
                   help="draw from p(x|z) instead of its mean (default for tables; images use the mean)")
    p.add_argument("--out", default=None,
                   help="FILE.png (grid), .npy, .npz, .csv, or a new folder name (one PNG per example); "
                        "default RUN/samples.png (images) or RUN/samples.csv (tables)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_sample)

    r = sub.add_parser("reconstruct", help="originals above their reconstructions, with per-example errors")
    add_run_args(r)
    r.add_argument("--input", default=None, help="image folder, image file, .npy/.npz or .csv (default: the run's split)")
    r.add_argument("--n", type=int, default=16, help="how many examples (the first N)")
    r.add_argument("--out", default=None, help="figure (PNG); default RUN/reconstructions-N.png")
    r.add_argument("--errors", default=None, help="per-example errors (.csv/.npy); default beside --out")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_reconstruct)


def cmd_sample(args: argparse.Namespace) -> int:
    if args.per_class is not None and (args.n is not None or args.label is not None):
        raise UsageError("--per-class N draws N of every class; give it alone, or --n (with --label) instead")
    n = 64 if args.n is None else args.n
    positive("--n", n)
    positive("--temperature", args.temperature)
    if args.per_class is not None:
        positive("--per-class", args.per_class)
    run = open_from_args(args)
    spec = run.spec
    if spec.kind == "tokens":
        return _sample_sentences(run, args, n)
    cond, labels, nrow, what = _sample_conditions(run, args, n)
    n = len(labels) if labels is not None else n
    out = Path(args.out) if args.out else run.dir / ("samples.png" if spec.is_image else "samples.csv")
    check_example_out(out, spec)
    mean = not args.draw and spec.is_image
    if args.agree:
        if args.per_class is None and args.label is None:
            raise UsageError("--agree keeps the samples the run's classifier labels as asked: give it with "
                             "--per-class N or --label L")
        classes = labels.unique_consecutive().tolist()
        x, _ = agreeing_samples(run.model, classes, n // len(classes), temperature=args.temperature,
                                seed=args.seed, mean=mean)
    else:
        x = sample(run.model, n, temperature=args.temperature, seed=args.seed, mean=mean, **cond)
    write_examples(out, x, spec, run.source, labels, nrow=nrow)
    res = {"out": str(out), "n": n, "temperature": args.temperature, "seed": args.seed, "draw": not mean,
           "agree": args.agree}
    if labels is not None:
        names = class_names(run.source, spec.num_classes)
        res.update(label=None if args.label is None else names[int(labels[0])], per_class=args.per_class,
                   classes=names, counts={names[k]: int((labels == k).sum()) for k in labels.unique().tolist()})
    return emit(args, res, [f"wrote {n} samples{what} to {out}"])


def _sample_sentences(run, args: argparse.Namespace, n: int) -> int:
    """Sentences of a text run: z ~ p(z), each token drawn from softmax(logits / --temperature) (the
    most likely token with --temperature below 0.01). Printed; with --out FILE.txt also written."""
    from ..data.text import ids_to_text
    from ..io import atomic_path

    if args.label is not None or args.per_class is not None or args.input is not None or args.agree:
        raise UsageError("a text run samples sentences from the prior; --label, --per-class, --agree and --input "
                         "do not apply")
    out = None if args.out is None else Path(args.out)
    if out is not None and (out.suffix.lower() != ".txt" or not out.parent.exists()):
        raise UsageError(f"--out {out}: sentences are written to a .txt file in an existing folder")
    model = run.model
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad(), seeded(args.seed):
        z = torch.randn(n, model.latent_dim, generator=gen).to(model.device, model.dtype)
        ids = model.generate_tokens(z, temperature=args.temperature, greedy=args.temperature < 0.01)
    sents = ids_to_text(ids, None, run.source["vocab"], run.source["tokens"])
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text("\n".join(sents) + "\n")
    res = {"sentences": sents, "n": n, "temperature": args.temperature, "seed": args.seed,
           "out": None if out is None else str(out)}
    return emit(args, res, sents + ([f"wrote {n} sentences to {out}"] if out is not None else []))


def _sample_conditions(run, args: argparse.Namespace, n: int) -> tuple[dict, torch.Tensor | None, int | None, str]:
    """What to condition ``sample`` on: ({"y": labels} or {"c": conditions} or {}, the labels to
    write with the samples, the grid's images per row, words for the message). Checks the label
    options before anything is drawn."""
    field = condition_field(run.model)
    if args.label is not None or args.per_class is not None:
        require_labels(run, "--label" if args.label is not None else "--per-class")
    if args.input is not None and field != "c":
        raise UsageError("--input gives the conditions of a run conditioned on attribute vectors or inputs; "
                         "this run is not one (use --label for classes)" if field == "y" else
                         "--input: this run is not conditional; it samples without inputs")
    if field == "y":
        k = int(run.spec.num_classes)
        if args.per_class is not None:
            y = per_class_labels(k, args.per_class)
            return {"y": y}, y, args.per_class, f", {args.per_class} of each of {k} classes"
        if args.label is not None:
            i = run_label(run, args.label)
            return {"y": torch.full((n,), i)}, torch.full((n,), i), None, f" of class {label_name(run, i)}"
        y = torch.arange(n) % k  # every class in turn: one class per grid column
        return {"y": y}, y, min(k, n), f", classes in turn ({min(k, n)} per row)"
    if field == "c":
        s = run_inputs(run, args.input, split="test", data_dir=args.data_dir)
        if s.c is None:
            raise UsageError(f"{args.input or 'the test split'} has no conditions (c) for this run; "
                             "give --input with the condition columns or key c")
        return {"c": s.c[torch.arange(n) % len(s.c)]}, None, None, f" for the conditions of {args.input or 'the test split'}"
    return {}, None, None, ""


def cmd_reconstruct(args: argparse.Namespace) -> int:
    positive("--n", args.n)
    run = open_from_args(args)
    out = check_out(args.out or run.dir / f"reconstructions-{args.n}.png", (".png",))
    errors = check_out(args.errors or out.with_name(out.stem + "-errors.csv"), (".csv", ".npy"), "--errors")
    s = run_inputs(run, args.input, split=args.split, data_dir=args.data_dir, limit=args.n)
    x_hat, err = reconstruct(run.model, s)
    from ..figures import save_reconstructions

    save_reconstructions(out, s.x, x_hat, n=min(len(s.x), FIGURE_MAX), kind=run.spec.kind)
    table = np.column_stack([np.arange(len(s.x)), err["sq_error"].numpy(), err["recon_nll"].numpy()])
    save_array(errors, table, header=["index", "squared_error", "recon_nll_nats"])
    res = {"out": str(out), "errors": str(errors), "n": len(s.x),
           "mean_squared_error": float(err["sq_error"].mean()), "mean_recon_nll": float(err["recon_nll"].mean())}
    return emit(args, res, [f"reconstructed {len(s.x)} examples: mean squared error {res['mean_squared_error']:.4g}, "
                            f"mean -log p(x|z) {res['mean_recon_nll']:.2f} nats",
                            f"figure: {out}", f"per-example errors: {errors}"])
