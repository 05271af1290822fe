"""``vaekit sample`` and ``vaekit reconstruct``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..apps.common import check_example_out, check_out, run_inputs, save_array, write_examples
from ..apps.generate import reconstruct, sample
from ._shared import add_run_args, emit, open_from_args, positive

FIGURE_MAX = 64  # examples drawn in the reconstruction figure; errors cover all --n


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import _finite

    p = sub.add_parser("sample", help="generate new examples (image grid, array, table or image folder)")
    add_run_args(p, split=False)
    p.add_argument("--n", type=int, default=64, help="how many examples")
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
    positive("--n", args.n)
    positive("--temperature", args.temperature)
    run = open_from_args(args)
    spec = run.spec
    out = Path(args.out) if args.out else run.dir / ("samples.png" if spec.is_image else "samples.csv")
    check_example_out(out, spec)
    mean = not args.draw and spec.is_image
    x = sample(run.model, args.n, temperature=args.temperature, seed=args.seed, mean=mean)
    write_examples(out, x, spec, run.source)
    return emit(args, {"out": str(out), "n": args.n, "temperature": args.temperature, "seed": args.seed,
                       "draw": not mean}, [f"wrote {args.n} samples to {out}"])


def cmd_reconstruct(args: argparse.Namespace) -> int:
    positive("--n", args.n)
    run = open_from_args(args)
    out = check_out(args.out or run.dir / f"reconstructions-{args.n}.png", (".png",))
    errors = check_out(args.errors or out.with_name(out.stem + "-errors.csv"), (".csv", ".npy"), "--errors")
    s = run_inputs(run, args.input, split=args.split, data_dir=args.data_dir, limit=args.n)
    x_hat, err = reconstruct(run.model, s.x)
    from ..figures import save_reconstructions

    save_reconstructions(out, s.x, x_hat, n=min(len(s.x), FIGURE_MAX), kind=run.spec.kind)
    table = np.column_stack([np.arange(len(s.x)), err["sq_error"].numpy(), err["recon_nll"].numpy()])
    save_array(errors, table, header=["index", "squared_error", "recon_nll_nats"])
    res = {"out": str(out), "errors": str(errors), "n": len(s.x),
           "mean_squared_error": float(err["sq_error"].mean()), "mean_recon_nll": float(err["recon_nll"].mean())}
    return emit(args, res, [f"reconstructed {len(s.x)} examples: mean squared error {res['mean_squared_error']:.4g}, "
                            f"mean -log p(x|z) {res['mean_recon_nll']:.2f} nats",
                            f"figure: {out}", f"per-example errors: {errors}"])
