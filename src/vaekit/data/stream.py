"""Training data that stays on disk: splits read a batch at a time (``--data-in-memory no|auto``).

``stream_data`` returns the same :class:`~vaekit.data.datasets.Data` as ``load_data`` -- the same
spec, the same seeded train/val/test split of the same examples, the same values -- but each split
is a :class:`StreamSplit`: the examples stay in a ``.npy`` file, a folder of ``.npy`` shards or an
image folder, and only their indices (and labels) are in memory. A StreamSplit answers what the
trainer and the metrics ask of an in-memory split (``len``, slices ``s[i:j]`` -> Batch,
``select(order)``, ``to(device)``, ``y``, ``labelled``), so the trainer shuffles an epoch by
composing index arrays and reads one batch at a time, with the next one read ahead on a
background thread while the current one trains. The batches hold exactly the values the
in-memory path gives (uint8/255 computed the same way), so training is the same.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError, UsageError
from .batch import UNLABELLED, Batch
from .shards import RowStore, is_shard_folder, label_names, open_shard_folder, _header, check_dtype
from .spec import DataSpec

IN_MEMORY = ("auto", "yes", "no")
#: "auto" keeps data in memory when its float32 copy, held twice while training (the data and an
#: epoch's shuffled copy), takes at most this share of the memory available now.
AUTO_SHARE = 0.5
READ_AHEAD_BYTES = 64 << 20  # the largest slice read ahead (float32)
_AHEAD: ThreadPoolExecutor | None = None


def _ahead_pool() -> ThreadPoolExecutor:
    global _AHEAD
    if _AHEAD is None:
        _AHEAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaekit-read-ahead")
    return _AHEAD


def memory_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fits_in_memory(n: int, dim: int) -> bool:
    avail = memory_available()
    return avail is None or 2 * 4 * n * dim <= AUTO_SHARE * avail


class StreamSplit:
    """Examples ``rows`` of ``store`` read on demand; quacks like an in-memory split (a Batch).

    rows: int64 (N,) indices into the store; y: int64 (N,) labels or None (kept in memory);
    transform: raw rows (B, *shape) -> float32 tensor (B, *shape), the in-memory path's scaling.
    ``s[i:j]`` and ``gather(index)`` give a Batch on ``device``; slices taken in order are read
    one ahead on a background thread.
    """

    c = None
    mask = None
    is_split = True  # (batch.as_batch passes it on as it is)

    def __init__(self, store: Any, rows: np.ndarray, y: torch.Tensor | None,
                 transform: Callable[[np.ndarray], torch.Tensor], device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> None:
        self.store, self.rows, self.y, self.transform = store, np.asarray(rows, np.int64), y, transform
        self.device, self.dtype = torch.device(device), dtype
        self._ahead: dict[tuple[int, int], Future] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"StreamSplit(n={len(self)}, shape={tuple(self.store.shape)}, y={self.y is not None})"

    def _view(self, rows: np.ndarray, y: torch.Tensor | None) -> "StreamSplit":
        return StreamSplit(self.store, rows, y, self.transform, self.device, self.dtype)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None, non_blocking: bool = False) -> "StreamSplit":
        """The same split, its batches delivered on ``device`` (floating fields in ``dtype``)."""
        out = self._view(self.rows, self.y)
        out.device, out.dtype = torch.device(device), dtype if dtype is not None else self.dtype
        return out

    def select(self, index: torch.Tensor) -> "StreamSplit":
        """Rows ``index`` of this split, in that order; lazy (an epoch's shuffle costs no reads)."""
        idx = torch.as_tensor(index).cpu().numpy().astype(np.int64, copy=False)
        return self._view(self.rows[idx], None if self.y is None else self.y[torch.from_numpy(idx)])

    @property
    def labelled(self) -> torch.Tensor | None:
        return None if self.y is None else self.y != UNLABELLED

    def gather(self, index: np.ndarray | torch.Tensor) -> Batch:
        """Examples ``index`` (positions in this split) as a Batch on this split's device."""
        idx = np.asarray(torch.as_tensor(index).cpu().numpy() if isinstance(index, torch.Tensor) else index, np.int64)
        x = self.transform(self.store.read(self.rows[idx]))
        y = None if self.y is None else self.y[torch.from_numpy(idx)]
        b = Batch(x, y)
        if self.device.type != "cpu" or self.dtype is not None:
            b = b.to(self.device, self.dtype, non_blocking=False)
        return b

    def _slice(self, start: int, stop: int) -> Batch:
        return self.gather(np.arange(start, stop))

    def __getitem__(self, index: slice) -> Batch:
        if not isinstance(index, slice):
            raise TypeError("a split is sliced with a slice; use gather() or select() for index arrays")
        start, stop, step = index.indices(len(self))
        if step != 1:
            return self.gather(np.arange(start, stop, step))
        stop = max(start, stop)
        fut = self._ahead.pop((start, stop), None)
        out = fut.result() if fut is not None else self._slice(start, stop)
        nxt = (stop, min(len(self), stop + (stop - start)))
        small = 4 * (nxt[1] - nxt[0]) * math.prod(self.store.shape) <= READ_AHEAD_BYTES  # a batch, not a bulk read
        if small and nxt[0] < nxt[1] and nxt not in self._ahead:
            self._ahead = {k: v for k, v in self._ahead.items() if k[0] >= start}  # drop the stale ones
            self._ahead[nxt] = _ahead_pool().submit(self._slice, *nxt)
        return out

    @property
    def x(self) -> torch.Tensor:
        """Every example of the split in memory (for small splits, e.g. a report's test examples)."""
        return self._slice(0, len(self)).x

    def items(self):
        return self._slice(0, len(self)).items()


# -- images decoded on the fly ---------------------------------------------------------------------
def _decode(files: list[str], size: tuple[int, int], color: str) -> np.ndarray:
    from .readers import read_images

    x, got = read_images([Path(f) for f in files], size, color)
    return x


def _grey(files: list[str]) -> bool:
    """True when every image of ``files`` is grey (R = G = B), as ``read_images`` decides."""
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise DataError(f"cannot read image {f}: {' '.join(str(e).split())}") from None
        if not ((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()):
            return False
    return True


def worker_pool(workers: int | None = None):
    """A process pool for image decoding (spawned: no forked torch threads), or None for 1 worker."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    n = workers if workers is not None else min(4, os.cpu_count() or 1)
    return None if n <= 1 else ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"))


class ImageRows:
    """An image folder as rows: file i decoded (resized, colour-converted) when its row is read,
    by a pool of worker processes. The colour mode is fixed once, by a first pass (grey when every
    image is grey, as for the folder read in memory)."""

    kind_of_source = "images"

    def __init__(self, root: Path, image_size: int | None, workers: int | None = None) -> None:
        from .readers import common_size, folder_labels, list_images

        self.root = root
        files = list_images(root)
        self.files = [str(f) for f in files]
        self.size = (image_size, image_size) if image_size else common_size(root, files)
        self.labels = folder_labels(root, files)
        self.pool = worker_pool(workers)
        parts = [self.files[i:i + 256] for i in range(0, len(self.files), 256)]
        grey = self.pool.map(_grey, parts) if self.pool else map(_grey, parts)
        self.color = "L" if all(grey) else "RGB"
        self.shape = (1 if self.color == "L" else 3, *self.size)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, rows: np.ndarray) -> np.ndarray:
        names = [self.files[i] for i in np.asarray(rows).tolist()]
        if self.pool is None or len(names) < 16:
            return _decode(names, self.size, self.color) if names else np.empty((0, *self.shape), np.uint8)
        k = -(-len(names) // self.pool._max_workers)  # noqa: SLF001
        parts = self.pool.map(_decode, [names[i:i + k] for i in range(0, len(names), k)],
                              [self.size] * len(names[::k]), [self.color] * len(names[::k]))
        return np.concatenate(list(parts))

    def chunks(self, rows: np.ndarray, max_bytes: int = 64 << 20):
        step = max(1, max_bytes // int(np.prod(self.shape)))
        for i in range(0, len(rows), step):
            yield rows[i:i + step], self.read(rows[i:i + step])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "pool": None}


# -- choosing and building -------------------------------------------------------------------------
def open_source(p: Path, image_size: int | None, required: bool) -> tuple[Any, dict, np.ndarray | None] | None:
    """What can stream from ``p``: (rows, manifest, stored labels) for a shard folder, a ``.npy`` or an
    image folder, else None. ``required`` (--data-in-memory no): refuse what cannot stream, naming the fix."""
    if p.is_dir():
        if is_shard_folder(p):
            return open_shard_folder(p)
        return ImageRows(p, image_size), {}, None
    if p.suffix.lower() == ".npy" and p.is_file():
        return RowStore([p]), {}, None
    if required:
        what = "does not exist" if not p.exists() else f"is a {p.suffix or 'file'} file, which is read whole"
        raise UsageError(f"--data-in-memory no streams a .npy file, a folder of .npy shards or an image folder; {p} "
                         f"{what}; convert it first (vaekit prepare {p} --out SHARDS) or drop --data-in-memory no")
    return None


def should_stream(p: Path, image_size: int | None, mode: str) -> bool:
    """Whether ``mode`` ("auto"/"no") streams ``p``; "auto" streams what would not fit in memory,
    judged from file headers only (no decoding)."""
    if mode == "no":
        return True
    try:
        if p.is_dir() and is_shard_folder(p):
            store = open_shard_folder(p)[0]
            return not fits_in_memory(len(store), math.prod(store.shape))
        if p.is_dir():
            from .readers import IMAGE_EXTS

            files = [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS]
            if not files:
                return False
            if image_size:
                h = w = image_size
            else:
                from PIL import Image

                with Image.open(files[0]) as im:
                    w, h = im.size
            return not fits_in_memory(len(files), 3 * h * w)
        if p.suffix.lower() == ".npy" and p.is_file():
            shape, dtype, _, _ = _header(p)
            check_dtype(dtype, p)
            return len(shape) > 1 and not fits_in_memory(shape[0], math.prod(shape[1:]))
    except (DataError, UsageError, OSError):
        return False  # the in-memory reader reports it
    return False


def scan_kind(store: RowStore, where: Path | str) -> str:
    """``readers.array_kind`` of the whole array, a chunk at a time (and NaN/inf refused, as
    ``to_examples`` does); used when no manifest records the kind."""
    if store.dtype == bool:
        return "binary"
    binary, lo, hi, start = True, math.inf, -math.inf, 0
    for rows, a in store.chunks(np.arange(len(store))):
        if a.dtype.kind == "f":
            bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
            if bad.any():
                raise DataError(f"{where}: example {start + int(bad.argmax())} holds NaN or infinite values; "
                                "drop or fill them")
        binary = binary and bool(((a == 0) | (a == 1)).all())
        if not binary and a.dtype.kind != "f":
            return "8bit" if store.dtype == np.uint8 else "continuous"
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        start += len(a)
    if binary:
        return "binary"
    return "unit" if lo >= 0 and hi <= 1 else "continuous"


def _train_stats(store: Any, rows: np.ndarray, per_feature: bool) -> dict[str, list[float]]:
    """Mean and population std (constant features: 1) of the training rows, in float64, two passes
    a chunk at a time: per feature for tables, one pair for other shapes (as ``_standardizer``)."""
    def parts():
        for _, a in store.chunks(rows):
            a = a.astype(np.float64)
            yield a.reshape(len(a), -1) if per_feature else a.reshape(-1, 1)
    s1, lo, hi, n = 0.0, None, None, 0
    for a in parts():
        s1 = s1 + a.sum(0)
        lo = a.min(0) if lo is None else np.minimum(lo, a.min(0))
        hi = a.max(0) if hi is None else np.maximum(hi, a.max(0))
        n += len(a)
    mean = s1 / n
    s2 = sum(((a - mean) ** 2).sum(0) for a in parts())
    sd = np.where(lo == hi, 1.0, np.sqrt(s2 / n))
    return {"mean": mean.tolist(), "std": sd.tolist()}


def stream_data(p: Path, *, image_size: int | None, val_fraction: float, test_fraction: float, seed: int,
                refused: dict[str, Any]):
    """``load_data`` for data left on disk (see the module docstring): the same seeded split, labels,
    kind and scaling as the in-memory path, as StreamSplits. ``refused``: flag -> value of the
    options that need the data in memory (binarization, conditions, hidden labels)."""
    from .datasets import Data, _count, _encode_labels, _scale, _standardize

    for flag, v in refused.items():
        if v:
            raise UsageError(f"{flag} needs the data in memory, and it is streamed from disk; drop {flag} "
                             "or use --data-in-memory yes")
    store, manifest, labels = open_source(p, image_size, True)
    src, n, shape = str(p.resolve()), len(store), tuple(store.shape)
    images = isinstance(store, ImageRows)
    if image_size is not None and not images and shape[-2:] != (image_size, image_size):
        raise UsageError(f"--image-size resizes image folders only; {p} examples are {shape}")
    kind = manifest.get("kind") or ("8bit" if images else scan_kind(store, p))
    names = store.labels if images else label_names(labels, manifest.get("classes"))
    y_all, classes = None, None
    if names is not None:
        y_np, classes = _encode_labels(names, src, manifest.get("classes"), names=images)  # (folder names as written)
        y_all = torch.from_numpy(y_np)
    rng = np.random.default_rng(seed % 2**64)  # datasets._carve's draw, on indices alone
    counts = [_count(test_fraction, n), _count(val_fraction, n)]
    perm, ends = rng.permutation(n), np.cumsum(counts)
    train, test, val = [np.sort(i) for i in [perm[ends[-1]:]] + [perm[e - c:e] for c, e in zip(counts, ends)]]
    if len(train) < 1:
        raise DataError(f"{p}: too few examples ({n}) to split")
    std = _train_stats(store, train, len(shape) == 1) if kind == "continuous" else None

    def transform(raw: np.ndarray) -> torch.Tensor:
        t = _scale(raw, kind)
        return (t if std is None else _standardize(t, std)).to(torch.float32).contiguous()

    def split(rows: np.ndarray) -> StreamSplit:
        return StreamSplit(store, rows, None if y_all is None else y_all[torch.from_numpy(rows)], transform)

    color = store.color if images else manifest.get("color") or ({1: "L", 3: "RGB"}.get(shape[0]) if len(shape) == 3 else None)
    record = {"source": src, "kind_of_source": "images" if images else ("shards" if p.is_dir() else "array"),
              "kind": kind, "binarize": "none", "image_size": image_size, "color": color, "standardize": std,
              "label_column": manifest.get("label_column"), "classes": classes, "seed": seed,
              "val_fraction": val_fraction, "test_fraction": test_fraction, "streamed": True}
    if manifest.get("columns"):
        record["columns"] = manifest["columns"]
    spec = DataSpec(shape, kind, None if classes is None else len(classes))
    return Data(spec, split(train), split(val), split(test), record, False)
