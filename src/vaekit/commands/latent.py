"""``vaekit interpolate``, ``traverse``, ``edit`` and ``embed``: the latent space from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..apps.common import (LoadedRun, check_out, class_names, label_index, run_inputs, save_array,
                           to_original_units)
from ..apps.conditional import condition_field, cond_of, example_cond, label_name, require_labels, run_label
from ..apps.latent import (METHODS, attribute_vector, edit, embed, interpolate, map_2d, most_active_dims, transfer,
                           traverse)
from ..apps.plots import save_frames, save_latent_map
from ..data.datasets import Split
from ..errors import UsageError
from ..tensorboard import PROJECTOR_POINTS
from ._shared import add_run_args, emit, example, example_batch, open_from_args, positive

FIG = (".png",)


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import _finite

    p = sub.add_parser("interpolate", help="decode the path between two examples' latents")
    add_run_args(p)
    p.add_argument("--from", dest="src", required=True,
                   help="index into the split, or an image/array file (text runs: or the sentence itself)")
    p.add_argument("--to", dest="dst", required=True,
                   help="index into the split, or an image/array file (text runs: or the sentence itself)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--method", choices=METHODS, default="linear", help="linear or slerp (spherical)")
    p.add_argument("--label", default=None, help="conditional runs: decode every frame as this class "
                                                 "(default: the --from example's own label)")
    p.add_argument("--out", default=None, help="image strip (.png; default RUN/interpolate-I-J.png) or frames (.npy, .csv)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_interpolate)

    t = sub.add_parser("traverse", help="sweep latent dimensions one at a time, the others held")
    add_run_args(t)
    t.add_argument("--dim", default=None,
                   help="dimension(s) to sweep, e.g. 3 or 0,4,7 (default: the 8 carrying most KL)")
    t.add_argument("--input", default=None, help="hold the others at this example's latent (index or file); default 0")
    t.add_argument("--span", type=_finite, default=3.0, help="sweep z_d over [-span, span]")
    t.add_argument("--steps", type=int, default=9)
    t.add_argument("--label", default=None, help="conditional runs: decode as this class "
                                                 "(default: the --input example's own label, else the first class)")
    t.add_argument("--out", default=None, help="figure .png (default RUN/traverse.png) or frames .npy/.csv")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_traverse)

    e = sub.add_parser("edit", help="move an example toward a label along the difference of class-mean latents "
                                    "(conditional runs: --to-label, the same style as another class)")
    add_run_args(e)
    e.add_argument("--input", required=True, help="index into the split, or an image/array file")
    e.add_argument("--toward", default=None, help="target label (a class of the training labels)")
    e.add_argument("--to-label", default=None,
                   help="conditional runs: encode the example under its own label, decode it as this class "
                        "(a name or index; 'all': every class)")
    e.add_argument("--label", default=None, help="with --to-label: the example's own class when the input has no label")
    e.add_argument("--away-from", default=None, help="source label (default: the example's own label if known, "
                                                       "else all other classes)")
    e.add_argument("--strength", type=_finite, default=1.0, help="how far to move (1 = one class-mean difference)")
    e.add_argument("--steps", type=int, default=6, help="frames from strength 0 to --strength")
    e.add_argument("--out", default=None, help="strip .png (default RUN/edit-I-toward-L.png) or frames .npy/.csv")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_edit)

    m = sub.add_parser("embed", help="posterior means (and variances) of inputs, plus a 2-D latent map "
                                     "or a folder for TensorBoard's embedding projector")
    add_run_args(m)
    m.add_argument("--input", default=None, help="image folder/file, .npy/.npz or .csv (default: the run's split)")
    m.add_argument("--out", default=None, help="latents.csv or .npy/.npz (this, --projector or both)")
    m.add_argument("--variance", action="store_true", help="also write the posterior variances")
    m.add_argument("--map", choices=["pca", "tsne", "none"], default="pca", help="2-D map method when D > 2")
    m.add_argument("--map-out", default=None,
                   help="latent map .png (default: beside --out; without --out, only when given)")
    m.add_argument("--projector", default=None,
                   help="also write the posterior means, labels and thumbnails to this folder for TensorBoard's "
                        f"embedding projector (the first {PROJECTOR_POINTS:,} examples unless --limit; "
                        "needs pip install 'vaekit[tensorboard]')")
    m.add_argument("--limit", type=int, default=None, help="only the first N examples")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_embed)


def _dims(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        dims = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"--dim expects integers like 3 or 0,4,7, got {text!r}") from None
    if not dims:
        raise UsageError("--dim is empty")
    return dims


FRAMES = (".png", ".npy", ".csv")


def _write_frames(out: Path, frames: torch.Tensor, run, keys: dict[str, list], **labels) -> None:
    """Frames (S, *shape) or (R, S, *shape), model units, to ``out``: a figure (.png), or the
    frames in the user's units (tables standardised for training get their mean and std back):
    .npy keeps the array's shape, .csv has one row per frame, ``keys`` (one value per frame, in
    order) first and then the training columns (images: one column per pixel)."""
    if out.suffix.lower() == ".png":
        save_frames(out, frames, run.spec, **labels)
        return
    a = to_original_units(frames.reshape(-1, *run.spec.shape), run.source)  # (R * S, *shape)
    if out.suffix.lower() == ".npy":
        save_array(out, a.reshape(frames.shape).astype(np.float32))
        return
    cols = list(run.source.get("columns") or [f"x{i}" for i in range(run.spec.dim)])
    table = np.concatenate([np.asarray(list(keys.values()), dtype=object).T, a.reshape(len(a), -1)], 1)
    save_array(out, table, header=[*keys, *cols])


def _sentence(run, ref: str, args: argparse.Namespace):
    """A sentence for a text run: an index into the run's split ("17"), a text file (its first
    line), or the sentence itself. Returns ((1, T, 1) ids, (1, T, 1) mask, its text)."""
    from ..data.text import encode, ids_to_text, tokenize

    src = run.source
    if ref.isdigit():
        s = run_inputs(run, None, split=getattr(args, "split", "test"), data_dir=args.data_dir)
        i = int(ref)
        if i >= len(s):
            raise UsageError(f"{ref}: the {getattr(args, 'split', 'test')} split has {len(s)} sentences")
        x, m = s.x[i:i + 1], s.mask[i:i + 1]
    else:
        p = Path(ref).expanduser()
        line = p.read_text(encoding="utf-8").strip().splitlines()[0] if p.is_file() else ref
        ids, mask, _ = encode([tokenize(line.strip(), src["tokens"])], src["vocab"], run.spec.shape[0])
        x, m = torch.from_numpy(ids.astype(np.float32))[..., None], torch.from_numpy(mask)[..., None]
    return x, m, ids_to_text(x, m, src["vocab"], src["tokens"])[0]


def _interpolate_sentences(run, args: argparse.Namespace) -> int:
    """Bowman et al.'s homotopy: the posterior means of two sentences, the straight line between
    them, each point decoded greedily. Printed; --out FILE.txt also writes them."""
    from ..data.text import ids_to_text
    from ..io import atomic_path

    out = None if args.out is None else Path(args.out)
    if out is not None and (out.suffix.lower() != ".txt" or not out.parent.exists()):
        raise UsageError(f"--out {out}: interpolated sentences are written to a .txt file in an existing folder")
    model = run.model
    (xa, ma, ta), (xb, mb, tb) = _sentence(run, args.src, args), _sentence(run, args.dst, args)
    with torch.no_grad():
        za, _ = model.encode(xa.to(model.device), mask=ma.to(model.device))
        zb, _ = model.encode(xb.to(model.device), mask=mb.to(model.device))
        w = torch.linspace(0, 1, args.steps, device=model.device, dtype=za.dtype)[:, None]
        ids = model.generate_tokens((1 - w) * za + w * zb, greedy=True)
    sents = ids_to_text(ids, None, run.source["vocab"], run.source["tokens"])
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text("\n".join(sents) + "\n")
    res = {"from": ta, "to": tb, "sentences": sents, "steps": args.steps, "out": None if out is None else str(out)}
    return emit(args, res, [f"from: {ta}", *[f"  {s}" for s in sents], f"to:   {tb}"])


def cmd_interpolate(args: argparse.Namespace) -> int:
    positive("--steps", args.steps)
    run = open_from_args(args)
    if run.spec.kind == "tokens":
        return _interpolate_sentences(run, args)
    tag = f"{Path(args.src).stem}-{Path(args.dst).stem}"
    out = check_out(args.out or run.dir / f"interpolate-{tag}.png", FRAMES)
    if args.label is not None:
        require_labels(run, "--label")
    ea, eb = example_batch(run, args.src, args, "--from"), example_batch(run, args.dst, args, "--to")
    ca, cb = example_cond(run, ea, args.label, "--from"), example_cond(run, eb, args.label, "--to")
    held = {"y": torch.tensor([run_label(run, args.label)])} if args.label is not None else ca
    frames = interpolate(run.model, ea.x, eb.x, steps=args.steps, method=args.method, cond_from=ca, cond_to=cb,
                         cond=held)
    _write_frames(out, frames, run, {"t": np.linspace(0.0, 1.0, args.steps).tolist()})
    res = {"out": str(out), "steps": args.steps, "method": args.method}
    if "y" in held:
        res["label"] = label_name(run, int(held["y"][0]))
    return emit(args, res, [f"wrote a {args.steps}-step {args.method} interpolation"
                            + (f" (as class {res['label']})" if "label" in res else "") + f" to {out}"])


def cmd_traverse(args: argparse.Namespace) -> int:
    positive("--steps", args.steps)
    positive("--span", args.span)
    run = open_from_args(args)
    dims = _dims(args.dim)
    out = check_out(args.out or run.dir / "traverse.png", FRAMES)
    if args.label is not None:
        require_labels(run, "--label")
    base, cond = None, _default_cond(run, args)
    if args.input is not None:
        ex = example_batch(run, args.input, args, "--input")
        own = example_cond(run, ex, args.label, "--input")
        base = embed(run.model, ex.replace(**own) if own else ex.x)[0][0]
        cond = own if args.label is None else cond
    if dims is None:  # the dimensions the model actually uses
        from ..metrics import evaluate

        s = run_inputs(run, None, split=args.split, data_dir=args.data_dir, limit=1000)
        ev = evaluate(run.model, s)  # (a model without a KL term: the variance of its codes)
        kl = ev.get("kl_per_dim", ev["posterior_mean_var"])[: run.model.latent_dim]  # a 2nd layer's dims come after
        dims = most_active_dims(kl, 8)
    frames = traverse(run.model, dims, base=base, span=args.span, steps=args.steps, cond=cond)
    values = np.linspace(-args.span, args.span, args.steps).tolist()
    _write_frames(out, frames, run, {"dim": [d for d in dims for _ in values], "value": values * len(dims)},
                  row_labels=[f"z{d}" for d in dims])
    res = {"out": str(out), "dims": dims, "span": args.span, "steps": args.steps}
    if cond and "y" in cond:
        res["label"] = label_name(run, int(cond["y"][0]))
    return emit(args, res, [f"traversed dimensions {', '.join(map(str, dims))} over [-{args.span:g}, {args.span:g}]"
                            + (f" as class {res['label']}" if "label" in res else "") + f": {out}"])


def _default_cond(run, args: argparse.Namespace) -> dict[str, torch.Tensor] | None:
    """The condition a traversal is decoded under without an --input: --label, else the first
    class (label-conditional runs), or the first test example's condition (c-conditioned runs)."""
    field = condition_field(run.model)
    if field == "y":
        return {"y": torch.tensor([run_label(run, args.label) if args.label is not None else 0])}
    if field == "c":
        return cond_of(run.model, run_inputs(run, None, split=args.split, data_dir=args.data_dir, limit=1))
    return None


def cmd_edit(args: argparse.Namespace) -> int:
    if (args.toward is None) == (args.to_label is None):
        raise UsageError("edit needs one of --toward L (move along a class-mean difference) or --to-label L "
                         "(conditional runs: decode as another class)")
    if args.to_label is not None:
        return _edit_to_label(args)
    positive("--steps", args.steps)
    run = open_from_args(args)
    if condition_field(run.model) is not None:
        raise UsageError("--toward moves an unconditional run's latent; this run is conditional: use --to-label L")
    target = label_index(args.toward, run.source, run.spec.num_classes)
    away = None if args.away_from is None else label_index(args.away_from, run.source, run.spec.num_classes)
    out = check_out(args.out or run.dir / f"edit-{Path(args.input).stem}-toward-{args.toward}.png", FRAMES)
    x, own = example(run, args.input, args, "--input")
    train = run_inputs(run, None, split="train", data_dir=args.data_dir)
    if train.y is None:
        raise UsageError("editing toward a label needs a run trained on labelled data; this run has no labels")
    z, _ = embed(run.model, train.x)
    source = away if away is not None else (own if own is not None and own != target else None)
    vec = attribute_vector(z, train.y, target, source=source)
    strengths = np.linspace(0.0, args.strength, args.steps).tolist()
    frames = edit(run.model, x, vec, strengths)
    _write_frames(out, frames, run, {"strength": strengths}, col_labels=[f"{s:.2g}" for s in strengths])
    names = class_names(run.source, run.spec.num_classes)
    frm = names[source] if source is not None else "the other classes"
    return emit(args, {"out": str(out), "toward": names[target], "away_from": None if source is None else names[source],
                       "strengths": strengths, "vector_norm": float(vec.norm())},
                [f"edited example {args.input} from {frm} toward {names[target]} "
                 f"(strength 0 to {args.strength:g}, |v| = {float(vec.norm()):.3g}): {out}"])


def _edit_to_label(args: argparse.Namespace) -> int:
    """"The same style, another class": the example encoded under its own label, decoded as the target(s)."""
    run = open_from_args(args)
    require_labels(run, "--to-label")
    k = int(run.spec.num_classes)
    targets = list(range(k)) if args.to_label == "all" else [run_label(run, args.to_label, "--to-label")]
    if args.label is not None:
        run_label(run, args.label)
    tag = "all" if args.to_label == "all" else label_name(run, targets[0])
    out = check_out(args.out or run.dir / f"edit-{Path(args.input).stem}-to-{tag}.png", FRAMES)
    ex = example_batch(run, args.input, args, "--input")
    own = example_cond(run, ex, args.label, "--input")
    frames = transfer(run.model, ex.x, own, {"y": torch.tensor(targets)})
    frames = torch.cat([ex.x.to(frames.dtype), frames])  # the input first, for comparison
    names = ["input"] + [label_name(run, t) for t in targets]
    _write_frames(out, frames, run, {"label": names}, col_labels=names)
    frm = label_name(run, int(own["y"][0]))
    return emit(args, {"out": str(out), "from": frm, "to": names[1:]},
                [f"example {args.input} (class {frm}) decoded as {', '.join(names[1:])}: {out}"])


def cmd_embed(args: argparse.Namespace) -> int:
    if args.out is None and args.projector is None:
        raise UsageError("embed writes --out latents.csv|.npy|.npz, a --projector folder, or both; give one")
    if args.projector is not None:
        from ..tensorboard import require_tensorboard

        require_tensorboard("--projector")
    run = open_from_args(args)
    out = check_out(args.out, (".csv", ".npy", ".npz"))
    map_at = args.map_out or (out.with_name(out.stem + "-map.png") if out is not None else None)
    map_out = None if args.map == "none" or map_at is None else check_out(map_at, FIG, "--map-out")
    projector = None if args.projector is None else Path(args.projector)
    if projector is not None and not projector.parent.exists():
        raise UsageError(f"--projector {projector}: folder {projector.parent} does not exist")
    if projector is not None and projector.exists() and not projector.is_dir():
        raise UsageError(f"--projector {projector} is a file; give a folder")
    # without --out and --limit only the projector's points are encoded
    limit = args.limit if args.limit is not None or out is not None else PROJECTOR_POINTS
    s = run_inputs(run, args.input, split=args.split, data_dir=args.data_dir, limit=limit)
    mu, var = embed(run.model, s)
    d = mu.shape[1]
    if out is not None:
        _write_latents(out, mu, var if args.variance else None, s.y)
    if map_out is not None:
        coords, axes = map_2d(mu.numpy(), method=args.map, seed=args.seed)
        save_latent_map(map_out, coords, labels=None if s.y is None else s.y.numpy(),
                        names=class_names(run.source, run.spec.num_classes), axes_label=axes,
                        title=f"latent map of {len(mu)} examples")
    lines = [f"embedded {len(mu)} examples into {d} dimensions" + (f": {out}" if out is not None else "")]
    res = {"out": None if out is None else str(out), "map": None if map_out is None else str(map_out), "n": len(mu),
           "latent_dim": d}
    if map_out is not None:
        lines.append(f"latent map: {map_out}")
    if projector is not None:
        res["projector"] = _write_projector(run, projector, s, mu, args)
        lines.append(f"projector: {projector} ({res['projector']['points']} points; "
                     f"tensorboard --logdir {projector}, then the PROJECTOR tab)")
    return emit(args, res, lines)


def _write_latents(out: Path, mu: torch.Tensor, var: torch.Tensor | None, y: torch.Tensor | None) -> None:
    """The posterior means (and variances): a table (.csv, .npy) or named arrays (.npz, with the labels)."""
    if out.suffix.lower() == ".npz":
        from ..io import atomic_path

        arrays = {"mean": mu.numpy(), **({"var": var.numpy()} if var is not None else {}),
                  **({"y": y.numpy()} if y is not None else {})}
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return
    d = mu.shape[1]
    table = torch.cat([mu, var], 1) if var is not None else mu
    header = [f"z{i}" for i in range(d)] + ([f"var{i}" for i in range(d)] if var is not None else [])
    save_array(out, table.numpy(), header=header)


def _write_projector(run: LoadedRun, folder: Path, s: Split, mu: torch.Tensor, args: argparse.Namespace) -> dict:
    """The first ``--limit`` (default ``PROJECTOR_POINTS``) posterior means for TensorBoard's
    projector (``tensorboard.write_projector``), with each example's index in the inputs, its class
    name where the inputs have labels, its text for sentences, and thumbnails for images."""
    from ..tensorboard import write_projector

    n = min(len(mu), args.limit or PROJECTOR_POINTS)
    meta: dict[str, list] = {"index": list(range(n))}
    if s.y is not None:
        names = class_names(run.source, run.spec.num_classes)
        meta["label"] = [names[int(v)] if 0 <= int(v) < len(names) else "unlabelled" for v in s.y[:n]]
    if run.spec.kind == "tokens":
        from ..data.text import ids_to_text

        meta["text"] = ids_to_text(s.x[:n], s.mask[:n] if s.mask is not None else None, run.source["vocab"],
                                   run.source["tokens"])
    where = f"{args.input}" if args.input is not None else f"the {args.split} split of {run.config.data.source}"
    return write_projector(folder, mu[:n], metadata=meta, images=s.x[:n] if run.spec.is_image else None,
                           kind=run.spec.kind, name=f"{run.dir.name} posterior means",
                           description=f"posterior means of {n} examples ({where}) under the run {run.dir}, "
                                       f"{mu.shape[1]} dimensions")
