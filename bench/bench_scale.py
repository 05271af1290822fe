"""Data-parallel scaling on this machine: training examples per second of the seed model (MLP
784-400-20, Bernoulli, grey-level MNIST, Adam 1e-3, global batch 128) with 1 and 2 processes.

    .venv/bin/python bench/bench_scale.py [--epochs 2] [--procs 1,2] [--data-dir ../shared/data/mnist] [--device cpu]

Each configuration is one ``vaekit train --nproc N ... --json`` as a user runs it; the figure is
its ``train_samples_per_s`` (the training loop only: global examples per second of wall time,
averaged over the epochs; start-up, data loading, validation and the final evaluation excluded).
With N processes on CPUs each gets cores // N threads (vaekit's launcher sets OMP_NUM_THREADS),
so the one-process row uses all cores too. Prints a markdown table (and writes it as JSON to
bench/out/scale.json) with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_seed import cpu_name  # noqa: E402  (the machine line every bench writes)
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"


def run(nproc: int, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-m", "vaekit", "train", "--data", "mnist", "--data-dir", str(args.data_dir),
           "--device", args.device, "--epochs", str(args.epochs), "--batch-size", "128", "--hidden", "400",
           "--latent-dim", "20", "--val-fraction", "0", "--seed", "0", "--checkpoint-every", "0",
           "--nproc", str(nproc), "--out", str(out), "--quiet", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the launcher shares the cores out
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"nproc": nproc, "samples_per_s": res["train_samples_per_s"], "epoch_s": [r["epoch_time_s"] for r in recs],
            "test_elbo": res["test"].get("elbo"), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--procs", default="1,2", help="comma-separated process counts")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not args.data_dir.exists():
        raise SystemExit(f"MNIST not found in {args.data_dir}; give --data-dir")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(p) for p in args.procs.split(",")]:
            rows.append(run(n, args, Path(tmp) / f"run{n}"))
    base = rows[0]["samples_per_s"]
    machine = f"{cpu_name()}, {os.cpu_count()} logical CPUs"
    print(f"Seed model (MLP 784-400-20, global batch 128), {args.epochs} epochs of MNIST on {args.device}; "
          f"{machine}; {time.strftime('%Y-%m-%d')}\n")
    print("| processes | examples/s | speed-up | efficiency | epoch times (s) | test -ELBO |")
    print("|---:|---:|---:|---:|---|---:|")
    for r in rows:
        up = r["samples_per_s"] / base
        elbo = f"{-r['test_elbo']:.2f}" if r["test_elbo"] is not None else "-"
        print(f"| {r['nproc']} | {r['samples_per_s']:.0f} | {up:.2f}x | {100 * up / (r['nproc'] / rows[0]['nproc']):.0f}% "
              f"| {', '.join(f'{t:.1f}' for t in r['epoch_s'])} | {elbo} |")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"machine": machine, "date": time.strftime("%Y-%m-%d"),
                                                "epochs": args.epochs, "device": args.device, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
