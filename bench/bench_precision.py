"""Mixed precision on the seed model: speed and quality of --precision fp32 vs bf16 (vs fp16 on a GPU).

The seed model (MLP 784-400-20, Bernoulli, grey-level MNIST, Adam 1e-3, batch 128, all 60,000
training images, no validation split, as bench_seed.py) trained for --epochs with each precision;
every run's test -ELBO is evaluated in exact fp32 (one z sample per image, fixed noise, all
10,000 test images), so only the training differs. The target: bf16 within 0.5 nats of fp32.

    .venv/bin/python bench/bench_precision.py [--epochs 10] [--device cpu|cuda|all] [--rows fp32,bf16,...] [--threads N]

Rows (``--rows``; default: every row that applies to the device):
- ``fp32``: the default engine: on a CPU the hand-derived step (fastpath.py), on a GPU the CUDA graph;
- ``fp32-autograd``: fp32 on the autograd step (CPU): the engine bf16 runs on, for a like-for-like speed;
- ``fp32-medium``: fp32 weights with ``--matmul-precision medium`` (CPU): the hand-derived step's own
  bf16 matmuls;
- ``bf16``: ``--precision bf16`` (autograd + autocast on a CPU; the CUDA graph with autocast on a GPU);
- ``fp16``: ``--precision fp16`` (GPU only: eager autograd + autocast + loss scale).

Prints a Markdown table and writes bench/out/precision-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"

ROWS = {
    "cpu": ("fp32", "fp32-autograd", "fp32-medium", "bf16"),
    "cuda": ("fp32", "bf16", "fp16"),
}


def cpu_info() -> dict:
    name, flags = platform.processor(), ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1)
        flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1)
    except (OSError, AttributeError):
        pass
    have = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f") if f in flags.split()]
    return {"cpu": name, "cores": os.cpu_count(), "bf16_flags": have}


def settings(row: str, device: str) -> dict:
    kw: dict = {"device": device}
    if row == "fp32-autograd":
        kw["fast_path"] = False
    elif row == "fp32-medium":
        kw["matmul_precision"] = "medium"
    elif row in ("bf16", "fp16"):
        kw["precision"] = row
    return kw


def train_row(row: str, device: str, args: argparse.Namespace) -> dict:
    import torch

    import vaekit
    from vaekit.metrics import loss_terms
    from vaekit.numerics import float_mode

    sps: list[float] = []
    train_s = 0.0
    engine = {}

    def on_epoch(trainer, rec: dict) -> None:
        nonlocal train_s
        sps.append(rec["samples_per_s"])
        train_s += rec["epoch_time_s"]
        engine["step"] = type(trainer.step).__name__
        engine["skipped"] = rec["skipped_steps"]

    load0 = os.getloadavg()[0]
    run = vaekit.train("mnist", data_dir=str(args.data_dir), out=None, progress=False, evaluate_test=False,
                       callbacks=[on_epoch], hidden=[400], latent_dim=20, likelihood="bernoulli", lr=1e-3,
                       batch_size=128, epochs=args.epochs, val_fraction=0.0, seed=args.seed, **settings(row, device))
    with float_mode("highest"):  # evaluated in exact fp32 whatever the training precision
        t = loss_terms(run.model, run.data.test.x.to(device), batch_size=1000, seed=123)
    if device == "cuda":
        torch.cuda.synchronize()
    out = {"row": row, "device": device, "engine": engine.get("step"), "epochs": len(sps),
           "samples_per_s_median": round(sorted(sps)[len(sps) // 2]), "train_s": round(train_s, 1),
           "test_neg_elbo": round(-t["elbo"], 3), "skipped_steps": engine.get("skipped", 0),
           "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def table(rows: list[dict]) -> str:
    ref = {r["device"]: r["test_neg_elbo"] for r in rows if r["row"] == "fp32"}
    base = {r["device"]: r["samples_per_s_median"] for r in rows if r["row"] == "fp32"}
    lines = ["| device | --precision (engine) | examples/s (median epoch) | vs fp32 | train s | test -ELBO | vs fp32 (nats) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = r["device"]
        speed = f"{r['samples_per_s_median'] / base[d]:.2f}x" if d in base else ""
        diff = f"{r['test_neg_elbo'] - ref[d]:+.3f}" if d in ref else ""
        lines.append(f"| {d} | {r['row']} ({r['engine']}) | {r['samples_per_s_median']:,} | {speed} | {r['train_s']} | "
                     f"{r['test_neg_elbo']:.2f} | {diff} |")
    return "\n".join(lines)


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA / "mnist")
    p.add_argument("--device", default="all", choices=("cpu", "cuda", "all"))
    p.add_argument("--rows", default=None, help="comma-separated rows (default: all that apply)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.data_dir / "train-images-idx3-ubyte.gz").exists():
        print(f"bench_precision: no MNIST in {args.data_dir}; pass --data-dir", file=sys.stderr)
        return 2
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for dev in devices:
        wanted = args.rows.split(",") if args.rows else ROWS[dev]
        for row in wanted:
            if row in ROWS[dev]:
                rows.append(train_row(row, dev, args))
        info = {"machine": cpu_info(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "epochs": args.epochs, "seed": args.seed,
                "date": time.strftime("%Y-%m-%d"), "rows": [r for r in rows if r["device"] == dev]}
        if dev == "cuda":
            info["gpu"] = torch.cuda.get_device_name()
        out = ROOT / "bench" / "out" / f"precision-{dev}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(cpu_info()))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
