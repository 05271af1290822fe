"""The IWAE paper's MNIST table, reproduced: train each recipe, estimate its NLL with K=5000
importance samples on the full test set, and print one markdown row per run.

    python bench/iwae_table.py run  --recipe bench/recipes/vae-1layer-dynamic.toml --out runs/vae-1layer
    python bench/iwae_table.py table runs/vae-1layer runs/vae-static ...

``run`` trains (``vaekit train --config RECIPE``) and evaluates (``vaekit evaluate --iw-samples
5000``), saving ``nll-5000.json`` in the run directory; ``table`` reads finished run directories
and prints the table with the paper's numbers beside ours. Threads: set OMP_NUM_THREADS.
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
DATA = ROOT.parent / "shared" / "data"
# (dataset, stochastic layers, model, k) -> NLL reported by Burda et al. 2015 (Table 1), or the
# static-binarization reference the issue names (pythae's reproduction).
PAPER = {("mnist", 1, "vae", 1): 86.76, ("mnist", 1, "iwae", 50): 84.78, ("mnist", 2, "vae", 1): 85.33,
         ("mnist", 2, "iwae", 50): 82.90, ("binarized-mnist", 1, "vae", 1): 89.78}


def _vaekit() -> str:
    return str(Path(sys.executable).with_name("vaekit"))


def cmd_run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    src = "binarized-mnist" if "static" in Path(args.recipe).name else "mnist"
    data_dir = str(Path(args.data_dir or DATA / src))
    t0 = time.perf_counter()
    train = [_vaekit(), "train", "--config", args.recipe, "--data-dir", data_dir, "--out", str(out), "--quiet"]
    if (out / "config.json").exists():
        train += ["--resume"]
    subprocess.run(train + (["--epochs", str(args.epochs)] if args.epochs else []), check=True)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = subprocess.run([_vaekit(), "evaluate", str(out), "--data-dir", data_dir, "--iw-samples", str(args.k),
                          "--json"], check=True, capture_output=True, text=True)
    ev = json.loads(res.stdout)
    ev.update(eval_s=time.perf_counter() - t1, train_wall_s=train_s, machine=_machine(),
              command=" ".join(train[1:]), date=time.strftime("%Y-%m-%d"))
    (out / f"nll-{args.k}.json").write_text(json.dumps(ev, indent=2) + "\n")
    print(row(out))


def _machine() -> str:
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    return f"{platform.processor() or platform.machine()}, {threads} thread(s)"


def row(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text())
    m, d = cfg["model"], cfg["data"]
    layers = 2 if m.get("latent_dim2") else 1
    k = m["k"] if m["model"] == "iwae" else 1
    files = sorted(run.glob("nll-[0-9]*.json"))
    ev = json.loads(files[-1].read_text()) if files else {}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_s = sum(r.get("epoch_time_s", 0.0) for r in records)
    paper = PAPER.get((d["source"], layers, m["model"], k))
    nll = f"{ev['nll']:.2f} ± {ev.get('nll_std_err', 0):.2f}" if "nll" in ev else "—"
    return (f"| {m['model'].upper()} | {d['source']}{' (dynamic)' if d.get('binarize') == 'dynamic' else ''} | {layers} "
            f"| {k} | {nll} | {paper if paper else '—'} | {-ev.get('elbo', float('nan')):.2f} | {len(records)} "
            f"(best {records[-1]['best_epoch'] + 1 if records else 0}) | {train_s / 60:.0f} min train + "
            f"{ev.get('eval_s', float('nan')) / 60:.1f} min eval | {ev.get('machine', '?')} |")


def cmd_table(args: argparse.Namespace) -> None:
    print("| model | data | stochastic layers | k | our NLL (K=5000) | paper NLL | test -ELBO | epochs | wall time | machine |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in args.runs:
        print(row(Path(r)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--recipe", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--data-dir", default=None)
    r.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (e.g. a smoke run)")
    r.add_argument("--k", type=int, default=5000, help="importance samples for the NLL")
    r.set_defaults(func=cmd_run)
    t = sub.add_parser("table")
    t.add_argument("runs", nargs="+")
    t.set_defaults(func=cmd_table)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
