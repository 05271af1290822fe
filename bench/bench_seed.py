"""Speed and quality of the seed model: MLP 784-400-20, Bernoulli, grey-level MNIST, Adam 1e-3,
batch 128 (the PyTorch VAE example's settings), trained with vaekit.

    .venv/bin/python bench/bench_seed.py --epochs 10 [--precision highest|medium] [--e2e] [--nll 5000]

Reports, as one JSON object (also written to bench/out/seed-<precision>.json):
- per epoch: training samples/s (the training loop only), cumulative training seconds and the
  test -ELBO in nats (one z sample per image, fixed noise, all 10,000 test images);
- with --e2e: wall time of `vaekit train --data mnist --epochs 5` as a user runs it (start-up,
  data loading, training, final test evaluation and figures);
- with --nll K: wall time and value of the importance-sampled NLL with K samples on the full test set.
Training uses all 60,000 training images (no validation split), as the example does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def train_seed(args: argparse.Namespace) -> dict:
    import vaekit
    from vaekit.metrics import loss_terms
    from vaekit.numerics import float_mode

    rows: list[dict] = []
    train_s = 0.0

    def on_epoch(trainer, rec: dict) -> None:
        nonlocal train_s
        train_s += rec["epoch_time_s"]  # the training loop only; this evaluation is not counted
        with float_mode("highest"):  # evaluate in exact fp32 whatever the training precision
            t = loss_terms(trainer.eval_model, trainer.data.test.x, batch_size=1000, seed=123)
        rows.append({"epoch": rec["epoch"] + 1, "samples_per_s": round(rec["samples_per_s"]),
                     "train_s_cumulative": round(train_s, 2), "test_neg_elbo": round(-t["elbo"], 2),
                     "test_kl": round(t["kl"], 2)})
        print(json.dumps(rows[-1]), file=sys.stderr)

    t0 = time.perf_counter()
    run = vaekit.train("mnist", data_dir=str(args.data_dir), out=None, progress=False, evaluate_test=False,
                       callbacks=[on_epoch], hidden=[400], latent_dim=20, likelihood="bernoulli", lr=1e-3,
                       batch_size=128, epochs=args.epochs, val_fraction=0.0, seed=args.seed,
                       matmul_precision=args.precision, device="cpu")
    total = time.perf_counter() - t0
    sps = [r["samples_per_s"] for r in rows]
    return {"epochs": rows, "train_samples_per_s_mean": round(sum(sps) / len(sps)),
            "train_samples_per_s_median": sorted(sps)[len(sps) // 2], "python_api_wall_s": round(total, 1),
            "final_test_neg_elbo": rows[-1]["test_neg_elbo"], "history_len": len(run.history)}


def e2e(args: argparse.Namespace, out_dir: Path) -> dict:
    run_dir = out_dir / f"e2e-{os.getpid()}"
    cmd = [str(ROOT / ".venv" / "bin" / "vaekit"), "train", "--data", "mnist", "--data-dir", str(args.data_dir),
           "--epochs", "5", "--out", str(run_dir), "--quiet", "--json", "--matmul-precision", args.precision]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    out = json.loads(res.stdout)
    subprocess.run(["rm", "-rf", str(run_dir)], check=False)
    return {"command": " ".join(cmd[1:]).replace(str(run_dir), "RUN"), "wall_s": round(wall, 1),
            "test_neg_elbo": round(-out["test"]["elbo"], 2)}


def nll(args: argparse.Namespace, out_dir: Path) -> dict:
    run_dir = out_dir / f"nll-{os.getpid()}"
    vk = str(ROOT / ".venv" / "bin" / "vaekit")
    subprocess.run([vk, "train", "--data", "mnist", "--data-dir", str(args.data_dir), "--epochs", str(args.epochs),
                    "--out", str(run_dir), "--quiet", "--matmul-precision", args.precision], check=True,
                   capture_output=True)
    t0 = time.perf_counter()
    res = subprocess.run([vk, "evaluate", str(run_dir), "--data-dir", str(args.data_dir), "--iw-samples",
                          str(args.nll), "--json"], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    out = json.loads(res.stdout)
    subprocess.run(["rm", "-rf", str(run_dir)], check=False)
    return {"iw_samples": args.nll, "examples": out["n"], "wall_s": round(wall, 1), "nll": round(out["nll"], 2),
            "neg_elbo": round(-out["elbo"], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="highest", choices=["highest", "high", "medium"])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--e2e", action="store_true", help="also time `vaekit train --epochs 5` end to end")
    p.add_argument("--nll", type=int, default=0, help="also time the K-sample test NLL")
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args()
    if not (args.data_dir / "mnist").exists() and not (args.data_dir / "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"bench_seed: MNIST IDX files not found under {args.data_dir}; pass --data-dir")
    import torch

    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {"machine": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "precision": args.precision}
    if not args.skip_train:
        res["train"] = train_seed(args)
    if args.e2e:
        res["e2e_5_epochs"] = e2e(args, out_dir)
    if args.nll:
        res["nll"] = nll(args, out_dir)
    (out_dir / f"seed-{args.precision}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
