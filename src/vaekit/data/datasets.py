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
from .readers import (IMAGE_EXTS, array_kind, common_size, npz_classes, read_amat, read_array, read_csv, read_idx,
                      read_image_folder, read_images, to_examples)
from .batch import UNLABELLED, Batch
from .spec import DataSpec

BINARIZE = ("none", "static", "dynamic")
_STREAM = {"train": 0, "val": 1, "test": 2, "inputs": 3}  # one binarization RNG stream per split


#: One split of a dataset: a batch of all its examples (x, y with -1 for hidden labels, c).
Split = Batch


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
    conds: dict[str, np.ndarray] | None = None  # a condition c per part, aligned with its examples


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


#: Fashion-MNIST's classes in label order (Xiao et al. 2017; "T-shirt/top" without the slash, so
#: that a class can name a folder).
FASHION_CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle-boot"]


@DATASETS.register("fashion-mnist")
def _fashion(data_dir: str | None, download: bool) -> _Raw:
    """Fashion-MNIST with its class names (``--label Sneaker`` or ``--label 7``)."""
    raw = _idx_dataset("fashion-mnist", dl.FASHION_URL, data_dir, download)
    names = np.asarray(FASHION_CLASSES)
    raw.parts = {k: (x, names[y]) for k, (x, y) in raw.parts.items()}
    raw.info["classes"] = list(FASHION_CLASSES)
    return raw


@DATASETS.register("binarized-mnist")
def _binarized(data_dir: str | None, download: bool) -> _Raw:
    files = [f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")]
    folder = dl.ensure_files("binarized-mnist", files, data_dir=data_dir, download=False,
                             hint=f"get them from {dl.BINARIZED_MNIST_URL}")
    xs = [read_amat(folder / f).reshape(-1, 1, 28, 28) for f in files]
    return _Raw({"train": (xs[0], None), "val": (xs[1], None), "test": (xs[2], None)}, "binary")


def _name_key(v: Any) -> tuple:
    """Sort key for class values: numbers (and names that read as a plain integer, e.g. folder "10")
    in numeric order first, then the other names in text order; "01" stays a name."""
    text = str(v)
    try:
        if isinstance(v, (int, np.integer)) or str(int(text)) == text:
            return (0, int(text), "")
    except ValueError:
        pass
    return (1, 0, text)


def _encode_labels(y: np.ndarray, where: Path | str, classes: list | None = None, *, names: bool = False,
                   extend: bool = False) -> tuple[np.ndarray, list]:
    """Labels -> int64 indices into ``classes`` (sorted distinct values, numbers where they are numbers).

    Unlabelled examples get ``UNLABELLED`` (-1): empty label cells, and the value -1 when the other
    labels are at least two distinct non-negative integers (scikit-learn's semi-supervised
    convention; a -1/+1 anomaly labelling keeps -1 as a class). ``names``: the labels are class
    names as given (image subfolders): never read as numbers, never unlabelled ("01" and "1" are
    two classes, "-1" is a class), in natural order ("2" before "10").

    Given ``classes`` (the classes a run or a prepared folder already has), labels are matched to
    them by their text first (a folder "3" is class 3 of a run whose classes are the numbers 0..9;
    "-1" is unlabelled unless it is one of them); integers are class indices when the classes are
    names that are not numbers (y = 7 of a Fashion-MNIST run is "Sneaker"). Labels outside the
    classes give the labels' own classes, or with ``extend`` the given classes followed by the new
    ones (new inputs keep the run's class indices; callers that need only the run's classes check
    the length).
    """
    y = np.asarray(y).reshape(len(y), -1)
    if y.shape[1] != 1:
        raise DataError(f"{where}: labels must be one value per example, got shape {y.shape}")
    y = y[:, 0]
    if classes is not None and len(y):
        known = _known_labels(y, classes)
        if known is not None:
            return known, list(classes)
    blank = np.zeros(len(y), bool)
    if names:
        y = y.astype(str)
    elif y.dtype.kind in "US":
        blank = np.char.strip(y.astype(str)) == ""
        try:
            y = np.where(blank, "0", y).astype(np.float64)
        except ValueError:
            pass  # text class names
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{where}: labels hold NaN or infinite values")
        if not (y == np.round(y)).all():
            bad = y[y != np.round(y)][0]
            raise DataError(f"{where}: labels must be integers or class names, got {bad:g}; "
                            "give class indices or names (a real-valued target is a condition: --condition-columns)")
        y = y.astype(np.int64)
    if y.dtype.kind in "iu" and not names:
        if classes is not None and len(classes) and not any(_is_int_text(c) for c in classes):
            idx = np.where(blank, UNLABELLED, y)  # indices into named classes (-1: unlabelled)
            if idx.min() >= UNLABELLED and idx.max() < len(classes):
                return idx.astype(np.int64), list(classes)
        rest = np.unique(y[~blank & (y != -1)])
        if len(rest) >= 2 and rest.min() >= 0:
            blank |= y == -1
    if blank.all():
        raise DataError(f"{where}: every label is missing; give some labels, or no label column")
    values, inverse = np.unique(y[~blank], return_inverse=True)
    vals = sorted(values.tolist(), key=_name_key) if names else values.tolist()
    if names:  # natural order: re-index
        order = {v: i for i, v in enumerate(vals)}
        inverse = np.array([order[v] for v in values.tolist()], np.int64)[inverse.ravel()]
    out = np.full(len(y), UNLABELLED, np.int64)
    if classes is not None and extend:
        lookup = {str(c): i for i, c in enumerate(classes)}
        new = [v for v in vals if str(v) not in lookup]
        lookup.update({str(v): len(classes) + i for i, v in enumerate(new)})
        out[~blank] = np.array([lookup[str(v)] for v in vals], np.int64)[inverse.ravel()]
        return out, list(classes) + new
    out[~blank] = inverse.ravel()
    return out, vals


def _is_int_text(c: Any) -> bool:
    try:
        return str(int(str(c))) == str(c)
    except ValueError:
        return False


def _known_labels(y: np.ndarray, classes: list) -> np.ndarray | None:
    """Indices into ``classes`` when every label is one of them by its text (empty, and -1 unless
    it is a class, are unlabelled); None when some are not (``_encode_labels`` goes on)."""
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            return None
        y = y.astype(np.int64)
    if y.dtype.kind not in "iuUS":
        return None
    text = np.char.strip(y.astype(str))
    lookup = {str(c): i for i, c in enumerate(classes)}
    blank = (text == "") | ((text == "-1") & ("-1" not in lookup))
    if blank.all():
        return None
    uniq, inverse = np.unique(text, return_inverse=True)
    codes = np.array([lookup.get(t, -2) for t in uniq.tolist()], np.int64)[inverse.ravel()]
    if (codes[~blank] < 0).any():
        return None
    return np.where(blank, UNLABELLED, codes).astype(np.int64)


def _read_path(p: Path, image_size: int | tuple[int, int] | None, label_column: str | None,
               color: str | None = None, need_label: bool = True, allow_missing: bool = False,
               condition_columns: list[str] | None = None) -> tuple[str, _Raw]:
    """Read a folder or file into raw arrays; returns (kind of source, _Raw). ``allow_missing``: NaN
    (and empty CSV cells) pass as missing values instead of being refused. ``condition_columns``:
    CSV columns taken out of the features as the condition c (when ``need_label``, they must exist)."""
    if not p.exists():
        raise DataError(f"no such file or directory: {p}")
    if p.is_dir():
        from .shards import is_shard_folder, read_shard_folder

        if is_shard_folder(p):  # .npy shards (vaekit prepare): the whole folder in memory
            x, y, kind, info = read_shard_folder(p)
            x = to_examples(x, p, allow_missing)
            return "shards", _Raw({"all": (x, y)}, kind or array_kind(x), info)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        x, y, color = read_image_folder(p, image_size, color)
        return "images", _Raw({"all": (x, y)}, "8bit", {"color": color})
    if p.stat().st_size == 0:
        raise DataError(f"{p} is an empty file")
    suffix = p.suffix.lower()
    if suffix == ".csv" or suffix == ".tsv":
        x, y, cols, lab = read_csv(p, label_column, need_label, allow_missing)
        raw = _Raw({"all": (x, y)}, "continuous", {"columns": cols, "label_column": lab})
        if condition_columns:
            _take_condition_columns(raw, p, condition_columns, required=need_label)
        return "csv", raw
    if suffix in (".npy", ".npz"):
        x, y, c = read_array(p, with_condition=True)
        x = to_examples(x, p, allow_missing)
        if y is not None and len(y) != len(x):
            raise DataError(f"{p}: {len(y)} labels for {len(x)} examples")
        conds = None if c is None else {"all": _condition_array(c, len(x), p)}
        info: dict[str, Any] = {}
        names = npz_classes(p) if suffix == ".npz" and y is not None else None
        if names is not None:  # y indexes these names (vaekit sample --per-class writes both)
            y, info["classes"] = _named_labels(y, names, p), names
        return "array", _Raw({"all": (x, y)}, array_kind(x), info, conds=conds)
    if suffix in IMAGE_EXTS:  # one image: one example, no label
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        x, color = read_images([p], size or common_size(p.parent, [p]), color)
        return "image", _Raw({"all": (x, None)}, "8bit", {"color": color})
    if "idx" in p.name or p.name.endswith("-ubyte"):
        x = to_examples(read_idx(p), p)
        return "array", _Raw({"all": (x, None)}, "8bit")
    raise DataError(f"{p}: unsupported file type {suffix!r}; use an image folder or file, .npy, .npz or .csv")


def _named_labels(y: np.ndarray, names: list[str], where: Path) -> np.ndarray:
    """Integer labels y indexing ``names`` -> the names (unlabelled, -1: an empty name)."""
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind not in "iu" or (len(y) and (y.max() >= len(names) or y.min() < -1)):
        raise DataError(f"{where}: its 'classes' names {len(names)} classes, so y must hold class indices "
                        f"0..{len(names) - 1} (or -1 for unlabelled); drop 'classes' to use y's own values")
    return np.where(y >= 0, np.asarray(names, dtype=str)[np.clip(y, 0, None)], "")


def _take_condition_columns(raw: _Raw, p: Path, names: list[str], required: bool) -> None:
    """Move the CSV feature columns ``names`` out of x into the condition c (in the order given)."""
    cols = raw.info.get("columns")
    if not cols:
        raise UsageError(f"--condition-columns needs a CSV with a header row; {p} has none")
    missing = [n for n in names if n not in cols]
    if missing:
        if not required:
            return
        raise UsageError(f"condition column(s) {', '.join(map(repr, missing))} not in {p}; columns: {', '.join(cols)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--condition-columns names a column twice: {', '.join(names)}")
    x, y = raw.parts["all"]
    take = [cols.index(n) for n in names]
    keep = [j for j in range(len(cols)) if j not in take]
    if not keep:
        raise UsageError(f"--condition-columns takes every feature column of {p}; leave some to model")
    raw.parts["all"] = (np.ascontiguousarray(x[:, keep]), y)
    raw.conds = {"all": np.ascontiguousarray(x[:, take])}
    raw.info["columns"] = [cols[j] for j in keep]
    raw.info["condition_columns"] = list(names)


def _condition_array(c: np.ndarray, n: int, where: Path | str) -> np.ndarray:
    """A condition array checked against n examples: vectors (N, C) or inputs (N, C, H, W)."""
    c = np.asarray(c)
    if c.dtype.kind not in "biuf":
        raise DataError(f"{where}: the condition must be numeric, got dtype {c.dtype}")
    if c.ndim == 1:
        c = c[:, None]
    if len(c) != n:
        raise DataError(f"{where}: {len(c)} conditions for {n} examples; give one per example")
    if c.ndim > 2:
        c = to_examples(c, Path(str(where)))
    elif not np.isfinite(c).all():
        raise DataError(f"{where}: the condition holds NaN or infinite values; drop or fill them")
    return c


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


def _carve(arrays: tuple, counts: list[int], rng: np.random.Generator) -> list[tuple]:
    """Split aligned ``arrays`` (x, y, c; None entries pass through) into len(counts) random parts of
    those sizes, plus the rest (first); each part in file order."""
    n = len(arrays[0])
    perm = rng.permutation(n)
    ends = np.cumsum(counts)
    idx = [np.sort(i) for i in [perm[ends[-1]:]] + [perm[e - c:e] for c, e in zip(counts, ends)]]

    def take(a: Any, i: np.ndarray) -> Any:
        if a is None:
            return None
        return a.index_select(0, torch.from_numpy(i)) if isinstance(a, torch.Tensor) else a[i]
    return [tuple(take(a, i) for a in arrays) for i in idx]


def hide_labels(y: torch.Tensor, per_class: int, seed: int, classes: list | None = None) -> torch.Tensor:
    """Keep ``per_class`` labels of each class (chosen at random with ``seed``) and set the others to
    ``UNLABELLED``: the semi-supervised protocol (e.g. 10 per class = 100 labels on MNIST)."""
    if per_class < 1:
        raise UsageError(f"--labels-per-class must be at least 1, got {per_class}")
    y_np = y.numpy()
    rng = np.random.default_rng([seed % 2**32, 0x1ABE1])
    keep = np.zeros(len(y_np), bool)
    ks, counts = np.unique(y_np[y_np != UNLABELLED], return_counts=True)
    if len(counts) and counts.min() < per_class:  # name the smallest class: its count is the most that works
        k, n = int(ks[counts.argmin()]), int(counts.min())
        name = classes[k] if classes else k
        raise UsageError(f"--labels-per-class {per_class} is more than class {name!r} has in the training "
                         f"split ({n}, the fewest of any class); use at most {n}")
    for k in ks:
        keep[rng.choice(np.flatnonzero(y_np == k), per_class, replace=False)] = True
    return torch.from_numpy(np.where(keep, y_np, UNLABELLED).astype(np.int64))


def _standardizer(t: torch.Tensor) -> dict[str, list[float]]:
    """Per-feature mean and population std of a (N, D) tensor (constant columns get std 1)."""
    mean, sd = t.mean(0), t.std(0, correction=0)  # population std, as sklearn does
    sd = torch.where((t == t[:1]).all(0), torch.ones_like(sd), sd)
    return {"mean": mean.tolist(), "std": sd.tolist()}


def _standardize(t: torch.Tensor, stats: dict[str, list[float]]) -> torch.Tensor:
    """(t - mean) / std per feature of the flattened examples (or with one global pair), in t's shape."""
    mean, sd = (torch.tensor(stats[k], dtype=t.dtype) for k in ("mean", "std"))
    return ((t.flatten(1) - mean) / sd).reshape(t.shape)


def _prepare_condition(c: np.ndarray) -> tuple[torch.Tensor, str]:
    """Raw conditions -> (tensor, kind): vectors keep their values (standardised later unless they
    lie in [0, 1]); images are scaled like images."""
    kind = array_kind(c)
    return _scale(c, "continuous" if kind == "continuous" else kind), kind


def _paired_condition(path: str, n: int, image_size: int | None) -> np.ndarray:
    """The conditioning input paired with the data: a second array, table or image folder with one
    example per data example, in the same order."""
    p = Path(path).expanduser()
    _, raw = _read_path(p, image_size, None, need_label=False)
    if "all" not in raw.parts:
        raise UsageError(f"--condition {path}: expected a file or folder of examples")
    c = raw.parts["all"][0]
    if raw.kind == "8bit" and c.dtype == np.uint8:
        c = c.astype(np.float32) / 255.0
    return _condition_array(c, n, p)


def load_data(source: str, *, data_dir: str | None = None, image_size: int | None = None, binarize: str = "none",
              val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, download: bool = True,
              label_column: str | None = None, condition_columns: list[str] | None = None,
              condition: str | None = None, labels_per_class: int | None = None, label_seed: int = 0,
              window: int | None = None, stride: int = 1, sequences: bool = False, mask_anomalies: bool = True,
              tokens: str | None = None, vocab_size: int | None = None, max_len: int | None = None,
              data_in_memory: str = "auto") -> Data:
    """Load a named dataset (``DATASETS``: digits, mnist, fashion-mnist, binarized-mnist) or a path.

    Paths: a folder of images (subfolder names become labels), ``.npy``/``.npz`` arrays (keys x, y
    and c) or a ``.csv`` table. Without an official split, ``test_fraction`` then ``val_fraction`` of
    the examples are drawn at random with ``seed``; MNIST-style datasets take val from train. Images
    become (C, H, W) in [0, 1]; other real-valued data is standardised per feature with train
    statistics. ``binarize``: "none", "static" (each split sampled once) or "dynamic" (train
    re-sampled by the trainer each epoch). Deterministic given the arguments. Raises DataError or
    UsageError. A dataset name wins over a same-named file or folder: write ``./digits`` for the path.

    Conditions: ``condition_columns`` (CSV columns taken out of the features), a ``.npz`` key
    ``c``, or ``condition`` (a second file or image folder paired example by example) give each
    example a condition c (vectors are standardised with train statistics unless in [0, 1]).
    ``labels_per_class`` N keeps N labels per class of the training split (drawn with
    ``label_seed``) and marks the rest ``UNLABELLED`` (-1); val and test keep theirs.

    ``data_in_memory``: "yes" loads everything into memory; "no" leaves a ``.npy`` file, a folder
    of ``.npy`` shards or an image folder on disk and reads a batch at a time (``data.stream``:
    the same splits and values); "auto" streams such a source only when it would not fit in memory.
    """
    from .stream import IN_MEMORY

    if data_in_memory not in IN_MEMORY:
        raise UsageError(f"--data-in-memory must be one of {', '.join(IN_MEMORY)}, got {data_in_memory!r}")
    if data_in_memory == "no" and (tokens is not None or window is not None or sequences or str(source) in DATASETS):
        what = "built-in datasets" if str(source) in DATASETS else "sentences, series and sequences"
        raise UsageError(f"--data-in-memory no streams a .npy file, a folder of .npy shards or an image folder; "
                         f"{what} are loaded in memory: drop --data-in-memory no")
    if tokens is not None:  # sentences (data.text)
        from .text import load_text_data
        if window is not None:
            raise UsageError("--tokens reads sentences and --window cuts a series; give one of them")
        if str(source) in DATASETS:
            raise UsageError(f"--tokens reads a text file of sentences; {source} is a built-in image dataset")
        return load_text_data(source, tokens=tokens, val_fraction=val_fraction, test_fraction=test_fraction,
                              seed=seed, vocab_size=vocab_size, max_len=max_len)
    if vocab_size is not None or max_len is not None:
        raise UsageError("--vocab-size and --max-len are for sentences; give --tokens char|word too")
    if window is not None:  # a series cut into windows (data.sequences)
        from .sequences import load_series_data
        if str(source) in DATASETS:
            raise UsageError(f"--window cuts a series (a CSV or .npy file) into windows; {source} is a built-in "
                             "image dataset")
        for flag, v in (("--condition", condition), ("--condition-columns", condition_columns),
                        ("--labels-per-class", labels_per_class)):
            if v:
                raise UsageError(f"{flag} is not offered for series windows; drop it")
        if binarize != "none":
            raise UsageError("--binarize is for images in [0, 1]; a series is scaled per channel instead")
        return load_series_data(source, window=window, stride=stride, val_fraction=val_fraction,
                                test_fraction=test_fraction, label_column=label_column, mask_anomalies=mask_anomalies)
    if stride != 1:
        raise UsageError("--stride spaces the windows of a series; give --window too")
    if not mask_anomalies:
        raise UsageError("--mask-anomalies is for series with a label column (--window); drop it")
    if sequences and str(source) not in DATASETS and Path(str(source)).suffix.lower() in (".npz", ".npy"):
        from .sequences import load_sequences_data  # many sequences (N, T, D) for a recurrent model
        return load_sequences_data(source, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if binarize not in BINARIZE:
        raise UsageError(f"unknown binarize {binarize!r}; valid: {', '.join(BINARIZE)}")
    for nm, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise UsageError(f"{nm} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1:
        raise UsageError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise UsageError(f"image_size must be a positive integer, got {image_size!r}")
    if labels_per_class is not None and labels_per_class < 1:
        raise UsageError(f"--labels-per-class must be at least 1, got {labels_per_class}")
    src = str(source)
    if data_in_memory != "yes" and src not in DATASETS:
        from .stream import should_stream, stream_data

        p = Path(src).expanduser()
        if should_stream(p, image_size, data_in_memory):
            return stream_data(p, image_size=image_size, val_fraction=val_fraction, test_fraction=test_fraction,
                               seed=seed, refused={"--binarize": binarize != "none", "--condition": condition,
                                                   "--condition-columns": condition_columns,
                                                   "--labels-per-class": labels_per_class})
    if src in DATASETS:
        if condition_columns:
            raise UsageError(f"--condition-columns picks columns of a CSV file; {src} is a built-in image dataset")
        kind_of_source, raw = "dataset", DATASETS.get(src)(data_dir, download)
    else:
        p = Path(src).expanduser()
        if not p.exists() and not any(c in src for c in "/\\~") and not p.suffix:
            DATASETS.get(src)  # not a path either: the registry's "unknown dataset ... did you mean"
        if condition_columns and p.suffix.lower() not in (".csv", ".tsv"):
            raise UsageError(f"--condition-columns picks columns of a CSV file; {src} is not one")
        kind_of_source, raw = _read_path(p, image_size, label_column, condition_columns=condition_columns)
        src = str(p.resolve())
    if condition is not None:
        if "all" not in raw.parts:
            raise UsageError(f"--condition pairs a file with data that has no fixed split; {source} comes split")
        if raw.conds is not None:
            raise UsageError(f"{source} already carries a condition (c); drop --condition or the c in the data")
        raw.conds = {"all": _paired_condition(condition, len(raw.parts["all"][0]), image_size)}
    kind = raw.kind
    if binarize != "none" and kind == "continuous":
        raise UsageError(f"binarize={binarize!r} needs values in [0, 1], but {source} is real-valued (continuous)")
    ys = [y for _, y in raw.parts.values()]
    folder_names = kind_of_source == "images"  # subfolder names: class names as written
    classes = None
    if all(y is not None for y in ys):
        _, classes = _encode_labels(np.concatenate(ys), src, raw.info.get("classes"), names=folder_names)
    elif labels_per_class is not None:
        raise UsageError(f"--labels-per-class hides labels, but {source} has none; give data with labels "
                         "(a class-per-subfolder image folder, a CSV --label-column, or an .npz with y)")
    cond_kind = None
    conds = {}
    for k in raw.parts:
        c = None if raw.conds is None else raw.conds[k]
        conds[k], cond_kind = (None, None) if c is None else _prepare_condition(c)
    parts = {k: (_scale(x, kind), None if y is None else _encode_labels(y, src, classes, names=folder_names)[0], conds[k])
             for k, (x, y) in raw.parts.items()}
    shape = tuple(next(iter(parts.values()))[0].shape[1:])
    if image_size is not None and kind_of_source != "images" and shape[-2:] != (image_size, image_size):
        raise UsageError(f"--image-size resizes image folders only; {source} examples are {shape}")
    rng = np.random.default_rng(seed % 2**64)
    if "all" in parts:
        n = len(parts["all"][0])
        counts = [_count(test_fraction, n), _count(val_fraction, n)]
        train, test, val = _carve(parts["all"], counts, rng)
    else:
        train, test = parts["train"], parts["test"]
        val = parts.get("val")
        if val is None:
            train, val = _carve(train, [_count(val_fraction, len(train[0]))], rng)
    if len(train[0]) < 1:
        raise DataError(f"{source}: too few examples ({sum(len(s[0]) for s in (train, val, test))}) to split")
    splits = {"train": train, "val": val, "test": test}
    std = cond_std = None
    if kind == "continuous":
        xt = train[0]
        std = _standardizer(xt if xt.ndim == 2 else xt.reshape(-1, 1))  # per feature for tables, else one pair
        splits = {k: (_standardize(x, std), y, c) for k, (x, y, c) in splits.items()}
    if cond_kind == "continuous":
        ct = train[2]
        cond_std = _standardizer(ct if ct.ndim == 2 else ct.reshape(-1, 1))
        splits = {k: (x, y, _standardize(c, cond_std)) for k, (x, y, c) in splits.items()}
    out: dict[str, Split] = {}
    for k, (x, y, c) in splits.items():
        x = x.to(torch.float32).contiguous()
        if binarize == "static" or (binarize == "dynamic" and k != "train"):
            x = _bernoulli(x, seed, k)
        out[k] = Split(x, None if y is None else torch.as_tensor(y, dtype=torch.int64),
                       None if c is None else c.to(torch.float32).contiguous())
    if labels_per_class is not None:
        out["train"] = out["train"].replace(y=hide_labels(out["train"].y, labels_per_class, label_seed, classes))
    info = {k: v for k, v in raw.info.items() if k != "classes"}
    if "color" not in info and len(shape) == 3:
        info["color"] = {1: "L", 3: "RGB"}.get(shape[0])
    record = {"source": src, "kind_of_source": kind_of_source, "kind": kind, "binarize": binarize,
              "image_size": image_size, "color": info.pop("color", None), "standardize": std,
              "label_column": info.pop("label_column", label_column), "classes": classes, "seed": seed,
              "val_fraction": val_fraction, "test_fraction": test_fraction, **info}
    if cond_kind is not None:
        record.update(condition=str(Path(condition).expanduser().resolve()) if condition else None,
                      condition_kind=cond_kind, condition_standardize=cond_std)
    if labels_per_class is not None:
        record.update(labels_per_class=labels_per_class, label_seed=label_seed,
                      labelled=int((out["train"].y != UNLABELLED).sum()))
    cond_shape = None if out["train"].c is None else tuple(out["train"].c.shape[1:])
    spec = DataSpec(shape, "binary" if binarize != "none" else kind, None if classes is None else len(classes),
                    cond_shape)
    return Data(spec, out["train"], out["val"], out["test"], record, binarize == "dynamic")


def load_inputs(path: str, spec: DataSpec, source: dict, *, allow_missing: bool = False,
                labels: str = "any") -> Split:
    """Prepare NEW inputs (image folder, ``.npy``/``.npz``, ``.csv``, IDX) like the data ``source`` describes.

    Images are resized to ``spec``'s (H, W) and converted to the training colour mode; tables are
    standardised with the training statistics; binarized models get a seeded, deterministic
    binarization. Returns a Split with x float32 (N, *spec.shape) and y when the input has labels.
    Raises DataError when the result does not match ``spec`` (shape or value range).
    NaN values are refused unless ``allow_missing``: then they stay NaN in x (missing values, e.g.
    for ``vaekit impute``), empty CSV cells included, and only the observed values are checked.
    Labels are the run's class indices (matched by name: a subfolder "Sneaker" of a Fashion-MNIST
    run is class 7); classes the run does not have come after its own (indices >= its number of
    classes), or with ``labels="run"`` are refused (a classifier's accuracy, a conditional model).
    """
    p = Path(path).expanduser()
    if source.get("kind_of_source") in ("series", "sequences"):  # windows / sequences with their masks
        from .sequences import load_sequence_inputs

        return load_sequence_inputs(p, spec, source)
    if source.get("kind_of_source") == "text":
        from .text import load_text_inputs

        return load_text_inputs(p, spec, source)
    size = spec.shape[1:] if spec.is_image else None
    color = source.get("color") or ({1: "L", 3: "RGB"}.get(spec.shape[0]) if spec.is_image else None)
    if p.is_dir() and not spec.is_image:
        raise DataError(f"{p} is an image folder, but the model expects vectors of shape {spec.shape}")
    read_as, raw = _read_path(p, size, source.get("label_column"), color, need_label=False,
                              allow_missing=allow_missing, condition_columns=source.get("condition_columns"))
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
    codes = None if y is None else torch.from_numpy(_input_labels(y, p, spec, source, read_as == "images", labels))
    return Split(t, codes, _input_condition(raw, p, spec, source))


def _input_labels(y: np.ndarray, p: Path, spec: DataSpec, source: dict, names: bool, labels: str) -> np.ndarray:
    """New inputs' labels as the run's class indices (``load_inputs``)."""
    known = source.get("classes") or (list(range(spec.num_classes)) if spec.num_classes else None)
    codes, classes = _encode_labels(y, p, known, names=names, extend=True)
    if known is not None and labels == "run" and len(classes) > len(known):
        new = [str(c) for c in classes[len(known):]]
        shown = ", ".join(map(repr, new[:5])) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        run_classes = ", ".join(str(c) for c in known[:12]) + (", ..." if len(known) > 12 else "")
        raise DataError(f"{p}: label(s) {shown} are not classes of this run ({run_classes}); give inputs "
                        "labelled with the run's classes, or without labels")
    return codes


def _input_condition(raw: _Raw, p: Path, spec: DataSpec, source: dict) -> torch.Tensor | None:
    """The condition that came with new inputs, prepared like the training conditions (or None)."""
    if raw.conds is None or spec.cond_shape is None:
        return None
    c, _ = _prepare_condition(raw.conds["all"])
    if source.get("condition_standardize"):
        c = _standardize(c.to(torch.float64), source["condition_standardize"])
    if tuple(c.shape[1:]) != spec.cond_shape:
        raise DataError(f"{p}: conditions have shape {tuple(c.shape[1:])}, the model expects {spec.cond_shape}")
    return c.to(torch.float32).contiguous()

