"""Denoising MNIST test images with vaekit: PSNR before and after.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_denoise.py [--epochs 50] [--n-test 10000]

The model is the Bernoulli VAE (MLP 784-HIDDEN-LATENT, default 784-512-512-32) that bench/bench_impute.py trains on the
MNIST training set (cached under bench/out/, trained here when missing). Noise on the grey-level
test images, clipped to [0, 1]: Gaussian (sigma 0.1, 0.3, 0.5) and salt-and-pepper (10%, 30% of
the pixels set to 0 or 1 with equal odds). PSNR = 10 log10(1 / MSE) against the clean image, dB,
averaged over images; a 3x3 median filter is given for reference. Writes bench/out/denoise.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_impute import DATA, OUT, cached_run  # noqa: E402

NOISES = [("gaussian", 0.1), ("gaussian", 0.3), ("gaussian", 0.5), ("salt-and-pepper", 0.1),
          ("salt-and-pepper", 0.3)]


def add_noise(x: torch.Tensor, kind: str, level: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return (x + level * torch.randn(x.shape, generator=g)).clamp(0, 1)
    u = torch.rand(x.shape, generator=g)
    return torch.where(u < level / 2, 0.0, torch.where(u > 1 - level / 2, 1.0, x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=[512, 512])
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.data_dir / "mnist").exists():
        raise SystemExit(f"skipped: no data at {args.data_dir} (pass --data-dir)")
    from scipy.ndimage import median_filter

    from vaekit.apps.denoise import denoise, psnr
    from vaekit.run import load_run_data

    name = f"impute-mnist-h{'-'.join(map(str, args.hidden))}-z{args.latent_dim}-e{args.epochs}"
    run = cached_run(name, "mnist", data_dir=str(args.data_dir / "mnist"), epochs=args.epochs, hidden=args.hidden,
                     latent_dim=args.latent_dim, likelihood="bernoulli", seed=0)
    x = load_run_data(run.config).test.x[:args.n_test]
    rows = [{"noise": "none", "level": 0.0, "noisy": float("inf"),
             "vaekit_1": float(psnr(x, denoise(run.model, x)).mean()), "median3": None}]
    for kind, level in NOISES:
        xn = add_noise(x, kind, level)
        t = time.time()
        d1 = denoise(run.model, xn)
        sec = time.time() - t
        d2 = denoise(run.model, xn, steps=2)
        med = torch.from_numpy(median_filter(xn.numpy(), size=(1, 1, 3, 3)))
        rows.append({"noise": kind, "level": level, "noisy": float(psnr(x, xn).mean()),
                     "vaekit_1": float(psnr(x, d1).mean()), "vaekit_2": float(psnr(x, d2).mean()),
                     "median3": float(psnr(x, med).mean()), "seconds_1": sec})
        print(rows[-1], flush=True)
    res = {"command": "bench/bench_denoise.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
           "run": name, "n": len(x), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "denoise.json").write_text(json.dumps(res, indent=2) + "\n")
    print("| noise | level | noisy PSNR | vaekit 1 step | vaekit 2 steps | median 3x3 |")
    print("|---|---|---|---|---|---|")
    for r in rows[1:]:
        print(f"| {r['noise']} | {r['level']} | {r['noisy']:.2f} | {r['vaekit_1']:.2f} | {r['vaekit_2']:.2f} | "
              f"{r['median3']:.2f} |")
    print(f"clean images reconstructed: {rows[0]['vaekit_1']:.2f} dB")


if __name__ == "__main__":
    main()
