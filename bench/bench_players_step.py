"""The several-player training step by hand against autograd (issue 19's peer-speed work).

The AAE (both schedules) and the VAE-GAN with MLP networks train on a hand-derived forward and
backward (``training/fastpath.py``: ``FastAAEStep``, ``FastVAEGANStep``, run by
``steps.HandDerivedPlayersStep``) that makes the same updates as the models' ``train_step`` with
autograd (tests/test_fastpath.py, float64). This script measures what that buys on this machine:
the same model, data and settings as ``bench_peer_pythae.py`` (MNIST, encoder 784-400-2x20, decoder
20-400-784, critic one hidden layer of 256, batch 128, Adam 1e-3), one epoch per engine, the two
engines interleaved ``--repeats`` times so that drift of the host hits both alike; examples/s is the
training loop's (the trainer's epoch time, validation excluded).

    python bench/bench_players_step.py --data-dir ../shared/data
    python bench/bench_players_step.py --limit 4000 --repeats 1        # smoke

Appends to bench/results/players_step.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SHARED = Path(os.environ.get("VAEKIT_SHARED_DATA", HERE.parents[1] / "shared" / "data"))

ROWS = {
    "aae (paper's three updates)": dict(model="aae", encoder="gaussian"),
    "aae --phases joint": dict(model="aae", encoder="gaussian", phases="joint"),
    "vaegan": dict(model="vaegan", gamma=1.0, equilibrium=0.68, margin=0.4),
}


def epoch_rate(data, opts: dict, fast: bool) -> float:
    from vaekit.config import make_config
    from vaekit.models import build_model
    from vaekit.training.steps import HandDerivedPlayersStep
    from vaekit.training.trainer import Trainer

    cfg = make_config(None, hidden=[400], latent_dim=20, critic_hidden=[256], epochs=1, batch_size=128, lr=1e-3,
                      seed=0, fast_path=fast, **opts)
    torch.manual_seed(0)
    t = Trainer(build_model(cfg.model, data.spec), data, cfg.train, None, progress=False)
    rec = t.fit()[-1]
    assert isinstance(t.step, HandDerivedPlayersStep) == fast, type(t.step)
    return rec["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=SHARED)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="first N training images (smoke runs)")
    p.add_argument("--results", type=Path, default=HERE / "results" / "players_step.md")
    args = p.parse_args()
    from vaekit.data.datasets import load_data

    data = load_data("mnist", data_dir=args.data_dir / "mnist", val_fraction=0.1, seed=0)
    if args.limit:
        data.train = data.train[:args.limit]
    lines = []
    for name, opts in ROWS.items():
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for fast in (False, True):
                rates[fast].append(epoch_rate(data, opts, fast))
                print(f"{name} {'hand-derived' if fast else 'autograd'}: {rates[fast][-1]:,.0f} ex/s", flush=True)
        a, h = statistics.median(rates[False]), statistics.median(rates[True])
        lines.append(f"| {name} | {a:,.0f} | {h:,.0f} | {h / a:.2f}x |")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"## Several-player step: hand-derived against autograd ({now})", "",
           f"Command: `python bench/bench_players_step.py {' '.join(sys.argv[1:])}`  ",
           f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads. MNIST ({len(data.train):,} training images), MLP 784-400-20, critic 256, "
           f"batch 128; median of {args.repeats} epochs per engine, interleaved.", "",
           "| model | autograd ex/s | hand-derived ex/s | speed-up |", "|---|---:|---:|---:|", *lines, ""]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
