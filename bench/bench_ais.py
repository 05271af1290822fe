"""AIS against the K=5000 importance-sampled NLL on a trained MNIST VAE (issue 19, item 3).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_ais.py [--data-dir ../shared/data/mnist] [--epochs 20]
        [--n 100] [--steps 100,500] [--chains 16] [--leapfrog 10] [--k 5000] [--out bench/results/ais.md]

Model: the seed model, MLP 784-400-20 (ReLU), Bernoulli likelihood on grey-level MNIST, trained
here by vaekit for ``--epochs`` epochs (cached in bench/out/ais-vae-<epochs>, reused while its
files exist; vaekit's defaults otherwise). On the first ``--n`` test images, with the same weights:
- the importance-sampled NLL with K = ``--k`` samples from q(z|x) (``metrics.per_example_scores``);
- AIS (``vaekit.ais``) at each step count of ``--steps``, ``--chains`` counted chains per image;
- -ELBO (one z per image).
Both NLL estimates are upper bounds on -log p(x) in expectation and should agree within their
errors; the paired difference per image (AIS - IWAE) cancels the images' own spread, so its
standard error is the honest error bar of the comparison. AIS should sit below -ELBO.
A markdown section (command, machine, date, table) is appended to ``--out`` and one JSON object
is printed. A smoke run: ``--epochs 3 --n 50 --steps 100`` takes ~2-3 minutes on 2 CPU cores.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"
OUT = ROOT / "bench" / "out"


def trained_run(data_dir: Path, epochs: int) -> Path:
    """Train the seed model once into bench/out/ais-vae-<epochs> (reused while it exists)."""
    import vaekit

    out = OUT / f"ais-vae-{epochs}"
    if not (out / "model.safetensors").exists():
        t = time.perf_counter()
        vaekit.train("mnist", data_dir=str(data_dir), out=out, epochs=epochs, hidden=[400], latent_dim=20,
                     progress=False, evaluate_test=False, figures=False)
        print(f"trained {out.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return out


def paired(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean of a - b over images and its standard error."""
    d = (a - b).double()
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n", type=int, default=100, help="first N test images")
    p.add_argument("--steps", default="100,500", help="AIS temperatures, one or more (comma-separated)")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--k", type=int, default=5000, help="importance samples of the IWAE NLL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ais.md")
    a = p.parse_args()
    if not (a.data_dir / "t10k-images-idx3-ubyte.gz").exists():
        print(f"skipped: no MNIST files in {a.data_dir} (give --data-dir)", file=sys.stderr)
        return

    from vaekit.ais import ais_log_px
    from vaekit.apps.common import open_run, run_inputs
    from vaekit.metrics import per_example_scores

    run = open_run(trained_run(a.data_dir, a.epochs), device="cpu")
    x = run_inputs(run, split="test", data_dir=str(a.data_dir), limit=a.n)
    t = time.perf_counter()
    iw = per_example_scores(run.model, x, kind="nll", iw_samples=a.k, seed=a.seed).double()
    iw_s = time.perf_counter() - t
    neg_elbo = per_example_scores(run.model, x, kind="elbo", seed=a.seed).double()
    rows = []
    for steps in (int(s) for s in a.steps.split(",")):
        t = time.perf_counter()
        r = ais_log_px(run.model, x, steps=steps, chains=a.chains, leapfrog=a.leapfrog, seed=a.seed)
        secs = time.perf_counter() - t
        ais = -r["log_px"]
        diff, diff_se = paired(ais, iw)
        below, below_se = paired(ais, neg_elbo)
        rows.append({"steps": steps, "ais_nll": float(ais.mean()), "mc_std_err": float(r["mc_std_err"].pow(2).sum().sqrt() / len(ais)),
                     "ais_minus_iwae": diff, "ais_minus_iwae_se": diff_se, "ais_minus_neg_elbo": below,
                     "ais_minus_neg_elbo_se": below_se, "accept": float(r["accept"].mean()), "seconds": secs})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    res = {"date": time.strftime("%Y-%m-%d"), "epochs": a.epochs, "n": len(iw), "k": a.k, "chains": a.chains,
           "leapfrog": a.leapfrog, "iwae_nll": float(iw.mean()), "iwae_seconds": iw_s, "neg_elbo": float(neg_elbo.mean()),
           "ais": rows, "threads": torch.get_num_threads(), "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__}
    write_markdown(a, res)
    print(json.dumps(res))


def write_markdown(a: argparse.Namespace, res: dict) -> None:
    cmd = "OMP_NUM_THREADS={} .venv/bin/python bench/bench_ais.py {}".format(
        os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv[1:]))
    lines = [f"\n## {res['date']}: {res['n']} MNIST test images, seed model after {res['epochs']} epochs\n",
             f"Command: `{cmd}`  ",
             f"Machine: {res['machine']}, torch {res['torch']} ({res['threads']} threads).  ",
             f"IWAE K={res['k']}: NLL {res['iwae_nll']:.3f} nats ({res['iwae_seconds']:.0f} s); "
             f"-ELBO {res['neg_elbo']:.3f}. AIS: {res['chains']} chains, {res['leapfrog']} leapfrog steps.\n",
             "| AIS steps | AIS NLL | MC s.e. | AIS - IWAE (paired) | AIS - (-ELBO) | acceptance | seconds |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["ais"]:
        lines.append(f"| {r['steps']} | {r['ais_nll']:.3f} | {r['mc_std_err']:.3f} | "
                     f"{r['ais_minus_iwae']:+.3f} ± {r['ais_minus_iwae_se']:.3f} | "
                     f"{r['ais_minus_neg_elbo']:+.3f} ± {r['ais_minus_neg_elbo_se']:.3f} | {r['accept']:.2f} | {r['seconds']:.0f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if not a.out.exists():
        a.out.write_text("# AIS against the importance-sampled NLL (MNIST, seed model)\n\nWritten by bench/bench_ais.py.\n")
    with a.out.open("a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
