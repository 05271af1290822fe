"""Does the aggregated posterior match the prior? The adversarial autoencoder (Makhzani et al. 2015)
against the VAE on MNIST, with the same MLP encoder/decoder and the same wall-clock budget.

Four runs: the VAE and the AAE with p(z) = N(0, I) at --latent-dim (20), and both again with the
paper's mixture prior, ``--prior gmm-ring`` (10 Gaussians on a ring), at a 2-D latent, where the
codes can be drawn. Every model trains epoch by epoch until the next epoch would pass
``--budget-min`` (the first always runs). Reported per run:

- prior MMD: the unbiased MMD^2 between the codes of the first --n-samples test images and as many
  prior draws (``vaekit evaluate --prior-mmd``: Gaussian kernels at 0.25-4x the pooled median
  distance; AAE codes are mu for a deterministic encoder, z ~ q(z|x) for a Gaussian one; VAE codes
  are z ~ q(z|x), whose mixture is the VAE's aggregated posterior). Target: the AAE's below the VAE's.
- samples (decoder means of prior draws) scored like ``evaluate --sample-quality``: classifier
  Frechet distance (not Inception FID) and precision/recall (k = 3) in the penultimate features of
  vaekit's cached reference classifier of MNIST;
- reconstruction: -log p(x | z = mu) on the test images (nats; the same quantity for every model),
  and the test -ELBO where the model has one (VAE; AAE with --encoder gaussian);
- epochs, seconds, training examples per second.

For the ring runs it saves bench/results/aae-codes-<model>.png: the 2-D codes of the test images
coloured by class over grey prior draws. Results: bench/results/aae.md (rows accumulate in
bench/results/aae.json, so runs can be made in separate sessions with --runs).

    python bench/bench_aae.py [--budget-min 30] [--data-dir ../shared/data]
    python bench/bench_aae.py --budget-min 0.2 --train-limit 3000 --n-samples 1000 \\
        --results bench/out/aae-smoke                                                       # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _budget import mnist, train_within  # noqa: E402
from vaekit.apps.feature_net import reference_feature_net
from vaekit.apps.generate import sample
from vaekit.apps.sample_quality import describe, embed_all, frechet_distance, precision_recall
from vaekit.data.datasets import Data
from vaekit.figures import save_samples
from vaekit.metrics import evaluate
from vaekit.report import prior_code_mmd

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("VAEKIT_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
RESULTS = HERE / "results"
#: run name -> (model, prior, 2-D latent?)
RUNS = {"vae": ("vae", "standard-normal", False), "aae": ("aae", "standard-normal", False),
        "vae-ring": ("vae", "gmm-ring", True), "aae-ring": ("aae", "gmm-ring", True)}


def load(args: argparse.Namespace) -> Data:
    return mnist(args.data_dir, args.train_limit)


def train_one(name: str, d: Data, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    model, prior, two_d = RUNS[name]
    opts = dict(source="mnist", model=model, prior=prior, arch="mlp", hidden=[args.hidden],
                latent_dim=2 if two_d else args.latent_dim, epochs=10_000, batch_size=args.batch_size, lr=args.lr,
                seed=args.seed, device="cpu")
    if model == "aae":
        opts["encoder"] = args.encoder
        opts["phases"] = args.phases
        if args.critic_hidden:
            opts["critic_hidden"] = args.critic_hidden
        if args.adversarial_weight != 1.0:
            opts["adversarial_weight"] = args.adversarial_weight
    return train_within(opts, d, args.budget_min * 60.0, args.seed)


@torch.no_grad()
def recon_at_mean(model: torch.nn.Module, x: torch.Tensor, batch: int = 1000) -> float:
    """Mean -log p(x | z = mu) over x: the same reconstruction for every model (nats)."""
    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        mu, _ = model.encode(xb)
        total += float(-model.likelihood.log_prob(model.decoder(mu), xb).sum())
    return total / len(x)


@torch.no_grad()
def save_codes(path: Path, model: torch.nn.Module, test, title: str, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(seed)
    codes = model.codes(test.x) if callable(getattr(model, "codes", None)) else None
    if codes is None:
        mu, logvar = model.encode(test.x)
        codes = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    prior = model.prior.sample(len(codes))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(prior[:, 0], prior[:, 1], s=2, c="0.8", label="prior draws")
    sc = ax.scatter(codes[:, 0], codes[:, 1], s=2, c=test.y.numpy(), cmap="tab10", vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="class")
    lim = float(np.percentile(np.abs(torch.cat([codes, prior]).numpy()), 99.5)) * 1.1
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score(name: str, model: torch.nn.Module, d: Data, ref: torch.nn.Module, real: np.ndarray,
          args: argparse.Namespace) -> dict:
    test = d.test[:args.n_samples]
    xs = sample(model, len(real), seed=args.seed)
    fake = embed_all(ref, xs)
    precision, recall = precision_recall(real, fake, k=3)
    ev = evaluate(model, test, batch_size=1000, seed=args.seed)
    mmd = prior_code_mmd(model, test, seed=args.seed)
    out = {"prior_mmd": mmd["prior_mmd"], "mmd_n": mmd["prior_mmd_n"], "fd": frechet_distance(real, fake),
           "precision": precision, "recall": recall, "recon_at_mean": recon_at_mean(model, test.x),
           "test_neg_elbo": -ev["elbo"] if "elbo" in ev else None, "samples": xs[:64]}
    if RUNS[name][2]:
        out["codes"] = f"aae-codes-{name}.png"
        save_codes(args.results / out["codes"], model, test,
                   f"{name}: codes of {len(test.x)} test images (prior MMD {mmd['prior_mmd']:.4f})", args.seed)
    return out


def table(rows: dict) -> str:
    lines = ["# Aggregated posterior vs prior: AAE and VAE on MNIST", "",
             f"Command: `python bench/bench_aae.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} (CPU)  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}", "",
             "Same MLP encoder/decoder and wall-clock budget per model. Prior MMD: unbiased MMD^2 between the test "
             "codes and as many prior draws (Gaussian kernels at 0.25-4x the median distance; lower = the aggregated "
             "posterior is closer to p(z)). FD = classifier Fréchet distance in vaekit's reference MNIST CNN (not "
             "Inception FID), precision/recall k = 3. Recon = -log p(x | z = mu), nats.", "",
             "| run | model | prior | latent | encoder | budget (min) | train ex. | epochs | s | examples/s | prior MMD "
             "| FD | precision | recall | recon | test -ELBO | critic acc | samples | codes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in [k for k in RUNS if k in rows]:
        r = rows[key]
        elbo = "" if r.get("test_neg_elbo") is None else f"{r['test_neg_elbo']:.2f}"
        acc = "" if r.get("critic_acc") is None else f"{r['critic_acc']:.3f}"
        codes = f"![]({r['codes']})" if r.get("codes") else ""
        lines.append(f"| {key} | {r['model']} | {r['prior']} | {r['latent_dim']} | {r.get('encoder', 'gaussian')} | "
                     f"{r['budget_min']} | {r['train_examples']} | {r['epochs']} | {r['seconds']:.0f} | "
                     f"{r['examples_per_s']:.0f} | {r['prior_mmd']:.4f} | {r['fd']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['recon_at_mean']:.2f} | {elbo} | {acc} | ![]({r['grid']}) | {codes} |")
    feats = sorted({r["features"] for r in rows.values() if "features" in r})
    return "\n".join(lines + [""] + [f"- FD features: {f}" for f in feats]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=SHARED, help="folder with mnist/ IDX files")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"any of {', '.join(RUNS)}")
    ap.add_argument("--budget-min", type=float, default=30.0, help="wall-clock training budget per model")
    ap.add_argument("--train-limit", type=int, default=0, help="only the first N training examples (smoke runs)")
    ap.add_argument("--n-samples", type=int, default=10000, help="samples and test examples scored (FD, MMD)")
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--latent-dim", type=int, default=20, help="latent size of the standard-normal runs")
    ap.add_argument("--encoder", default="deterministic", help="the AAE's encoder: deterministic | gaussian")
    ap.add_argument("--phases", default="paper", help="the AAE's schedule: paper | joint (vaekit train --phases)")
    ap.add_argument("--critic-hidden", default=None, help="the AAE's discriminator widths (default vaekit's: 1000,1000)")
    ap.add_argument("--adversarial-weight", type=float, default=1.0,
                    help="the AAE's generator-loss weight in the joint update (vaekit train --adversarial-weight; needs --phases joint)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the table, JSON and figures go")
    args = ap.parse_args()
    if args.critic_hidden:
        args.critic_hidden = [int(h) for h in args.critic_hidden.split(",")]
    unknown = [r for r in args.runs.split(",") if r not in RUNS]
    if unknown:
        ap.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    if not (args.data_dir / "mnist").is_dir():
        print(f"no MNIST at {args.data_dir / 'mnist'}; give --data-dir", file=sys.stderr)
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    store = args.results / "aae.json"
    rows = json.loads(store.read_text()) if store.exists() else {}
    d = load(args)
    ref, meta, ref_dir = reference_feature_net(d, log=lambda line: print(line, file=sys.stderr))
    real = embed_all(ref, d.test.x[:args.n_samples])
    for name in args.runs.split(","):
        model_name, prior, two_d = RUNS[name]
        print(f"{name}: training for at most {args.budget_min} min", file=sys.stderr)
        model, timing = train_one(name, d, args)
        res = score(name, model, d, ref, real, args)
        grid = f"aae-samples-{name}.png"
        save_samples(args.results / grid, res.pop("samples"), kind=d.spec.kind, nrow=8)
        rows[name] = {"model": model_name, "prior": prior, "latent_dim": 2 if two_d else args.latent_dim,
                      **({"encoder": args.encoder, "phases": args.phases, "adversarial_weight": args.adversarial_weight}
                         if model_name == "aae" else {}), "budget_min": args.budget_min,
                      "train_examples": len(d.train), **timing, **res, "grid": grid, "features": describe(meta),
                      "feature_net": str(ref_dir), "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
        print(json.dumps({k: v for k, v in rows[name].items() if k not in ("command", "features")}), file=sys.stderr)
        store.write_text(json.dumps(rows, indent=1) + "\n")
        (args.results / "aae.md").write_text(table(rows))
    print((args.results / "aae.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
