"""``vaekit impute``: fill in missing values (NaN, empty CSV cells, or positions from a mask)."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..apps.common import check_out, save_array, to_original_units
from ..apps.impute import (
    DEFAULT_CHAINS,
    DEFAULT_ITERS,
    DEFAULT_LEAPFROG,
    DEFAULT_METHOD,
    METHODS,
    check_method,
    impute,
    missing_mask,
)
from ..data.datasets import load_inputs
from ..data.readers import IMAGE_EXTS, read_array, read_csv
from ..errors import DataError, UsageError
from ..io import atomic_path
from ._shared import add_run_args, emit, open_from_args

FIGURE_MAX = 64  # examples drawn in a .png figure


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("impute", help="fill in missing values (NaN, empty CSV cells, or --mask) with a trained VAE",
                       description="Missing values: NaN in .npy/.npz/.csv inputs, empty or NA cells in a CSV, "
                                   "and the positions a --mask marks. Observed values are kept as they are.")
    add_run_args(p, split=False)
    p.add_argument("--input", required=True, help=".npy/.npz array, .csv table or image folder with the examples")
    p.add_argument("--mask", default=None,
                   help="missing positions for every example: a greyscale image the size of the model's images "
                        "(white, >= 0.5, = missing; black = observed), or a .npy/.npz of 0/1 (1 = missing) "
                        "shaped like one example or like the whole input")
    p.add_argument("--method", default=DEFAULT_METHOD, metavar="|".join(METHODS),
                   help=f"sampler (default {DEFAULT_METHOD}: Hamiltonian Monte Carlo on the latent variables)")
    p.add_argument("--iters", type=int, default=None,
                   help="steps per chain (" + ", ".join(f"{m} {n}" for m, n in DEFAULT_ITERS.items() if m != "importance")
                        + f") or importance samples (importance; default {DEFAULT_ITERS['importance']})")
    p.add_argument("--chains", type=int, default=DEFAULT_CHAINS,
                   help=f"independent chains per example, averaged (all but importance; default {DEFAULT_CHAINS})")
    p.add_argument("--leapfrog", type=int, default=DEFAULT_LEAPFROG,
                   help=f"leapfrog steps per HMC trajectory (default {DEFAULT_LEAPFROG})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="FILE.npy, .npz (key x) or .csv in the input's units, or .png (images: masked inputs "
                        "above their imputations); default RUN/imputed.csv for tables, RUN/imputed.npy for images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_impute)


def read_mask(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """A --mask file -> bool array (True = missing): an image (white >= 0.5 = missing) becomes
    (*shape) for image models; .npy/.npz arrays are returned as they are (checked later against x)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"--mask {p}: no such file")
    if p.suffix.lower() in IMAGE_EXTS:
        if len(shape) != 3:
            raise UsageError(f"--mask {p}: a mask image needs an image model; this model's examples are vectors "
                             f"of {shape[0]}; give a .npy of 0/1 instead")
        from PIL import Image

        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        except Exception as e:  # noqa: BLE001 (PIL raises several types for damaged files)
            raise DataError(f"--mask {p}: cannot read the image ({' '.join(str(e).split())})") from None
        if a.shape != tuple(shape[1:]):
            raise DataError(f"--mask {p}: the image is {a.shape[1]}x{a.shape[0]} pixels, the model's images are "
                            f"{shape[2]}x{shape[1]}")
        return np.broadcast_to(a >= 0.5, shape).copy()
    if p.suffix.lower() not in (".npy", ".npz"):
        raise UsageError(f"--mask {p}: expected an image (PNG...) or a .npy/.npz array")
    m, _ = read_array(p)
    if m.dtype.kind not in "biuf":
        raise DataError(f"--mask {p}: expected a numeric or boolean array, got {m.dtype}")
    if not np.isin(m, (0, 1)).all():
        raise DataError(f"--mask {p}: values must be 0 (observed) or 1 (missing)")
    return m.astype(bool)


def _raw_table(path: str, source: dict) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, str | None]:
    """A table input's values exactly as written (float64 (N, D), NaN = missing), labels, header, label name."""
    p = Path(path).expanduser()
    if p.suffix.lower() in (".csv", ".tsv"):
        return read_csv(p, source.get("label_column"), need_label=False, allow_missing=True)
    x, _ = read_array(p)
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1), None, None, None


def _write_csv(path: Path, a: np.ndarray, header: list[str] | None, labels: np.ndarray | None,
               label_name: str | None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    if header is not None:
        w.writerow(header + ([label_name or "label"] if labels is not None else []))
    for i, row in enumerate(a.reshape(len(a), -1)):
        w.writerow([repr(float(v)) for v in row] + ([labels[i]] if labels is not None else []))
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _impute_series(run, args: argparse.Namespace) -> int:
    """A series run: the missing values of the series at --input filled by Donut's MCMC imputation
    (--iters rounds, default 10), written as a CSV (time or index column, then the channels, in
    the series' units) or .npy (T, D). Observed values are kept as they were."""
    from ..apps.stream import impute_series
    from ..data.sequences import apply_scaler, check_series_length, invert_scaler, read_series

    if args.mask is not None or args.method != DEFAULT_METHOD:
        raise UsageError("series runs impute by Donut's MCMC over windows; --mask and --method do not apply "
                         "(missing values are the empty or NaN cells)")
    iters = 10 if args.iters is None else args.iters
    if iters < 1:
        raise UsageError(f"--iters must be >= 1, got {iters}")
    out = check_out(args.out or run.dir / "imputed.csv", (".csv", ".npy"))
    s = read_series(args.input, run.source.get("label_column"))
    window, scaler = int(run.source["window"]), run.source["scaler"]
    if s.values.shape[1] != len(scaler["mean"]):
        raise DataError(f"{args.input} has {s.values.shape[1]} value columns but the run was trained on "
                        f"{len(scaler['mean'])}; give a series with the same columns")
    check_series_length(s.values, window, str(args.input))
    missing = np.isnan(s.values)
    filled = impute_series(run.model, apply_scaler(s.values, scaler), window, iters=iters, seed=args.seed)
    a = np.where(missing, invert_scaler(filled, scaler), s.values)
    if out.suffix.lower() == ".npy":
        save_array(out, a.astype(np.float32))
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["timestamp" if s.index is not None else "index", *s.columns])
        for i, row in enumerate(a):
            w.writerow([s.index[i] if s.index is not None else i, *(repr(float(v)) for v in row)])
        with atomic_path(out) as tmp:
            tmp.write_text(buf.getvalue())
    res = {"out": str(out), "rows": int(len(a)), "missing": int(missing.sum()), "iters": iters, "window": window}
    return emit(args, res, [f"filled {res['missing']} missing values of {len(a)} rows ({iters} MCMC rounds); wrote {out}"])


def cmd_impute(args: argparse.Namespace) -> int:
    iters = check_method(args.method, args.iters)
    run = open_from_args(args)  # --chains, --leapfrog and a method the model cannot use: checked by impute()
    if run.source.get("kind_of_source") == "series":
        return _impute_series(run, args)
    spec = run.spec
    allowed = (".npy", ".npz", ".csv", ".png") if spec.is_image else (".npy", ".npz", ".csv")
    out = check_out(args.out or run.dir / ("imputed.npy" if spec.is_image else "imputed.csv"), allowed)
    s = load_inputs(args.input, spec, run.source, allow_missing=True)
    if len(s.x) == 0:
        raise DataError(f"no examples in {args.input}")
    mask = None if args.mask is None else read_mask(args.mask, spec.shape)
    miss = missing_mask(s.x, mask)
    table = bool(run.source.get("standardize")) and not Path(args.input).expanduser().is_dir()
    raw = _raw_table(args.input, run.source) if table else None
    filled = impute(run.model, s.x, miss, method=args.method, iters=iters, chains=args.chains,
                    seed=args.seed, leapfrog=args.leapfrog)
    a = to_original_units(filled, run.source)
    if raw is not None:  # observed values exactly as the user wrote them (no round trip through float32)
        flat, obs = a.reshape(len(a), -1), ~miss.flatten(1).numpy()
        flat[obs] = raw[0][obs]
        a = flat.reshape(a.shape)
    ext = out.suffix.lower()
    if ext == ".png":
        from ..figures import save_reconstructions

        shown = torch.where(miss, torch.full_like(s.x, 0.5), s.x.nan_to_num(0.5))  # missing: mid-grey
        n = min(len(a), FIGURE_MAX)
        save_reconstructions(out, shown[:n], filled[:n], n=n, kind=spec.kind)
    elif ext == ".csv":
        header = raw[2] if raw is not None else None
        _write_csv(out, a, header, raw[1] if raw is not None else None, raw[3] if raw is not None else None)
    else:
        save_array(out, a if table else a.astype(np.float32))
    rows = miss.flatten(1)
    res = {"out": str(out), "n": len(s.x), "missing_values": int(rows.sum()),
           "rows_with_missing": int(rows.any(1).sum()), "rows_all_missing": int(rows.all(1).sum()),
           "method": args.method, "iters": iters, "chains": args.chains, "seed": args.seed}
    if args.method == "hmc":
        res["leapfrog"] = args.leapfrog
    unit = "samples" if args.method == "importance" else f"steps x {args.chains} chains"
    lines = [(f"imputed {res['missing_values']} missing values in {res['rows_with_missing']} of {res['n']} examples "
             f"({args.method}, {iters} {unit})")]
    lines.append(f"wrote {out}")
    if res["rows_all_missing"]:
        lines.insert(1, f"{res['rows_all_missing']} example(s) had every value missing: filled from the model's marginal")
    return emit(args, res, lines)
