"""Out-of-core training (issue 22, item 2): a dataset larger than memory, streamed from .npy shards.

    .venv/bin/python bench/bench_out_of_core.py [--gb 20] [--steps 200] [--batch-size 128] [--arch mlp|conv] [--keep]

1. Generates ``--gb`` GB of 64x64 RGB uint8 images as vaekit shards (``manifest.json`` +
   ``shard-*.npy``, 256 MB each, written one at a time: bounded memory) in bench/out/ooc-shards,
   after checking the free disk space (refused, with a message, when there is not enough).
2. Streamed: ``load_data(SHARDS, data_in_memory="no")``, the training split cut to
   ``--steps x --batch-size`` examples drawn at random over the WHOLE file (so each batch reads
   rows scattered over all shards, as a full epoch would), one epoch of the trainer.
3. In memory: the same number of examples (the first rows) saved as one .npy and loaded with
   ``data_in_memory="yes"``, the same model, one epoch.
Each runs in its own process; examples/s is the trainer's own figure (the epoch's training
time), peak RSS the process's ``ru_maxrss`` (and a 0.1 s VmRSS sampler, which agrees). The page
cache is left as it is (the shards were just written, so part of them may still be cached; the
reads go through the page cache either way, which the process's RSS does not count).

Prints a markdown table and writes bench/out/out_of_core.json. The shards are deleted at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SHAPE = (3, 64, 64)
SHARD_BYTES = 256 << 20


def generate(folder: Path, gb: float, seed: int = 0) -> int:
    """``gb`` GB of random 64x64 RGB uint8 images (smooth blobs plus noise) as shards; returns N."""
    row = int(np.prod(SHAPE))
    n_total = int(gb * 1e9) // row
    per = SHARD_BYTES // row
    tmp = folder.parent / (folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shards, done, t0 = [], 0, time.time()
    while done < n_total:
        n = min(per, n_total - done)
        base = rng.integers(0, 200, (n, 3, 1, 1), dtype=np.uint8)
        x = rng.integers(0, 56, (n, *SHAPE), dtype=np.uint8)
        x += base
        name = f"shard-{len(shards):06d}.npy"
        np.save(tmp / name, x)
        shards.append({"file": name, "count": int(n)})
        done += n
        print(f"  generated {done}/{n_total} examples ({done * row / 1e9:.1f} GB, {time.time() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    manifest = {"format": "vaekit-shards", "version": 1, "count": done, "kind": "8bit", "dtype": "uint8",
                "shape": list(SHAPE), "shards": shards, "labels": None, "classes": None, "kind_of_source": "bench",
                "color": "RGB", "scale": "value = stored uint8 / 255"}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    os.rename(tmp, folder)
    return done


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.1)


def child(args: argparse.Namespace) -> None:
    """One measured training run, in this process; prints one JSON line."""
    import torch

    from vaekit.config import make_config
    from vaekit.data import load_data
    from vaekit.models.base import build_model
    from vaekit.training.trainer import Trainer

    sampler = RssSampler()
    sampler.start()
    n = args.steps * args.batch_size
    t0 = time.time()
    d = load_data(args.data, val_fraction=0.0, test_fraction=0.0, seed=0, data_in_memory=args.mode)
    if args.mode == "no":  # n rows at random over the whole file: every batch reads all over the shards
        pick = torch.randperm(len(d.train), generator=torch.Generator().manual_seed(1))[:n]
        d.train = d.train.select(pick)
    load_s = time.time() - t0
    cfg = make_config(None, source=args.data, arch=args.arch, hidden=[args.hidden], latent_dim=20, epochs=1,
                      batch_size=args.batch_size, seed=0)
    model = build_model(cfg.model, d.spec)
    trainer = Trainer(model, d, cfg.train, None, progress=False)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    hist = trainer.fit()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    sampler.stop = True
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": args.mode, "examples": len(d.train), "samples_per_s": hist[-1]["samples_per_s"],
                      "epoch_s": hist[-1]["epoch_time_s"], "load_s": load_s, "peak_rss": max(peak, sampler.peak),
                      "train_loss": hist[-1]["train_loss"],
                      "minor_faults": r1.ru_minflt - r0.ru_minflt, "user_s": r1.ru_utime - r0.ru_utime,
                      "sys_s": r1.ru_stime - r0.ru_stime}))


def measure(mode: str, data: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--data", str(data), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--arch", args.arch, "--hidden", str(args.hidden)]
    env = {**os.environ}
    if args.omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"the {mode} run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=20.0, help="size of the generated dataset on disk (default 20)")
    ap.add_argument("--steps", type=int, default=200, help="training steps measured in each mode")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--arch", default="mlp", choices=["mlp", "conv"])
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternated; the fastest is reported")
    ap.add_argument("--omp-wait-policy", default="passive", choices=["passive", "active", "default"],
                    help="OMP_WAIT_POLICY of both runs (default passive: on a shared machine, OpenMP threads that "
                         "spin between parallel regions made the in-memory run ~3x slower here; same for both)")
    ap.add_argument("--keep", action="store_true", help="keep the generated shards in bench/out/ooc-shards")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="no", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    OUT.mkdir(parents=True, exist_ok=True)
    shards, subset = OUT / "ooc-shards", OUT / "ooc-subset.npy"
    row = int(np.prod(SHAPE))
    n_mem = args.steps * args.batch_size
    need = int(args.gb * 1e9) + n_mem * row + (2 << 30)  # the shards, the subset, 2 GB to spare
    have = 0
    if not (shards / "manifest.json").exists():
        free = shutil.disk_usage(OUT).free
        if free < need:
            sys.exit(f"bench_out_of_core: {args.gb:g} GB of shards need {need / 1e9:.1f} GB free on {OUT}, and only "
                     f"{free / 1e9:.1f} GB are; free some space or pass a smaller --gb")
        print(f"generating {args.gb:g} GB of 64x64 RGB uint8 shards in {shards} ...", file=sys.stderr)
        have = generate(shards, args.gb)
    else:
        have = json.loads((shards / "manifest.json").read_text())["count"]
        print(f"reusing {shards} ({have} examples)", file=sys.stderr)
    try:
        # the in-memory subset: the first n_mem examples, one .npy
        from vaekit.data.shards import open_shard_folder

        store = open_shard_folder(shards)[0]
        np.save(subset, store.read(np.arange(min(n_mem, len(store)))))
        disk_gb = sum(f.stat().st_size for f in shards.iterdir()) / 1e9
        runs: dict[str, list[dict]] = {"no": [], "yes": []}
        for _ in range(args.repeats):  # alternated, the best of each kept: the machine may be shared
            runs["no"].append(measure("no", shards, args))
            runs["yes"].append(measure("yes", subset, args))
            print(f"  streamed {runs['no'][-1]['samples_per_s']:.0f} ex/s, in memory {runs['yes'][-1]['samples_per_s']:.0f} "
                  "ex/s", file=sys.stderr, flush=True)
        streamed, memory = (max(runs[m], key=lambda r: r["samples_per_s"]) for m in ("no", "yes"))
        streamed["peak_rss"] = max(r["peak_rss"] for r in runs["no"])
    finally:
        subset.unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(shards, ignore_errors=True)
    ratio = streamed["samples_per_s"] / memory["samples_per_s"]
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} CPUs", "dataset_gb_on_disk": disk_gb, "examples_on_disk": have, "arch": args.arch,
           "hidden": args.hidden, "batch_size": args.batch_size, "omp_wait_policy": args.omp_wait_policy, "steps": args.steps, "streamed": streamed,
           "in_memory": memory, "speed_ratio": ratio, "all_runs": runs}
    (OUT / "out_of_core.json").write_text(json.dumps(res, indent=2))
    print(f"\nOut-of-core training: {disk_gb:.1f} GB on disk ({have} examples of 3x64x64 uint8), {args.arch} "
          f"hidden {args.hidden}, batch {args.batch_size}, {args.steps} steps, OMP_WAIT_POLICY {args.omp_wait_policy} "
          f"({res['machine']})\n")
    print("| data | examples | examples/s | peak RSS (GB) | data load (s) |")
    print("|---|---|---|---|---|")
    for name, r in (("streamed from shards (--data-in-memory no)", streamed), ("in memory (subset)", memory)):
        print(f"| {name} | {r['examples']} | {r['samples_per_s']:.0f} | {r['peak_rss'] / 2**30:.2f} | {r['load_s']:.1f} |")
    ok_rss = streamed["peak_rss"] < 3 * 2**30
    print(f"\nstreamed / in memory speed: {100 * ratio:.0f}% (target >= 70%: {'met' if ratio >= 0.7 else 'NOT met'}); "
          f"streamed peak RSS {streamed['peak_rss'] / 2**30:.2f} GB (target < 3 GB: {'met' if ok_rss else 'NOT met'})")


if __name__ == "__main__":
    main()
