"""``vaekit complete``: draw several completions of partly observed examples with a completion model."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

from ..apps.common import LoadedRun, check_out, pick, run_inputs, save_array, to_original_units
from ..apps.complete import check_completion_model, check_masks, complete, pattern_mask, save_completion_strips
from ..apps.impute import missing_mask
from ..data.datasets import load_inputs
from ..errors import UsageError
from ..functional.masks import NAMED_PATTERNS
from ._shared import add_run_args, emit, open_from_args, positive
from .impute import read_mask

FIGURE_MAX = 32  # examples (rows) drawn in a .png; the .npy keeps them all
_INDEX = re.compile(r"(-?\d+)|(-?\d*):(-?\d*)")


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import _finite

    p = sub.add_parser("complete", help="complete partly observed examples with a completion model "
                                        "(--model completion): several completions each",
                       description="The given values are kept exactly; the missing ones (the --mask, and NaN "
                                   "values of the input) are drawn n times from the model's p(x_missing | x_given).")
    add_run_args(p)
    p.add_argument("--input", required=True,
                   help="an index into the run's --split (17) or a range (0:8), or a file: image, image folder, "
                        ".npy/.npz, .csv (NaN = missing)")
    p.add_argument("--mask", default=None,
                   help="the missing part: a greyscale image the size of the model's images (white, >= 0.5, = "
                        "missing), a .npy/.npz of 0/1 (1 = missing) shaped like one example or like the whole "
                        f"input, or a pattern: {' | '.join(NAMED_PATTERNS)} (q1/q2/q3: 1/2/3 quadrants given, "
                        "as in Sohn et al. 2015; top/bottom/left/right: that half missing)")
    p.add_argument("--n", type=int, default=8, help="completions per example (default 8)")
    p.add_argument("--draw", action="store_true", help="draw the missing values from p(x|z) instead of its mean")
    p.add_argument("--temperature", type=_finite, default=1.0, help="scale of the prior network's std (<1: more typical)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="FILE.png (per example: the input with its missing part grey, the completions, the "
                        "original when known) or FILE.npy (n, N, *shape) in the input's units; default "
                        "RUN/completions.png (images) or RUN/completions.npy")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_complete)


def _inputs(run: LoadedRun, args: argparse.Namespace) -> torch.Tensor:
    """--input as examples (N, *shape), model units, NaN where a file leaves values missing."""
    ref = args.input
    m = _INDEX.fullmatch(ref.strip())
    if m is None:
        return load_inputs(ref, run.spec, run.source, allow_missing=True).x
    s = run_inputs(run, None, split=args.split, data_dir=args.data_dir)
    if m.group(1) is not None:
        return pick(s, int(m.group(1)), "--input")
    a, b = (int(g) if g else None for g in (m.group(2), m.group(3)))
    x = s.x[a:b]
    if len(x) == 0:
        raise UsageError(f"--input {ref} selects no examples: the {args.split} split has {len(s.x)}")
    return x


def _mask(arg: str | None, shape: tuple[int, ...]) -> np.ndarray | torch.Tensor | None:
    """--mask as a file (read as ``vaekit impute --mask`` reads it) or a named pattern."""
    if arg is None:
        return None
    if Path(arg).expanduser().is_file() or Path(arg).suffix:
        return read_mask(arg, shape)
    return pattern_mask(arg, shape)


def cmd_complete(args: argparse.Namespace) -> int:
    positive("--n", args.n, integer=True)
    positive("--temperature", args.temperature)
    run = open_from_args(args)
    check_completion_model(run.model)
    spec = run.spec
    allowed = (".png", ".npy") if spec.is_image else (".npy",)
    out = check_out(args.out or run.dir / ("completions.png" if spec.is_image else "completions.npy"), allowed)
    x = _inputs(run, args)
    mask = _mask(args.mask, spec.shape)
    miss = missing_mask(x, mask)
    if mask is None and not miss.any():
        raise UsageError("nothing is missing: the input holds no NaN values and no --mask was given; "
                         "give --mask (a PNG with the missing part white, a .npy of 0/1, or a pattern such as q2)")
    check_masks(miss)
    comps = complete(run.model, x, miss, args.n, mean=not args.draw, temperature=args.temperature, seed=args.seed)
    if out.suffix.lower() == ".png":
        k = min(len(x), FIGURE_MAX)
        truth = x[:k] if torch.isfinite(x[:k]).all() else None  # the original, when the input holds it
        save_completion_strips(out, x[:k], miss[:k], comps[:, :k], kind=spec.kind, truth=truth)
    else:
        a = to_original_units(comps.flatten(0, 1), run.source).reshape(comps.shape)
        save_array(out, a.astype(np.float32))
    res = {"out": str(out), "examples": len(x), "n": args.n, "shape": list(comps.shape),
           "missing_values": int(miss.sum()), "given_fraction": float(1.0 - miss.float().mean()),
           "mean": not args.draw, "temperature": args.temperature, "seed": args.seed}
    lines = [f"completed {len(x)} example(s), {args.n} completion(s) each "
             f"({res['given_fraction']:.0%} of the values given)", f"wrote {out}"]
    return emit(args, res, lines)
