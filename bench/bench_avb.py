"""Adversarial variational Bayes (Mescheder et al. 2017) against the Gaussian VAE: (a) MNIST with an
8-dimensional latent, the same decoder (MLP, ``--hidden``) and the same wall-clock budget per model,
scored by the AIS log-likelihood of the decoder and prior (Wu et al. 2017; the encoder plays no part,
so the implicit and the Gaussian encoder's models are compared on one footing), with error bars, and
by the sample Frechet distance in vaekit's reference classifier; (b) the toy problem with a known
bimodal posterior (tests/avb_toy.py): how far q(z|x)'s mean and variance are from the exact
posterior's, for the Gaussian encoder and for AVB with and without adaptive contrast.

The paper reports a clear gain of AVB with adaptive contrast over the VAE at 8 latent dimensions;
the issue's target is "at least as good". The AIS NLL difference to the VAE is paired (the same
test images), so its standard error is that of the per-example differences; the Monte Carlo error
of each mean (``ais_nll_mc_std_err``) is listed too. AVB's "test -ELBO" is its adversary's
estimate, not a bound, and is shown for information only.

Rows accumulate in bench/results/avb.json (``--runs vae`` and ``--runs avb`` may run in separate
sessions); the table is bench/results/avb.md. ``--critic-steps K`` (K > 1) trains AVB with K adversary
updates per encoder and decoder update; its rows are named avb-kK beside the others.

    python bench/bench_avb.py --data-dir ../shared/data [--budget-min 30]
    python bench/bench_avb.py --budget-min 0.3 --train-limit 3000 --ais-n 10 --ais-steps 20 \
        --n-samples 500 --toy-steps 300 --results bench/out/avb-smoke                         # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the toy problem lives beside AVB's tests
import avb_toy  # noqa: E402
from _budget import mnist, train_within  # noqa: E402
from vaekit.ais import ais_log_px  # noqa: E402
from vaekit.apps.feature_net import reference_feature_net  # noqa: E402
from vaekit.apps.generate import sample  # noqa: E402
from vaekit.apps.sample_quality import describe, embed_all, frechet_distance, precision_recall  # noqa: E402
from vaekit.data.datasets import Data  # noqa: E402
from vaekit.metrics import evaluate  # noqa: E402

SHARED = Path(os.environ.get("VAEKIT_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"
RUNS = {"vae": ("vae", None), "avb": ("avb", True), "avb-noac": ("avb", False)}


def load(args: argparse.Namespace) -> Data:
    return mnist(args.data_dir, args.train_limit)


def train_one(name: str, d: Data, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    model, ac = RUNS[name]
    opts = dict(source="mnist", model=model, arch=args.arch, latent_dim=args.latent_dim, epochs=10_000,
                batch_size=args.batch_size, lr=args.lr, seed=args.seed, device="cpu")
    if args.hidden:
        opts["hidden"] = args.hidden
    if model == "avb":
        opts["adaptive_contrast"] = ac
        if args.critic_hidden:
            opts["critic_hidden"] = args.critic_hidden
        if args.critic_steps > 1:
            opts["critic_steps"] = args.critic_steps
    return train_within(opts, d, args.budget_min * 60.0, args.seed)


def score(model: torch.nn.Module, d: Data, ref: torch.nn.Module, real: np.ndarray, args: argparse.Namespace) -> dict:
    test = d.test[:args.ais_n]
    t = ais_log_px(model, test, steps=args.ais_steps, chains=args.ais_chains, seed=args.seed)
    nll = (-t["log_px"]).double()
    xs = sample(model, len(real), seed=args.seed)
    fake = embed_all(ref, xs)
    precision, recall = precision_recall(real, fake, k=3)
    elbo = evaluate(model, d.test[:args.n_samples], seed=args.seed)
    return {"ais_nll": float(nll.mean()), "ais_nll_std_err": float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0,
            "ais_nll_mc_std_err": float(t["mc_std_err"].pow(2).sum().sqrt() / len(nll)),
            "ais_accept_rate": float(t["accept"].mean()), "per_example_nll": nll.tolist(),
            "fd": frechet_distance(real, fake), "precision": precision, "recall": recall,
            "test_neg_elbo": -elbo["elbo"], "active_units": elbo["active_units"]}


def toy_rows(args: argparse.Namespace) -> dict:
    """(b): moment errors on the bimodal toy, each model trained the same way (tests/avb_toy.py)."""
    out = {}
    for name, (kind, ac) in RUNS.items():
        t0 = time.perf_counter()
        m = avb_toy.train_toy(kind, steps=args.toy_steps, seed=args.seed, adaptive_contrast=bool(ac))
        err = avb_toy.moment_errors(m)
        per_x = {str(x): {"q": avb_toy.q_moments(m, x), "posterior": avb_toy.posterior_moments(x)} for x in avb_toy.TEST_X}
        out[name] = {**err, "steps": args.toy_steps, "seconds": round(time.perf_counter() - t0, 1), "per_x": per_x}
        print(f"toy {name}: {json.dumps(err)}", file=sys.stderr)
    return out


def table(rows: dict, toy: dict | None) -> str:
    lines = ["# AVB against the Gaussian VAE", "",
             f"Command: `python bench/bench_avb.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} (CPU)  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}", "",
             "## (a) MNIST, the same decoder and wall-clock budget per model", "",
             "AIS NLL: -log p(x) by annealed importance sampling on the decoder and prior (nats, lower is better; "
             "± standard error over test images; MC: the chains' own error of the mean); Δ vs VAE: paired over the same "
             "images. FD: classifier Fréchet distance of samples (not Inception FID). Test -ELBO of AVB is its "
             "adversary's estimate, not a bound.", "",
             "| model | latent | budget (min) | epochs | examples/s | AIS NLL | MC | Δ vs VAE | test -ELBO | FD | precision | recall | critic acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = rows.get("vae")
    def order(n: str) -> tuple[int, int]:
        base, _, k = n.partition("-k")
        return list(RUNS).index(base), int(k or 1)

    for name in sorted(rows, key=order):
        r = rows.get(name)
        if r is None:
            continue
        delta = "—"
        if base is not None and name != "vae" and len(base["per_example_nll"]) == len(r["per_example_nll"]):
            diff = np.array(r["per_example_nll"]) - np.array(base["per_example_nll"])
            se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
            delta = f"{diff.mean():+.2f} ± {se:.2f}"
        acc = f"{r['critic_acc']:.3f}" if r.get("critic_acc") is not None else "—"
        lines.append(f"| {name} | {r['latent_dim']} | {r['budget_min']} | {r['epochs']} | {r['examples_per_s']:.0f} | "
                     f"{r['ais_nll']:.2f} ± {r['ais_nll_std_err']:.2f} (n={r['ais_n']}, T={r['ais_steps']}) | "
                     f"{r['ais_nll_mc_std_err']:.2f} | {delta} | {r['test_neg_elbo']:.2f} | {r['fd']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {acc} |")
    feats = sorted({r["features"] for r in rows.values() if "features" in r})
    lines += [""] + [f"- FD features: {f}" for f in feats]
    if toy:
        lines += ["", "## (b) The bimodal toy posterior (tests/avb_toy.py)", "",
                  f"z ~ N(0, 1), x | z ~ N(|z|, {avb_toy.SIGMA}^2), decoder fixed; errors averaged over x in "
                  f"{list(avb_toy.TEST_X)} (exact posterior moments by numerical integration; q's from 4000 draws).", "",
                  "| encoder | steps | mean error | variance error | q (mean, var) at x = 2 | posterior at x = 2 |",
                  "|---|---|---|---|---|---|"]
        for name, r in toy.items():
            q, p = r["per_x"]["2.0"]["q"], r["per_x"]["2.0"]["posterior"]
            lines.append(f"| {name} | {r['steps']} | {r['mean_err']:.3f} | {r['var_err']:.3f} | "
                         f"({q[0]:.2f}, {q[1]:.2f}) | ({p[0]:.2f}, {p[1]:.2f}) |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED, help="folder with mnist/ IDX files")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"any of {', '.join(RUNS)}")
    ap.add_argument("--budget-min", type=float, default=30.0, help="wall-clock training budget per model")
    ap.add_argument("--train-limit", type=int, default=0, help="only the first N training examples (smoke runs)")
    ap.add_argument("--arch", default="mlp", help="mlp | conv (the same for every model)")
    ap.add_argument("--hidden", default=None, help="MLP widths or conv channels, e.g. 400 (default: vaekit's)")
    ap.add_argument("--critic-hidden", default=None, help="AVB's adversary widths (default vaekit's: 256,256)")
    ap.add_argument("--critic-steps", type=int, default=1,
                    help="AVB: adversary updates per encoder/decoder update (a row named avb-kK when K > 1)")
    ap.add_argument("--latent-dim", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ais-n", type=int, default=1000, help="test images scored by AIS")
    ap.add_argument("--ais-steps", type=int, default=500)
    ap.add_argument("--ais-chains", type=int, default=16)
    ap.add_argument("--n-samples", type=int, default=10000, help="samples and test images for FD / the ELBO")
    ap.add_argument("--toy-steps", type=int, default=3000, help="(b): training steps on the toy (0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the table and JSON go")
    args = ap.parse_args()
    for key in ("hidden", "critic_hidden"):
        if getattr(args, key):
            setattr(args, key, [int(h) for h in getattr(args, key).split(",")])
    if args.critic_steps < 1:
        ap.error("--critic-steps must be at least 1")
    runs = [r for r in args.runs.split(",") if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        ap.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    args.results.mkdir(parents=True, exist_ok=True)
    store = args.results / "avb.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    rows, toy = saved.get("mnist", {}), saved.get("toy")

    def write() -> None:
        store.write_text(json.dumps({"mnist": rows, "toy": toy}, indent=1) + "\n")
        (args.results / "avb.md").write_text(table(rows, toy))

    if args.toy_steps:
        with torch.enable_grad():
            toy = toy_rows(args)
        write()
    if not (args.data_dir / "mnist").is_dir():
        print(f"no MNIST at {args.data_dir / 'mnist'}; give --data-dir (part (a) skipped)", file=sys.stderr)
    else:
        d = load(args)
        ref, meta, ref_dir = reference_feature_net(d, log=lambda line: print(line, file=sys.stderr))
        real = embed_all(ref, d.test.x[:args.n_samples])
        for name in runs:
            print(f"mnist {name}: training for at most {args.budget_min} min", file=sys.stderr)
            model, timing = train_one(name, d, args)  # Trainer.fit enables grad itself
            res = score(model, d, ref, real, args)
            key = f"{name}-k{args.critic_steps}" if RUNS[name][0] == "avb" and args.critic_steps > 1 else name
            rows[key] = {"model": name, "critic_steps": args.critic_steps if RUNS[name][0] == "avb" else None,
                         "latent_dim": args.latent_dim, "budget_min": args.budget_min,
                         "train_examples": len(d.train), **timing, **res, "ais_n": min(args.ais_n, len(d.test)),
                         "ais_steps": args.ais_steps, "features": describe(meta), "feature_net": str(ref_dir),
                         "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
            print(json.dumps({k: v for k, v in rows[key].items() if k not in ("command", "features", "per_example_nll")}),
                  file=sys.stderr)
            write()
    write()
    print((args.results / "avb.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
