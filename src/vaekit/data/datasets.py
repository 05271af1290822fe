"""Loading data into float32 tensors: named datasets, image folders, ``.npy``/``.npz`` arrays, CSV tables.

``load_data`` returns train/val/test splits plus a JSON-serialisable ``source`` record;
``load_inputs`` uses that record to prepare new files exactly like the training data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, UsageError
from ..registry import Registry
from . import download as dl
from .readers import array_kind, read_amat, read_array, read_csv, read_idx, read_image_folder, to_examples
from .spec import DataSpec

BINARIZE = ("none", "static", "dynamic")
_STREAM = {"train": 0, "val": 1, "test": 2, "inputs": 3}  # one binarization RNG stream per split


@dataclass(repr=False)
class Split:
    """One split. ``x``: float32 (N, *spec.shape), contiguous; ``y``: int64 (N,) class indices, or None."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return f"Split(x={tuple(self.x.shape)}, y={None if self.y is None else tuple(self.y.shape)})"


@dataclass
class Data:
    """A dataset ready to train on.

    spec: per-example shape (images (C, H, W), tables (D,)), value kind and number of classes.
    source: JSON-serialisable record of where the data came from and how it was prepared (the
        ``load_data`` arguments, colour mode, standardisation statistics, class values...).
    dynamic_binarize: True when ``binarize="dynamic"``: ``train.x`` holds grey levels in [0, 1]
        that the trainer re-samples as {0, 1} every epoch; val and test are binarized once.
    """

    spec: DataSpec
    train: Split
    val: Split
    test: Split
    source: dict = field(default_factory=dict)
    dynamic_binarize: bool = False


@dataclass
class _Raw:
    """What a reader returns: numeric arrays per part ("all", or "train"/"test", or "train"/"val"/"test")."""

    parts: dict[str, tuple[np.ndarray, np.ndarray | None]]
    kind: str
    info: dict[str, Any] = field(default_factory=dict)


DATASETS: Registry = Registry("dataset")
IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@DATASETS.register("digits")
def _digits(data_dir: str | None, download: bool) -> _Raw:
    """sklearn's 8x8 digits (1797 examples, bundled with sklearn), values 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _Raw({"all": (d.data.reshape(-1, 1, 8, 8) / 16.0, d.target)}, "unit", {"classes": list(range(10))})


def _idx_dataset(name: str, url: str, data_dir: str | None, download: bool) -> _Raw:
    folder = dl.ensure_files(name, IDX_FILES, data_dir=data_dir, download=download, base_url=url,
                             checksums=dl.CHECKSUMS.get(name))
    parts = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{folder}: {prefix} images {x.shape} and labels {y.shape} do not match")
        parts[part] = (x[:, None], y)
    return _Raw(parts, "8bit", {"classes": list(range(10))})


@DATASETS.register("mnist")
def _mnist(data_dir: str | None, download: bool) -> _Raw:
    return _idx_dataset("mnist", dl.MNIST_URL, data_dir, download)


@DATASETS.register("fashion-mnist")
def _fashion(data_dir: str | None, download: bool) -> _Raw:
    return _idx_dataset("fashion-mnist", dl.FASHION_URL, data_dir, download)


@DATASETS.register("binarized-mnist")
def _binarized(data_dir: str | None, download: bool) -> _Raw:
    files = [f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")]
    folder = dl.ensure_files("binarized-mnist", files, data_dir=data_dir, download=False,
                             hint=f"get them from {dl.BINARIZED_MNIST_URL}")
    xs = [read_amat(folder / f).reshape(-1, 1, 28, 28) for f in files]
    return _Raw({"train": (xs[0], None), "val": (xs[1], None), "test": (xs[2], None)}, "binary")


def _encode_labels(y: np.ndarray, where: Path | str, classes: list | None = None) -> tuple[np.ndarray, list]:
    """Labels -> int64 indices into ``classes`` (sorted distinct values, numbers where they are numbers)."""
    y = np.asarray(y).reshape(len(y), -1)
    if y.shape[1] != 1:
        raise DataError(f"{where}: labels must be one value per example, got shape {y.shape}")
    y = y[:, 0]
    if y.dtype.kind in "US":
        try:
            y = y.astype(np.float64)
        except ValueError:
            pass  # text class names
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{where}: labels hold NaN or infinite values")
        if (y == np.round(y)).all():
            y = y.astype(np.int64)
    values, inverse = np.unique(y, return_inverse=True)
    vals = values.tolist()
    if classes is not None and set(vals) <= set(classes):
        lookup = {c: i for i, c in enumerate(classes)}
        return np.array([lookup[v] for v in vals], np.int64)[inverse.ravel()], classes
    return inverse.ravel().astype(np.int64), vals


def _read_path(p: Path, image_size: int | tuple[int, int] | None, label_column: str | None,
               color: str | None = None, need_label: bool = True, allow_missing: bool = False) -> tuple[str, _Raw]:
    """Read a folder or file into raw arrays; returns (kind of source, _Raw). ``allow_missing``: NaN
    (and empty CSV cells) pass as missing values instead of being refused."""
    if not p.exists():
        raise DataError(f"no such file or directory: {p}")
    if p.is_dir():
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        x, y, color = read_image_folder(p, image_size, color)
        return "images", _Raw({"all": (x, y)}, "8bit", {"color": color})
    if p.stat().st_size == 0:
        raise DataError(f"{p} is an empty file")
    suffix = p.suffix.lower()
    if suffix == ".csv" or suffix == ".tsv":
        x, y, cols, lab = read_csv(p, label_column, need_label, allow_missing)
        return "csv", _Raw({"all": (x, y)}, "continuous", {"columns": cols, "label_column": lab})
    if suffix in (".npy", ".npz"):
        x, y = read_array(p)
        x = to_examples(x, p, allow_missing)
        if y is not None and len(y) != len(x):
            raise DataError(f"{p}: {len(y)} labels for {len(x)} examples")
        return "array", _Raw({"all": (x, y)}, array_kind(x))
    if "idx" in p.name or p.name.endswith("-ubyte"):
        x = to_examples(read_idx(p), p)
        return "array", _Raw({"all": (x, None)}, "8bit")
    raise DataError(f"{p}: unsupported file type {suffix!r}; use an image folder, .npy, .npz or .csv")


def _observed_range(t: torch.Tensor) -> tuple[float, float] | None:
    """(min, max) over the non-NaN values, or None when every value is NaN."""
    v = t[~torch.isnan(t)]
    return (float(v.min()), float(v.max())) if v.numel() else None


# -- preparation ----------------------------------------------------------------------------------
def _scale(x: np.ndarray, kind: str) -> torch.Tensor:
    """Raw values -> float tensor: 8bit is uint8/255, binary and unit as they are, continuous kept float64."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if kind == "continuous":
        return t.to(torch.float64)
    t = t.to(torch.float32)
    return t.div_(255.0) if kind == "8bit" and x.dtype == np.uint8 else t


def _bernoulli(x: torch.Tensor, seed: int, stream: str) -> torch.Tensor:
    # Separate seeded streams per split: val/test come out identical for static and dynamic runs.
    s = int(np.random.SeedSequence([seed % 2**64, _STREAM[stream]]).generate_state(1, np.uint64)[0])
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(s))


def _count(fraction: float, n: int) -> int:
    return 0 if fraction <= 0 else max(1, int(round(fraction * n)))


def _carve(x: torch.Tensor, y: np.ndarray | None, counts: list[int], rng: np.random.Generator):
    """Split ``x`` into len(counts) random parts of those sizes, plus the rest (first); each part in file order."""
    perm = rng.permutation(len(x))
    ends = np.cumsum(counts)
    idx = [np.sort(i) for i in [perm[ends[-1]:]] + [perm[e - c:e] for c, e in zip(counts, ends)]]
    return [(x.index_select(0, torch.from_numpy(i)), None if y is None else y[i]) for i in idx]


def load_data(source: str, *, data_dir: str | None = None, image_size: int | None = None, binarize: str = "none",
              val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, download: bool = True,
              label_column: str | None = None) -> Data:
    """Load a named dataset (``DATASETS``: digits, mnist, fashion-mnist, binarized-mnist) or a path.

    Paths: a folder of images (subfolder names become labels), ``.npy``/``.npz`` arrays or a ``.csv``
    table. Without an official split, ``test_fraction`` then ``val_fraction`` of the examples are
    drawn at random with ``seed``; MNIST-style datasets take val from train. Images become
    (C, H, W) in [0, 1]; other real-valued data is standardised per feature with train statistics.
    ``binarize``: "none", "static" (each split sampled once) or "dynamic" (train re-sampled by the
    trainer each epoch). Deterministic given the arguments. Raises DataError or UsageError.
    A dataset name wins over a same-named file or folder: write ``./digits`` for the path.
    """
    if binarize not in BINARIZE:
        raise UsageError(f"unknown binarize {binarize!r}; valid: {', '.join(BINARIZE)}")
    for nm, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise UsageError(f"{nm} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1:
        raise UsageError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise UsageError(f"image_size must be a positive integer, got {image_size!r}")
    src = str(source)
    if src in DATASETS:
        kind_of_source, raw = "dataset", DATASETS.get(src)(data_dir, download)
    else:
        p = Path(src).expanduser()
        if not p.exists() and not any(c in src for c in "/\\~") and not p.suffix:
            DATASETS.get(src)  # not a path either: the registry's "unknown dataset ... did you mean"
        kind_of_source, raw = _read_path(p, image_size, label_column)
        src = str(p.resolve())
    kind = raw.kind
    if binarize != "none" and kind == "continuous":
        raise UsageError(f"binarize={binarize!r} needs values in [0, 1], but {source} is real-valued (continuous)")
    ys = [y for _, y in raw.parts.values()]
    classes = None
    if all(y is not None for y in ys):
        _, classes = _encode_labels(np.concatenate(ys), src, raw.info.get("classes"))
    parts = {k: (_scale(x, kind), None if y is None else _encode_labels(y, src, classes)[0])
             for k, (x, y) in raw.parts.items()}
    shape = tuple(next(iter(parts.values()))[0].shape[1:])
    if image_size is not None and kind_of_source != "images" and shape[-2:] != (image_size, image_size):
        raise UsageError(f"--image-size resizes image folders only; {source} examples are {shape}")
    rng = np.random.default_rng(seed % 2**64)
    if "all" in parts:
        n = len(parts["all"][0])
        counts = [_count(test_fraction, n), _count(val_fraction, n)]
        train, test, val = _carve(*parts["all"], counts, rng)
    else:
        train, test = parts["train"], parts["test"]
        val = parts.get("val")
        if val is None:
            train, val = _carve(*train, [_count(val_fraction, len(train[0]))], rng)
    if len(train[0]) < 1:
        raise DataError(f"{source}: too few examples ({sum(len(s[0]) for s in (train, val, test))}) to split")
    splits = {"train": train, "val": val, "test": test}
    std = None
    if kind == "continuous":
        xt = train[0]
        flat = xt if xt.ndim == 2 else xt.reshape(-1, 1)  # per feature for tables, one global pair otherwise
        mean, sd = flat.mean(0), flat.std(0, correction=0)  # population std, as sklearn does
        sd = torch.where((flat == flat[:1]).all(0), torch.ones_like(sd), sd)  # constant columns: std 1
        std = {"mean": mean.tolist(), "std": sd.tolist()}
        splits = {k: (((x.flatten(1) - mean) / sd).reshape(x.shape), y) for k, (x, y) in splits.items()}
    out: dict[str, Split] = {}
    for k, (x, y) in splits.items():
        x = x.to(torch.float32).contiguous()
        if binarize == "static" or (binarize == "dynamic" and k != "train"):
            x = _bernoulli(x, seed, k)
        out[k] = Split(x, None if y is None else torch.as_tensor(y, dtype=torch.int64))
    info = {k: v for k, v in raw.info.items() if k != "classes"}
    if "color" not in info and len(shape) == 3:
        info["color"] = {1: "L", 3: "RGB"}.get(shape[0])
    record = {"source": src, "kind_of_source": kind_of_source, "kind": kind, "binarize": binarize,
              "image_size": image_size, "color": info.pop("color", None), "standardize": std,
              "label_column": info.pop("label_column", label_column), "classes": classes, "seed": seed,
              "val_fraction": val_fraction, "test_fraction": test_fraction, **info}
    spec = DataSpec(shape, "binary" if binarize != "none" else kind, None if classes is None else len(classes))
    return Data(spec, out["train"], out["val"], out["test"], record, binarize == "dynamic")


def load_inputs(path: str, spec: DataSpec, source: dict, *, allow_missing: bool = False) -> Split:
    """Prepare NEW inputs (image folder, ``.npy``/``.npz``, ``.csv``, IDX) like the data ``source`` describes.

    Images are resized to ``spec``'s (H, W) and converted to the training colour mode; tables are
    standardised with the training statistics; binarized models get a seeded, deterministic
    binarization. Returns a Split with x float32 (N, *spec.shape) and y when the input has labels.
    Raises DataError when the result does not match ``spec`` (shape or value range).
    NaN values are refused unless ``allow_missing``: then they stay NaN in x (missing values, e.g.
    for ``vaekit impute``), empty CSV cells included, and only the observed values are checked.
    """
    p = Path(path).expanduser()
    size = spec.shape[1:] if spec.is_image else None
    color = source.get("color") or ({1: "L", 3: "RGB"}.get(spec.shape[0]) if spec.is_image else None)
    if p.is_dir() and not spec.is_image:
        raise DataError(f"{p} is an image folder, but the model expects vectors of shape {spec.shape}")
    _, raw = _read_path(p, size, source.get("label_column"), color, need_label=False, allow_missing=allow_missing)
    x, y = raw.parts["all"]
    if raw.info.get("columns") and source.get("columns") and raw.info["columns"] != source["columns"]:
        raise DataError(f"{p}: columns {raw.info['columns']} differ from the training columns {source['columns']}")
    kind = source.get("kind", spec.kind)
    std = source.get("standardize")
    t = _scale(x, "continuous" if std else raw.kind)
    if tuple(t.shape[1:]) != spec.shape:
        if t[0].numel() != spec.dim:
            raise DataError(f"{p}: examples have shape {tuple(t.shape[1:])}, the model expects {spec.shape}")
        t = t.reshape(len(t), *spec.shape)  # same values, another layout, e.g. (N, 784) for (1, 28, 28)
    if std:  # the training statistics, never re-estimated on new data
        mean, sd = (torch.tensor(std[k], dtype=torch.float64) for k in ("mean", "std"))
        t = ((t.flatten(1) - mean) / sd).reshape(t.shape)
    elif kind in ("binary", "8bit", "unit") and (lo_hi := _observed_range(t)) and (lo_hi[0] < 0 or lo_hi[1] > 1):
        raise DataError(f"{p}: values range over [{lo_hi[0]:.4g}, {lo_hi[1]:.4g}] but the model was trained on "
                        f"{kind} data in [0, 1]")
    t = t.to(torch.float32).contiguous()
    if source.get("binarize", "none") != "none":
        nan = torch.isnan(t)
        t = _bernoulli(t.nan_to_num(0.0), int(source.get("seed", 0)), "inputs")
        t = t.masked_fill_(nan, float("nan")) if allow_missing else t
    elif kind == "binary" and not ((t == 0) | (t == 1) | torch.isnan(t)).all():
        raise DataError(f"{p}: the model was trained on binary data, but these values are not all 0 or 1; "
                        f"binarize them first")
    labels = None if y is None else torch.from_numpy(_encode_labels(y, p, source.get("classes"))[0])
    return Split(t, labels)

