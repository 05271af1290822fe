"""``vaekit denoise``: project noisy examples through a trained VAE."""

from __future__ import annotations

import argparse

from ..apps.common import check_example_out, check_out, write_examples
from ..apps.denoise import denoise
from ..data.datasets import load_inputs
from ..errors import DataError, UsageError
from ._shared import add_run_args, emit, open_from_args, positive

FIGURE_MAX = 64  # examples drawn in the before/after figure


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("denoise", help="denoise examples: reconstruct them through the posterior mean")
    add_run_args(p, split=False)
    p.add_argument("--input", required=True, help="image folder, .npy/.npz array or .csv table of noisy examples")
    p.add_argument("--out", required=True,
                   help="FILE.npy, .npz or .csv (the input's units) or .png (image grid of the denoised examples)")
    p.add_argument("--steps", type=int, default=1, help="encode/decode passes (more: smoother, less detail)")
    p.add_argument("--figure", default=None,
                   help="before/after PNG (images only; default: beside --out, NAME-before-after.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_denoise)


def cmd_denoise(args: argparse.Namespace) -> int:
    positive("--steps", args.steps, integer=True)
    run = open_from_args(args)
    spec = run.spec
    out = check_example_out(check_out(args.out, (".npy", ".npz", ".csv", ".png")), spec)  # a file, not a folder
    fig = None
    if spec.is_image:
        fig = check_out(args.figure or out.with_name(out.stem + "-before-after.png"), (".png",), "--figure")
    elif args.figure:
        check_out(args.figure, (".png",), "--figure")
        raise UsageError(f"--figure {args.figure}: a before/after figure needs image data; this model's examples "
                         f"are vectors")
    s = load_inputs(args.input, spec, run.source)
    if len(s.x) == 0:
        raise DataError(f"no examples in {args.input}")
    x_hat = denoise(run.model, s.x, steps=args.steps)
    write_examples(out, x_hat, spec, run.source)
    res = {"out": str(out), "n": len(s.x), "steps": args.steps,
           "mean_abs_change": float((x_hat - s.x).abs().mean())}
    lines = [f"denoised {len(s.x)} examples ({args.steps} step{'s' if args.steps > 1 else ''}): wrote {out}"]
    if fig is not None:
        from ..figures import save_reconstructions

        n = min(len(s.x), FIGURE_MAX)
        save_reconstructions(fig, s.x[:n], x_hat[:n], n=n, kind=spec.kind)
        res["figure"] = str(fig)
        lines.append(f"before (upper rows) and after (lower rows): {fig}")
    return emit(args, res, lines)
