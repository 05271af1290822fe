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
