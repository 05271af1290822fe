"""Peer speed: vaekit's M2 against pyro's M2 example (examples/vae/ss_vae_M2.py), side by side on the
same machine, the same MNIST label draw (100 labels), and the same wall-time budget.

Run alone on a quiet machine (from the repository root):

    .venv/bin/python bench/bench_peer_pyro_m2.py --budget-min 30          # the comparison
    .venv/bin/python bench/bench_peer_pyro_m2.py --budget-min 1 --out bench/out/peer-tiny.md   # smoke run

The first run creates bench/.envs/pyro (python -m venv) with torch==<this venv's version> (the
local CPU wheel) and pyro-ppl (under a constraints file pinning torch), so pyro is never a vaekit
dependency. The pyro side is bench/_pyro_m2_worker.py (pyro's example model, guide and defaults,
written against pyro's API) run in that env on the exact arrays vaekit trains on (written to
bench/out/peer/); vaekit's side is ``vaekit.train`` with M2 of the same sizes (500 softplus
units, 50 latent dims, Bernoulli) and batches of 200 like pyro's. Examples per second count every
example of every training step over the training loops' time only (no validation); each side
keeps its best validation epoch and reports its test error there. Writes a markdown table.
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

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from bench_semisupervised import M2, test_error, train_budgeted  # noqa: E402

ENV_DIR = HERE / ".envs" / "pyro"
ENV_PY = ENV_DIR / "bin" / "python"
PYRO = "pyro-ppl==1.9.2"
TORCH = f"torch=={torch.__version__.split('+')[0]}"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"


def ensure_env() -> None:
    """bench/.envs/pyro with this torch and pyro-ppl (created once)."""
    ready = ENV_DIR / ".bench-ready"
    if ready.exists():
        return
    print(f"[peer] creating {ENV_DIR} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV_DIR)], check=True)
    pip = [str(ENV_PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + [TORCH], check=True)
    constraints = ENV_DIR / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    subprocess.run(pip + ["-c", str(constraints), PYRO], check=True)
    ready.write_text(f"{TORCH}\n{PYRO}\n")


def write_arrays(data_dir: str, draw: int, path: Path) -> None:
    """The draw's splits exactly as vaekit sees them, flattened: the pyro side trains on these."""
    from vaekit.data.datasets import load_data

    d = load_data("mnist", data_dir=data_dir, labels_per_class=10, label_seed=draw, seed=draw, download=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{k}_x": getattr(d, k).x.flatten(1).numpy() for k in ("train", "val", "test")}
    np.savez(path, **flat, **{f"{k}_y": getattr(d, k).y.numpy() for k in ("train", "val", "test")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-min", type=float, default=30.0, help="wall minutes for each side")
    p.add_argument("--draw", type=int, default=0, help="label draw (label seed)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--work", default=str(ROOT / "bench" / "out" / "peer"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "peer_pyro_m2.md"))
    args = p.parse_args()
    ensure_env()
    work, budget_s = Path(args.work), 60.0 * args.budget_min
    arrays = work / f"mnist-draw{args.draw}.npz"
    write_arrays(args.data_dir, args.draw, arrays)
    print(f"[{time.strftime('%H:%M:%S')}] pyro ...", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([str(ENV_PY), str(HERE / "_pyro_m2_worker.py"), "--data", str(arrays), "--budget-s",
                           str(budget_s), "--seed", str(args.draw)], stdout=subprocess.PIPE, text=True, env=env,
                          check=True)
    pyro_res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[{time.strftime('%H:%M:%S')}] vaekit ...", file=sys.stderr, flush=True)
    opts = dict(M2, batch_size=200, data_dir=args.data_dir, labels_per_class=10, label_seed=args.draw, seed=args.draw)
    res = train_budgeted("mnist", work / f"vaekit-m2-{args.draw}", budget_s, **opts)
    rows = res.pop("rows")
    train_loop_s = sum(r["epoch_time_s"] for r in rows)
    seen = sum(r["samples_per_s"] * r["epoch_time_s"] for r in rows)
    vk = {"examples_per_s": seen / train_loop_s, "epochs": res["epochs"], "best_epoch": res["best_epoch"],
          "test_error": test_error(work / f"vaekit-m2-{args.draw}", args.data_dir), "train_s": res["train_s"]}
    ratio = vk["examples_per_s"] / pyro_res["examples_per_s"]
    text = "\n".join([
        f"# M2 on MNIST, 100 labels (draw {args.draw}): vaekit against pyro's example ({time.strftime('%Y-%m-%d')})", "",
        f"Command: `.venv/bin/python bench/bench_peer_pyro_m2.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs; torch {torch.__version__}, pyro "
        f"{pyro_res['pyro_version']}; {args.budget_min} min of wall time each.", "",
        "| | examples/s (training loop) | epochs | best epoch | test error % at best val epoch |",
        "|---|---|---|---|---|",
        f"| pyro ss_vae_M2 (its defaults) | {pyro_res['examples_per_s']:.0f} | {pyro_res['epochs']} | "
        f"{pyro_res['best_epoch']} | {pyro_res['test_error']:.2f} |",
        f"| vaekit --model m2 | {vk['examples_per_s']:.0f} | {vk['epochs']} | {vk['best_epoch']} | "
        f"{vk['test_error']:.2f} |", "",
        f"vaekit / pyro examples per second: {ratio:.2f}x", ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
