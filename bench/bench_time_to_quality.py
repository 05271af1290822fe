"""Time to quality: training seconds until the seed model reaches test -ELBO <= 100 nats,
vaekit against pythae 0.1.2, in one script run under the same conditions.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_time_to_quality.py [--target 100] [--threads 1]
        [--vaekit-epochs 80] [--pythae-max-epochs 100] [--out bench/out/time_to_quality.json]

Model: the seed model, MLP 784-400-20 (ReLU), Bernoulli likelihood on grey-level MNIST (pixel/255,
not binarized), all 60,000 training images (no validation split), CPU.
- vaekit: its best settings for this race (chosen by trying, see bench/results/time_to_quality.md):
  Adam lr 3e-3 with a cosine decay over ``--vaekit-epochs`` to 1% of it, batch 128, data-dependent
  decoder-bias init, the hand-derived fast step and the evaluated weights being the moving average
  of the trained ones (vaekit's defaults).
- pythae: the seed tutorial's settings, Adam 1e-3, batch 128 (``bench/pythae_baseline.py``, run in
  its own venv bench/.envs/pythae, created on first use), stopped at the target or after
  ``--pythae-max-epochs``.
Both: after every epoch the test -ELBO is measured on all 10,000 test images with one z sample
per image (nats per example, same estimator on both sides). The clock counts only the training
loops (shuffling, batching, forward, backward, optimizer): evaluation, start-up and data loading
are excluded on both sides. Both run with ``--threads`` torch threads (vaekit in this process,
pythae with OMP_NUM_THREADS in its subprocess), one after the other.
Prints one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"
VAEKIT_SETTINGS = dict(hidden=[400], latent_dim=20, activation="relu", likelihood="bernoulli", lr=3e-3,
                       lr_schedule="cosine", lr_min_factor=0.01, batch_size=128)


class _Reached(Exception):
    """Raised from the epoch callback to end vaekit's training at the target."""


def run_vaekit(args: argparse.Namespace) -> dict:
    """Train with VAEKIT_SETTINGS until test -ELBO <= target (or --vaekit-epochs); per-epoch rows."""
    import torch

    import vaekit
    from vaekit.metrics import loss_terms

    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    train_s = 0.0

    def on_epoch(trainer, rec: dict) -> None:
        nonlocal train_s
        train_s += rec["epoch_time_s"]  # the training loop only
        t = loss_terms(trainer.eval_model, trainer.data.test.x, batch_size=1000, seed=123)
        rows.append({"epoch": rec["epoch"] + 1, "train_s_cumulative": round(train_s, 2),
                     "test_neg_elbo": round(-t["elbo"], 3)})
        print("vaekit", json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if -t["elbo"] <= args.target:
            raise _Reached

    try:
        vaekit.train("mnist", data_dir=str(args.data_dir), out=None, progress=False, evaluate_test=False,
                     callbacks=[on_epoch], epochs=args.vaekit_epochs, val_fraction=0.0, seed=args.seed,
                     device="cpu", **VAEKIT_SETTINGS)
    except _Reached:
        pass
    reached = rows[-1]["test_neg_elbo"] <= args.target
    return {"settings": {**VAEKIT_SETTINGS, "epochs_in_schedule": args.vaekit_epochs}, "per_epoch": rows,
            "reached": reached, "epochs_to_target": rows[-1]["epoch"] if reached else None,
            "time_to_target_s": rows[-1]["train_s_cumulative"] if reached else None,
            "train_s_per_epoch": round(rows[-1]["train_s_cumulative"] / len(rows), 2)}


def run_pythae(args: argparse.Namespace, out_dir: Path) -> dict:
    """bench/pythae_baseline.py with --stop-at target, OMP_NUM_THREADS = --threads."""
    out = out_dir / "time_to_quality_pythae.json"
    cmd = [sys.executable, str(ROOT / "bench" / "pythae_baseline.py"), "--epochs", str(args.pythae_max_epochs),
           "--stop-at", str(args.target), "--data-dir", str(args.data_dir), "--seed", str(args.seed), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    res = json.loads(out.read_text())
    cum, rows = 0.0, []
    for e in res["per_epoch"]:
        cum += e["train_s"]
        rows.append({"epoch": e["epoch"], "train_s_cumulative": round(cum, 2),
                     "test_neg_elbo": round(e["test_neg_elbo"], 3)})
    t = res["time_to_neg_elbo_100_s"] if args.target == 100.0 else None
    reached = rows[-1]["test_neg_elbo"] <= args.target
    return {"settings": {"lr": 1e-3, "batch_size": 128, "optimizer": "Adam", "max_epochs": args.pythae_max_epochs},
            "per_epoch": rows, "reached": reached, "epochs_to_target": rows[-1]["epoch"] if reached else None,
            "time_to_target_s": (t if t is not None else rows[-1]["train_s_cumulative"]) if reached else None,
            "train_s_per_epoch": round(cum / len(rows), 2), "torch_num_threads": res.get("torch_num_threads")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, default=100.0, help="test -ELBO to reach, nats")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vaekit-epochs", type=int, default=80, help="length of vaekit's cosine schedule")
    p.add_argument("--pythae-max-epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--skip-pythae", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "time_to_quality.json")
    args = p.parse_args()
    if not (args.data_dir / "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"bench_time_to_quality: MNIST IDX files not found in {args.data_dir}; pass --data-dir")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    res: dict = {"target_neg_elbo": args.target, "threads": args.threads, "date": time.strftime("%Y-%m-%d"),
                 "clock": "training loops only; per-epoch test evaluation excluded on both sides"}
    res["vaekit"] = run_vaekit(args)
    if not args.skip_pythae:
        res["pythae"] = run_pythae(args, args.out.parent)
        v, q = res["vaekit"], res["pythae"]
        if v["reached"]:
            # pythae never reaching the target bounds the ratio by its whole training time
            denom = q["time_to_target_s"] if q["reached"] else q["per_epoch"][-1]["train_s_cumulative"]
            res["ratio_vaekit_over_pythae"] = round(v["time_to_target_s"] / denom, 3)
            res["ratio_is_upper_bound"] = not q["reached"]
    args.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
