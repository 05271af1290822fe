"""What every application needs: a loaded run, its inputs, and files written atomically."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.datasets import Split, load_inputs
from ..data.spec import DataSpec
from ..errors import DataError, UsageError
from ..io import atomic_path
from ..models.base import BaseModel
from ..config import RunConfig


@dataclass
class LoadedRun:
    """A trained run opened for use: the best model (eval mode), its config, data spec and source."""

    dir: Path
    model: BaseModel
    config: RunConfig
    spec: DataSpec
    source: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return self.model.device


def open_run(run_dir: str | Path, *, device: str = "auto") -> LoadedRun:
    """Load ``run_dir`` (config + best weights). Raises CheckpointError with one clear line."""
    from ..run import load, read_config

    cfg, spec, source = read_config(run_dir)
    model = load(run_dir, device=device)
    return LoadedRun(Path(run_dir), model, cfg, spec, source)


def run_inputs(run: LoadedRun, path: str | None = None, *, split: str = "test", data_dir: str | None = None,
               limit: int | None = None) -> Split:
    """Examples to work on: the file/folder at ``path`` prepared like the training data, or, without a
    path, the run's own ``split`` ("test", "val" or "train"). ``limit`` keeps the first N.

    Returns a Split (x float32 (N, *spec.shape) on the CPU, y labels or None).
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--n/--limit must be >= 1, got {limit}")
    if path is not None:
        s = load_inputs(path, run.spec, run.source)
    else:
        from ..run import load_run_data

        if split not in ("train", "val", "test"):
            raise UsageError(f"split must be train, val or test, got {split!r}")
        s = getattr(load_run_data(run.config, data_dir), split)
    if len(s.x) == 0:
        raise DataError(f"no examples in {path or split + ' split'}")
    if limit is not None:
        s = Split(s.x[:limit], None if s.y is None else s.y[:limit])
    return s


def pick(s: Split, index: int, what: str = "--from") -> torch.Tensor:
    """One example (1, *shape) by index, with a clear error when it is out of range."""
    if not -len(s.x) <= index < len(s.x):
        raise UsageError(f"{what} {index} is out of range: there are {len(s.x)} examples")
    return s.x[index:index + 1]


def save_array(path: str | Path, array: Any, *, header: Sequence[str] | None = None) -> Path:
    """Write an array atomically as ``.npy``, ``.npz`` (key "x") or ``.csv`` (2-D, optional header)."""
    p = Path(path)
    a = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    ext = p.suffix.lower()
    if ext not in (".npy", ".npz", ".csv"):
        raise UsageError(f"{p}: unsupported output type {ext or '(none)'}; use .npy, .npz or .csv")
    with atomic_path(p) as tmp:
        if ext == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, a)
        elif ext == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, x=a)
        else:
            buf = io.StringIO()
            w = csv.writer(buf)
            if header is not None:
                w.writerow(header)
            w.writerows(a.reshape(len(a), -1).tolist())
            tmp.write_text(buf.getvalue())
    return p


def check_out(path: str | Path | None, allowed: Sequence[str], what: str = "--out") -> Path | None:
    """Validate an output path's extension and folder before any work is done."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in allowed:
        raise UsageError(f"{what} {p}: expected one of {', '.join(allowed)}")
    if not p.parent.exists() and str(p.parent) not in ("", "."):
        raise UsageError(f"{what} {p}: folder {p.parent} does not exist")
    return p
