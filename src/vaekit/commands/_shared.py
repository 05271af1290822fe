"""Arguments and steps shared by the application verbs."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from ..apps.common import LoadedRun, open_run, pick, run_inputs
from ..data.batch import Batch
from ..errors import UsageError


def add_run_args(p: argparse.ArgumentParser, *, split: bool = True) -> None:
    """RUN_DIR plus where its data live and where to compute."""
    p.add_argument("run_dir", help="a run directory written by vaekit train")
    p.add_argument("--data-dir", default=None, help="folder holding the run's dataset files (if moved)")
    if split:
        p.add_argument("--split", choices=["test", "val", "train"], default="test",
                       help="the run's split to use when no --input is given")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def open_from_args(args: argparse.Namespace) -> LoadedRun:
    return open_run(args.run_dir, device=args.device)


def example(run: LoadedRun, ref: str, args: argparse.Namespace, what: str) -> tuple[torch.Tensor, int | None]:
    """An example named on the command line: an index into the run's split ("17") or a file
    (image, .npy, .csv: its first example). Returns ((1, *shape), its label or None)."""
    b = example_batch(run, ref, args, what)
    return b.x, None if b.y is None else int(b.y[0])


def example_batch(run: LoadedRun, ref: str, args: argparse.Namespace, what: str) -> Batch:
    """``example``'s example as a 1-row Batch, with its label and condition when it has them."""
    try:
        index: int | None = int(ref)
    except ValueError:
        index = None
    if index is not None:
        s = run_inputs(run, None, split=getattr(args, "split", "test"), data_dir=args.data_dir)
        pick(s, index, what)  # the range check
        i = index % len(s)
        return s[i:i + 1]
    return run_inputs(run, ref)[:1]


def positive(name: str, value: float, *, integer: bool = False) -> None:
    if not value > 0:
        raise UsageError(f"{name} must be positive, got {value}")
    if integer and int(value) != value:
        raise UsageError(f"{name} must be a whole number, got {value}")


def emit(args: argparse.Namespace, result: dict[str, Any], lines: list[str]) -> int:
    """Print the result: one JSON object with --json, else readable lines."""
    if getattr(args, "json", False):
        print(json.dumps(result))
    else:
        for line in lines:
            print(line)
    return 0
