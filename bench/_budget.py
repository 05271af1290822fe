"""Train under a wall-clock budget (the benchmarks' "same time for every model")."""

from __future__ import annotations

import time

import numpy as np
import torch


class _Budget(Exception):
    pass


def fit_within(trainer, budget_s: float, *, whole_epochs: bool = False) -> tuple[torch.nn.Module, dict]:
    """``trainer.fit()`` until ``budget_s`` seconds have passed, checked after each epoch: with
    ``whole_epochs`` an epoch that would not fit (as long as the last one) is not started, else
    training stops at the first epoch end past the budget. Returns (the evaluated weights in eval
    mode, {"epochs", "seconds", "examples_per_s": median over epochs after the first})."""
    t0 = time.perf_counter()

    def stop(_trainer, rec: dict) -> None:
        ahead = rec.get("epoch_time_s", 0.0) if whole_epochs else 0.0
        if time.perf_counter() - t0 + ahead > budget_s:
            raise _Budget

    trainer.callbacks.append(stop)
    try:
        trainer.fit()
    except _Budget:
        pass
    finally:
        trainer.callbacks.remove(stop)
    hist = trainer.history
    speeds = [r["samples_per_s"] for r in hist[1:]] or [r["samples_per_s"] for r in hist]
    return trainer.eval_model.eval(), {"epochs": len(hist), "seconds": time.perf_counter() - t0,
                                       "examples_per_s": float(np.median(speeds))}


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
