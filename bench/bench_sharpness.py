"""Sharper samples: the pixel-likelihood conv VAE against the perceptual-loss VAE (DFC-VAE, Hou et al.
2017) and the VAE-GAN (Larsen et al. 2016, when ``--model vaegan`` is registered), on MNIST and
Fashion-MNIST, each under the same wall-clock budget, with the same encoder and decoder.

Every model trains epoch by epoch until the next epoch would pass ``--budget-min`` (the first epoch
always runs). Samples (decoder means) are scored against the test split in the penultimate features
of vaekit's reference classifier of the dataset (``evaluate --sample-quality``'s cached net): the
classifier Frechet distance -- not Inception FID -- and precision/recall (Kynkaanniemi et al. 2019,
k = 3). The perceptual loss uses another feature net (same architecture, seed 1, 2 epochs), so the
model is not scored in the very features it was trained to match. The test -ELBO (pixel
likelihood) is reported too: the perceptual term trades some of it for sharpness.

The VAE-GAN (``--model vaegan``: a discriminator on x, reconstruction in its features, the
equilibrium rule) uses its own defaults (``--gamma``, ``--equilibrium``, ``--margin`` pass through);
its test -ELBO is the pixel likelihood's, on which it is not trained.

Writes bench/results/sharpness-<dataset>-<model>.png (64 samples) and bench/results/sharpness.md
(the table, then the three grids of each dataset side by side); rows accumulate in
bench/results/sharpness.json, so datasets or models can be run in separate sessions
(``--datasets mnist --models perceptual``).

    python bench/bench_sharpness.py --data-dir ../shared/data [--budget-min 30]
    python bench/bench_sharpness.py --budget-min 0.5 --train-limit 3000 --n-samples 1000 \
        --results bench/out/sharpness-smoke                                                  # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _budget import curve_probe, fit_within  # noqa: E402
from vaekit.apps.feature_net import reference_feature_net, save_feature_net, train_feature_net
from vaekit.apps.generate import sample
from vaekit.apps.sample_quality import describe, embed_all, frechet_distance, precision_recall
from vaekit.config import make_config
from vaekit.data.datasets import Data, load_data
from vaekit.figures import save_samples
from vaekit.metrics import evaluate
from vaekit.models import MODELS, build_model
from vaekit.perceptual import build_perceptual
from vaekit.training.trainer import Trainer

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("VAEKIT_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"
MODEL_NAMES = ("pixel", "perceptual", "vaegan")


def load(name: str, args: argparse.Namespace) -> Data:
    d = load_data(name, data_dir=str(args.data_dir / name), download=False)
    if args.train_limit:
        d = dataclasses.replace(d, train=d.train[:args.train_limit])
    return d


def perceptual_net(name: str, d: Data, args: argparse.Namespace) -> Path:
    """The perceptual loss's feature net: the reference architecture, another seed (cached in bench/out)."""
    where = HERE / "out" / f"sharpness-{name}-{args.train_limit or 'full'}-perceptual-net"
    if not where.exists():
        net, meta = train_feature_net(d, epochs=2, seed=1)
        save_feature_net(where, net, meta)
    return where


def train_one(kind: str, name: str, d: Data, args: argparse.Namespace,
              probe=None) -> tuple[torch.nn.Module, dict]:
    """Train one model under the budget; returns (its evaluated weights, timing). ``probe(model,
    rec)`` runs every ``--curve-every-min`` minutes of training (not counted in the budget)."""
    opts = dict(source=name, arch="conv", latent_dim=args.latent_dim, epochs=10_000, batch_size=args.batch_size,
                seed=args.seed, device="cpu", beta=args.beta)
    if args.hidden:
        opts["hidden"] = args.hidden
    if kind == "perceptual":
        opts.update(recon_loss="perceptual", feature_net=str(perceptual_net(name, d, args)),
                    perceptual_weight=args.perceptual_weight)
    if kind == "vaegan":
        opts["model"] = "vaegan"
        opts.update({k: getattr(args, k) for k in ("gamma", "equilibrium", "margin") if getattr(args, k) is not None})
    cfg = make_config(None, **opts)
    torch.manual_seed(args.seed)
    model = build_perceptual(cfg, d) if kind == "perceptual" else build_model(cfg.model, d.spec)
    budget_s = args.budget_min * 60.0
    trainer = Trainer(model, d, cfg.train, None, progress=False)
    model, stats = fit_within(trainer, budget_s, whole_epochs=True, probe=probe,
                              probe_every_s=args.curve_every_min * 60.0)
    return model, {**stats, "seconds": round(stats["seconds"], 1)}


def fd_curve_probe(ref: torch.nn.Module, real: np.ndarray, args: argparse.Namespace, curve: list):
    """A probe for ``fit_within``: the classifier FD of ``--curve-samples`` samples against the
    scored test features, appended to ``curve``. Fewer samples than the final score: FD is biased
    upward at small n, so compare points of a curve with each other and the final row with the
    final rows."""
    return curve_probe(lambda model: frechet_distance(real, embed_all(ref, sample(model, args.curve_samples,
                                                                                  seed=args.seed + 1))),
                       curve, f"FD({args.curve_samples})")


def score(model: torch.nn.Module, d: Data, ref: torch.nn.Module, real: np.ndarray, args: argparse.Namespace) -> dict:
    xs = sample(model, len(real), seed=args.seed)
    fake = embed_all(ref, xs)
    precision, recall = precision_recall(real, fake, k=3)
    test = evaluate(model, d.test[:args.n_samples], batch_size=1000, seed=args.seed)
    return {"fd": frechet_distance(real, fake), "precision": precision, "recall": recall,
            "test_neg_elbo": -test["elbo"], "test_kl": test.get("kl"), "samples": xs[:64]}


def table(rows: dict, args: argparse.Namespace) -> str:
    lines = ["# Sharper samples: pixel likelihood vs perceptual loss vs VAE-GAN", "",
             f"Command: `python bench/bench_sharpness.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} (CPU)  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}", "",
             "Same conv encoder/decoder and wall-clock budget per model; FD = classifier Fréchet distance in the "
             "penultimate features of vaekit's reference CNN of each dataset (not Inception FID); precision/recall "
             "with k = 3; test -ELBO is the pixel likelihood bound (nats). Lower FD is better.", "",
             "| dataset | model | budget (min) | train examples | epochs | s | examples/s | test -ELBO | test KL | FD | precision | recall | samples |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for key in sorted(rows):
        r = rows[key]
        if "skipped" in r:
            notes.append(f"- {r['dataset']} {r['model']}: skipped ({r['skipped']})")
            continue
        beta = f" (beta {r['beta']:g})" if r.get("beta", 1.0) != 1.0 else ""
        kl = f"{r['test_kl']:.2f}" if r.get("test_kl") is not None else "-"
        lines.append(f"| {r['dataset']} | {r['model']}{beta} | {r['budget_min']} | {r['train_examples']} | {r['epochs']} | "
                     f"{r['seconds']:.0f} | {r['examples_per_s']:.0f} | {r['test_neg_elbo']:.2f} | {kl} | {r['fd']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | ![]({r['grid']}) |")
    feats = sorted({r["features"] for r in rows.values() if "features" in r})
    grids = ["", "## Samples side by side", "", "| dataset | " + " | ".join(MODEL_NAMES) + " |",
             "|---|" + "---|" * len(MODEL_NAMES)]
    for name in sorted({r["dataset"] for r in rows.values()}):
        cells = [f"![]({rows[f'{name}/{m}']['grid']}) FD {rows[f'{name}/{m}']['fd']:.2f}"
                 if "grid" in rows.get(f"{name}/{m}", {}) else "-" for m in MODEL_NAMES]
        grids.append(f"| {name} | " + " | ".join(cells) + " |")
    curves = []
    for key in sorted(rows):
        if rows[key].get("curve"):
            r = rows[key]
            pts = ", ".join(f"{m:g} min (epoch {e}): {fd:.1f}" for m, e, fd in r["curve"])
            curves.append(f"- {r['dataset']} {r['model']}: {pts}")
    if curves:
        n = sorted({rows[k]["curve_samples"] for k in rows if rows[k].get("curve")})
        curves = ["", f"## FD during training ({'/'.join(map(str, n))} samples per point; biased upward against "
                  f"the final rows' {args.n_samples})", ""] + curves
    return "\n".join(lines + [""] + notes + [""] + [f"- FD features: {f}" for f in feats] + curves + grids) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED, help="folder with mnist/ and fashion-mnist/ IDX files")
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--models", default=",".join(MODEL_NAMES))
    ap.add_argument("--budget-min", type=float, default=30.0, help="wall-clock training budget per model")
    ap.add_argument("--train-limit", type=int, default=0, help="only the first N training examples (smoke runs)")
    ap.add_argument("--n-samples", type=int, default=10000, help="samples and test examples scored")
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--hidden", default=None, help="conv channels, e.g. 32,64 (default: vaekit's)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--perceptual-weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beta", type=float, default=1.0,
                    help="the KL weight of every model run (rows record it; a probe of the rate's effect)")
    ap.add_argument("--gamma", type=float, default=None, help="VAE-GAN: --gamma (default: the model's)")
    ap.add_argument("--equilibrium", type=float, default=None, help="VAE-GAN: --equilibrium (default: the model's)")
    ap.add_argument("--margin", type=float, default=None, help="VAE-GAN: --margin (default: the model's)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the table, JSON and grids go")
    ap.add_argument("--curve-every-min", type=float, default=0.0,
                    help="score --curve-samples samples every this many minutes of training (not counted in the budget)")
    ap.add_argument("--curve-samples", type=int, default=2000)
    args = ap.parse_args()
    if args.hidden:
        args.hidden = [int(h) for h in args.hidden.split(",")]
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    store = results / "sharpness.json"
    rows = json.loads(store.read_text()) if store.exists() else {}
    for name in args.datasets.split(","):
        if not (args.data_dir / name).is_dir():
            print(f"skip {name}: no {args.data_dir / name}", file=sys.stderr)
            continue
        d = load(name, args)
        ref, meta, ref_dir = reference_feature_net(d, log=lambda line: print(line, file=sys.stderr))
        real = embed_all(ref, d.test.x[:args.n_samples])
        for kind in args.models.split(","):
            key = f"{name}/{kind}"
            if kind == "vaegan" and "vaegan" not in MODELS:
                rows[key] = {"dataset": name, "model": kind, "skipped": "--model vaegan is not registered yet"}
                continue
            print(f"{name} {kind}: training for at most {args.budget_min} min", file=sys.stderr)
            curve: list = []
            probe = fd_curve_probe(ref, real, args, curve) if args.curve_every_min > 0 else None
            model, timing = train_one(kind, name, d, args, probe)
            res = score(model, d, ref, real, args)
            grid = results / f"sharpness-{name}-{kind}.png"
            save_samples(grid, res.pop("samples"), kind=d.spec.kind, nrow=8)
            rows[key] = {"dataset": name, "model": kind, "beta": args.beta, "budget_min": args.budget_min,
                         "train_examples": len(d.train), **timing, **res, "grid": grid.name,
                         **({"curve": curve, "curve_samples": args.curve_samples} if curve else {}),
                         "features": describe(meta), "feature_net": str(ref_dir),
                         "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
            print(json.dumps({k: v for k, v in rows[key].items() if k not in ("command", "features")}), file=sys.stderr)
            store.write_text(json.dumps(rows, indent=1) + "\n")
            (results / "sharpness.md").write_text(table(rows, args))
    store.write_text(json.dumps(rows, indent=1) + "\n")
    (results / "sharpness.md").write_text(table(rows, args))
    print((results / "sharpness.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
