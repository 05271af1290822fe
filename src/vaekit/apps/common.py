"""What every application needs: a loaded run, its inputs, and files written atomically."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.datasets import Split, load_inputs
from ..data.spec import DataSpec
from ..errors import DataError, UsageError
from ..io import _umask, atomic_path
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
               limit: int | None = None, labels: str = "any") -> Split:
    """Examples to work on: the file/folder at ``path`` prepared like the training data, or, without a
    path, the run's own ``split`` ("test", "val" or "train"). ``limit`` keeps the first N.

    Returns a Split (x float32 (N, *spec.shape) on the CPU, y labels or None). New inputs' labels
    are the run's class indices; ``labels="run"`` (and any model that reads labels) refuses
    classes the run does not have, which ``"any"`` numbers after the run's own.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    if path is not None:
        if "y" in getattr(run.model, "batch_fields", ()):
            labels = "run"
        s = load_inputs(path, run.spec, run.source, labels=labels)
    else:
        from ..run import load_run_data

        if split not in ("train", "val", "test"):
            raise UsageError(f"split must be train, val or test, got {split!r}")
        s = getattr(load_run_data(run.config, data_dir), split)
    if len(s.x) == 0:
        raise DataError(f"no examples in {path or split + ' split'}")
    if limit is not None:
        s = s[:limit]  # every field: x, labels and conditions
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
    if not p.parent.exists():
        raise UsageError(f"{what} {p}: folder {p.parent} does not exist")
    return p


def to_original_units(x: Any, source: dict[str, Any]) -> np.ndarray:
    """Model-space values (N, *shape) -> the user's units, (N, *shape) float64: tables that were
    standardised for training get the training mean and std back; other data are unchanged."""
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    scaler = source.get("scaler")  # sequences: per-channel scaling of the last axis
    if scaler:
        return a * np.asarray(scaler["std"]) + np.asarray(scaler["mean"])
    std = source.get("standardize")
    if std:
        flat = a.reshape(len(a), -1) * np.asarray(std["std"]) + np.asarray(std["mean"])
        a = flat.reshape(a.shape)
    return a


def class_names(source: dict[str, Any], num: int | None = None) -> list[str]:
    """Printable class names in label-index order (the training data's class values)."""
    classes = source.get("classes")
    if classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(num or 0)]


def _loose(name: str) -> str:
    """A class name compared without case, and with spaces, '-', '_' and '/' alike."""
    return re.sub(r"[\s_/-]+", "-", name.strip().lower())


def label_index(label: str, source: dict[str, Any], num_classes: int | None) -> int:
    """A class given by name (as in the training labels) or by index -> its index."""
    names = class_names(source, num_classes)
    if not names:
        raise UsageError("this run was trained without labels, so there are no classes to choose from")
    if label in names:
        return names.index(label)
    loose = [i for i, n in enumerate(names) if _loose(n) == _loose(label)]
    if len(loose) == 1:  # "ankle boot", "Ankle-boot", "T-shirt/top" for Fashion-MNIST's "Ankle-boot", "T-shirt-top"
        return loose[0]
    try:
        i = int(label)
    except ValueError:
        i = -1
    # an index, unless the class values are themselves numbers (then "5" means the class named 5)
    numeric = any(n.lstrip("-").isdigit() for n in names) and bool(source.get("classes"))
    if 0 <= i < len(names) and not numeric:
        return i
    raise UsageError(f"unknown label {label!r}; the classes are: {', '.join(names)}")


def write_examples(path: str | Path, x: torch.Tensor, spec: DataSpec, source: dict[str, Any],
                   labels: torch.Tensor | None = None, *, nrow: int | None = None) -> Path:
    """Write examples (N, *spec.shape, model units) where a user can use them again:

    - ``.png``: one grid image (images only), ``nrow`` images per row (default about square);
    - ``.npy``: the array in the user's units; ``.npz``: ``x`` and, when given, ``y`` (+ ``classes``);
    - ``.csv``: one row per example in the user's units, with the training columns as header
      (tables; images are flattened), and a ``label`` column when labels are given;
    - a path without a suffix: an image folder, one PNG per example, in one sub-folder per class
      when labels are given (the layout vaekit and torchvision read back as labelled data).
    The file or folder appears whole or not at all.
    """
    from ..figures import save_image_grid, save_png

    p = Path(path)
    ext = p.suffix.lower()
    a = to_original_units(x, source)
    if ext == ".png":
        if spec.is_sequence:  # line plots of the sequences
            from ..figures import save_series

            return save_series(p, a, n=min(len(a), 16), title=f"{len(a)} sequences (first {min(len(a), 16)} shown)")
        if not spec.is_image:
            raise UsageError(f"{p}: a PNG grid needs image data; this model's examples are vectors of {spec.dim}; "
                             "use .csv, .npy or .npz")
        return save_image_grid(p, a, nrow=nrow, kind=spec.kind)
    if ext == ".npy":
        return save_array(p, a.astype(np.float32))
    if ext == ".npz":
        arrays = {"x": a.astype(np.float32)}
        if labels is not None:
            arrays["y"] = labels.cpu().numpy()
            arrays["classes"] = np.asarray(class_names(source, spec.num_classes))
        with atomic_path(p) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return p
    if ext == ".csv":
        cols = list(source.get("columns") or [f"x{i}" for i in range(spec.dim)])
        flat = a.reshape(len(a), -1)
        if labels is not None:
            names = class_names(source, spec.num_classes)
            rows = [[*map(repr, map(float, r)), names[int(c)]] for r, c in zip(flat, labels)]
            header = cols + [source.get("label_column") or "label"]
        else:
            rows, header = [[repr(float(v)) for v in r] for r in flat], cols
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        with atomic_path(p) as tmp:
            tmp.write_text(buf.getvalue())
        return p
    if ext:
        raise UsageError(f"{p}: unsupported output type {ext}; use .png, .npy, .npz, .csv or a folder name")
    if not spec.is_image:
        raise UsageError(f"{p}: an image folder needs image data; use .csv, .npy or .npz")
    return _write_image_folder(p, a, spec, source, labels, save_png)


def _write_image_folder(p: Path, a: np.ndarray, spec: DataSpec, source: dict[str, Any],
                        labels: torch.Tensor | None, save_png: Any) -> Path:
    import shutil
    import tempfile

    if p.exists():
        raise UsageError(f"{p} already exists; choose a new folder name")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        names = class_names(source, spec.num_classes)
        width = len(str(len(a) - 1))
        for i, img in enumerate(a):  # image data live in [0, 1]
            sub = tmp / names[int(labels[i])] if labels is not None else tmp
            sub.mkdir(exist_ok=True)
            save_png(sub / f"{i:0{width}d}.png", np.clip(img, 0.0, 1.0).transpose(1, 2, 0))
        tmp.chmod(0o777 & ~_umask())
        tmp.rename(p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p


def check_example_out(path: str | Path, spec: DataSpec) -> Path:
    """Validate a ``write_examples`` destination before doing any work."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in ("", ".png", ".npy", ".npz", ".csv"):
        raise UsageError(f"--out {p}: unsupported type {ext}; use .png, .npy, .npz, .csv or a folder name")
    if ext == ".png" and not spec.is_image:
        raise UsageError(f"--out {p}: a PNG grid needs image data; this model's examples are vectors; use .csv, .npy or .npz")
    if ext == "" and (p.exists() or not spec.is_image):
        raise UsageError(f"--out {p}: " + ("already exists; choose a new folder name" if p.exists()
                                          else "an image folder needs image data; use .csv, .npy or .npz"))
    if not p.parent.exists():
        raise UsageError(f"--out {p}: folder {p.parent} does not exist")
    return p
