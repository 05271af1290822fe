"""What storing convolution weights channels-last buys on CPU (``training.memory.channels_last``, which
the trainer applies to every model with convolutions on CPU): milliseconds per training step of vaekit's
default conv VAE, the perceptual-loss VAE and the VAE-GAN on 28x28 images, through the trainer's own step
engine, with the weights in the default (NCHW) layout and channels-last, in alternating rounds. Also the
first step's loss in both layouts (equal up to float rounding: another summation order).

    python bench/bench_conv_layout.py [--data-dir ../shared/data] [--rounds 3] [--steps 30]

Without MNIST on disk the images are random (timings do not depend on the pixels).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vaekit.apps.feature_net import save_feature_net
from vaekit.config import make_config
from vaekit.data.datasets import load_data
from vaekit.models import build_model
from vaekit.modules.feature_nets import build_feature_net
from vaekit.perceptual import build_perceptual
from vaekit.training import trainer as trainer_module
from vaekit.training.memory import channels_last
from vaekit.training.trainer import Trainer

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
MODELS = ("vae", "perceptual", "vaegan")


def data(data_dir: Path, tmp: Path):
    """MNIST from ``data_dir``, else 6,000 random 28x28 images written as .npz."""
    if (data_dir / "mnist").exists():
        return "mnist", load_data("mnist", data_dir=str(data_dir / "mnist"), download=False)
    path = tmp / "random.npz"
    np.savez(path, x=np.random.default_rng(0).random((6000, 1, 28, 28), dtype=np.float32))
    return str(path), load_data(str(path))


def trainer_for(kind: str, source: str, d, net_dir: Path, layout: bool) -> Trainer:
    opts = dict(source=source, arch="conv", latent_dim=32, epochs=1, batch_size=128, seed=0, device="cpu")
    if kind == "perceptual":
        opts.update(recon_loss="perceptual", feature_net=str(net_dir), perceptual_weight=0.1)
    if kind == "vaegan":
        opts["model"] = "vaegan"
    cfg = make_config(None, **opts)
    torch.manual_seed(0)
    model = build_perceptual(cfg, d) if kind == "perceptual" else build_model(cfg.model, d.spec)
    # the trainer stores conv weights channels-last on CPU; "off" keeps the default layout
    trainer_module.channels_last = channels_last if layout else (lambda m: False)
    try:
        return Trainer(model, d, cfg.train, None, progress=False)
    finally:
        trainer_module.channels_last = channels_last


def time_steps(tr: Trainer, steps: int) -> tuple[float, float]:
    """(median ms per step over ``steps`` steps after 5 warm-up steps, the first step's loss)."""
    torch.manual_seed(1)
    step = tr._choose_step()
    step.begin_epoch(tr.cfg.lr, tr.train[:128])
    batches = [tr.train[(i * 128) % (len(tr.train) - 128):][:128] for i in range(steps + 5)]
    first = float(step(batches[0], 1.0)["loss"])
    times = []
    for i, b in enumerate(batches[1:]):
        t0 = time.perf_counter()
        step(b, 1.0)
        if i >= 4:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=SHARED)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "conv_layout.md")
    args = ap.parse_args()
    kinds = [k for k in args.models.split(",") if k]
    res: dict[tuple[str, bool], list[float]] = {}
    loss: dict[tuple[str, bool], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source, d = data(args.data_dir, Path(tmp))
        net_dir = Path(tmp) / "net"
        torch.manual_seed(0)
        shape = tuple(d.spec.shape)
        save_feature_net(net_dir, build_feature_net("small-cnn", shape, 10),
                         {"architecture": "small-cnn", "input_shape": list(shape), "num_classes": 10, "arch_args": {}})
        for r in range(args.rounds):
            for kind in kinds:
                for layout in ((False, True) if r % 2 == 0 else (True, False)):
                    ms, first = time_steps(trainer_for(kind, source, d, net_dir, layout), args.steps)
                    res.setdefault((kind, layout), []).append(ms)
                    loss[(kind, layout)] = first
                    print(f"round {r + 1} {kind:10s} {'channels-last' if layout else 'NCHW':13s} {ms:7.1f} ms/step",
                          flush=True)
    names = {"vae": "conv VAE (pixel likelihood)", "perceptual": "perceptual VAE (weight 0.1, small-cnn features)",
             "vaegan": "VAE-GAN (conv discriminator)"}
    lines = [
        "# Conv training steps: NCHW against channels-last weights (CPU)", "",
        f"`python bench/bench_conv_layout.py --rounds {args.rounds} --steps {args.steps}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Batch 128 of 28x28 images, vaekit's default conv "
        "encoder/decoder (latent 32); the median of each round's median step time, rounds alternating the order.", "",
        "| model | NCHW ms/step | channels-last ms/step | speed-up | first loss NCHW | first loss channels-last |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in kinds:
        a, b = statistics.median(res[(kind, False)]), statistics.median(res[(kind, True)])
        lines.append(f"| {names[kind]} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {loss[(kind, False)]:.4f} | "
                     f"{loss[(kind, True)]:.4f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
