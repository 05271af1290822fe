"""Train under a wall-clock budget (the benchmarks' "same time for every model")."""

from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np
import torch


class _Budget(Exception):
    pass


def fit_within(trainer, budget_s: float, *, whole_epochs: bool = False,
               probe: Callable[[torch.nn.Module, dict], None] | None = None,
               probe_every_s: float = 0.0) -> tuple[torch.nn.Module, dict]:
    """``trainer.fit()`` until ``budget_s`` seconds have passed, checked after each epoch: with
    ``whole_epochs`` an epoch that would not fit (as long as the last one) is not started, else
    training stops at the first epoch end past the budget. Returns (the evaluated weights in eval
    mode, {"epochs", "seconds", "examples_per_s": median over epochs after the first}).

    ``probe(eval_model, rec)``, if given, runs at the end of the first epoch after each
    ``probe_every_s`` seconds of training and after the last epoch (a learning curve of something
    costly, such as a sample score): in eval mode, under a forked RNG (the training's random stream
    is the one it would have been without probes), and its time is not counted in the budget or in
    "seconds"."""
    t0 = time.perf_counter()
    paused = 0.0  # seconds spent in probes
    next_probe = probe_every_s

    def run_probe(rec: dict) -> None:
        nonlocal paused
        p0 = time.perf_counter()
        model = trainer.eval_model
        modes = [(m, m.training) for m in model.modules()]  # per module: a model may freeze parts
        try:
            model.eval()
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                probe(model, rec)
        finally:
            for m, mode in modes:
                m.training = mode
            paused += time.perf_counter() - p0

    def stop(_trainer, rec: dict) -> None:
        nonlocal next_probe
        trained = time.perf_counter() - t0 - paused
        ahead = rec.get("epoch_time_s", 0.0) if whole_epochs else 0.0
        last = trained + ahead > budget_s
        if probe is not None and (last or trained >= next_probe):
            rec["train_minutes"] = trained / 60.0
            run_probe(rec)
            if probe_every_s > 0:  # the next multiple of probe_every_s (0: every epoch)
                next_probe = (trained // probe_every_s + 1) * probe_every_s
        if last:
            raise _Budget

    trainer.callbacks.append(stop)
    try:
        trainer.fit()
    except _Budget:
        pass
    finally:
        trainer.callbacks.remove(stop)
    hist = trainer.history
    if probe is not None and hist and "train_minutes" not in hist[-1]:  # ended by --epochs, not yet probed
        hist[-1]["train_minutes"] = (time.perf_counter() - t0 - paused) / 60.0
        run_probe(hist[-1])
    speeds = [r["samples_per_s"] for r in hist[1:]] or [r["samples_per_s"] for r in hist]
    return trainer.eval_model.eval(), {"epochs": len(hist), "seconds": time.perf_counter() - t0 - paused,
                                       "examples_per_s": float(np.median(speeds))}


def curve_probe(score: Callable[[torch.nn.Module], float], curve: list, label: str
                ) -> Callable[[torch.nn.Module, dict], None]:
    """A ``fit_within`` probe that appends [training minutes, epochs, ``score(model)``] to ``curve``
    and prints the point (``label`` names the score)."""
    def probe(model: torch.nn.Module, rec: dict) -> None:
        value = float(score(model))
        curve.append([round(rec["train_minutes"], 2), rec["epoch"] + 1, round(value, 4)])
        print(f"  curve: {curve[-1][0]:.1f} min, epoch {curve[-1][1]}, {label} {value:.4g}", file=sys.stderr, flush=True)
    return probe


def train_within(opts: dict, data, budget_s: float, seed: int) -> tuple[torch.nn.Module, dict]:
    """Build the model of the flat config ``opts`` (``vaekit.config.make_config`` keywords) for
    ``data`` and train it for ``budget_s`` seconds in whole epochs: (the evaluated weights, the
    ``fit_within`` stats with "seconds" rounded and, for a model that logs one, the last epoch's
    "critic_acc")."""
    from vaekit.config import make_config
    from vaekit.models import build_model
    from vaekit.training.trainer import Trainer

    cfg = make_config(None, **opts)
    torch.manual_seed(seed)
    trainer = Trainer(build_model(cfg.model, data.spec), data, cfg.train, None, progress=False)
    model, stats = fit_within(trainer, budget_s, whole_epochs=True)
    stats["seconds"] = round(stats["seconds"], 1)
    last = trainer.history[-1] if trainer.history else {}
    if "train_critic_acc" in last:
        stats["critic_acc"] = last["train_critic_acc"]
    return model, stats


def mnist(data_dir, train_limit: int | None = None):
    """MNIST from ``data_dir``/mnist (no download), its training split cut to ``train_limit``."""
    import dataclasses
    from pathlib import Path

    from vaekit.data.datasets import load_data

    d = load_data("mnist", data_dir=str(Path(data_dir) / "mnist"), download=False)
    return dataclasses.replace(d, train=d.train[:train_limit]) if train_limit else d
