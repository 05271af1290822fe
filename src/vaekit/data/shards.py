"""Arrays on disk, read a few rows at a time: one ``.npy`` file, or a folder of ``.npy`` shards.

A shard folder is what ``vaekit prepare`` writes (``manifest.json`` plus ``shard-000000.npy``...,
and ``labels.npy`` when the examples have classes), or any folder of ``.npy`` files that agree in
example shape and dtype (taken in file-name order, no labels).

Rows are read with ``os.preadv`` straight into the batch's own buffer, never through a memory map:
random access over a file larger than memory then leaves the process's resident memory at a batch
or two, because the pages read sit in the kernel's page cache (reclaimed by the kernel, not counted
in the process's RSS). A memory map touched at random keeps every page it touched resident.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

MANIFEST = "manifest.json"
FORMAT = "vaekit-shards"
LABELS = "labels.npy"
_IOV_MAX = 1024  # buffers per preadv call (Linux's IOV_MAX)


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) of a ``.npy`` file, from its header alone."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:  # 3.0 (utf-8 field names): same layout as 2.0
                shape, fortran, dtype = fmt._read_array_header(f, version)  # noqa: SLF001
            offset = f.tell()
    except FileNotFoundError:
        raise DataError(f"no such file or directory: {path}") from None
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as a .npy file: {' '.join(str(e).split())}") from None
    return tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), offset


def check_dtype(dtype: np.dtype, where: Path | str) -> None:
    """Only plain numbers train: bool, integers and floats (not objects, complex, strings, records)."""
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(f"{where}: dtype {dtype} cannot be trained on; save a numeric array of bool, integer or "
                        f"float values (e.g. np.save(path, x.astype(np.float32)))")


def example_layout(shape: tuple[int, ...], where: Path | str) -> tuple[tuple[int, ...], bool]:
    """The per-example shape vaekit uses for arrays of ``shape`` (N, ...), and whether rows are stored
    channels-last (N, H, W, C) and must be transposed; the same rules as ``readers.to_examples``."""
    if len(shape) == 3:
        return (1, *shape[1:]), False
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return (shape[3], shape[1], shape[2]), True
    if len(shape) not in (2, 4):
        raise DataError(f"{where}: expected examples shaped (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W), got {shape}")
    if 0 in shape:
        raise DataError(f"{where}: no data (shape {shape})")
    return tuple(shape[1:]), False


class RowStore:
    """Rows of one or more ``.npy`` files seen as one array of examples, in the files' order.

    shape: per-example shape after ``example_layout`` (e.g. (C, H, W)); dtype: the files' dtype;
    ``read(rows)`` returns the rows asked for, in that order, as (len(rows), *shape) of that dtype.
    """

    def __init__(self, files: list[Path], where: Path | str | None = None) -> None:
        self.files = list(files)
        self.where = str(where or files[0])
        heads = [_header(f) for f in self.files]
        first = heads[0]
        for f, (shape, dtype, _, _) in zip(self.files, heads):
            check_dtype(dtype, f)
            if shape[1:] != first[0][1:] or dtype != first[1]:
                raise DataError(f"{self.where}: the shards disagree: {self.files[0].name} holds examples shaped "
                                f"{first[0][1:]} of {first[1]}, {f.name} {shape[1:]} of {dtype}; every shard must hold "
                                "one shape and dtype (write them again, e.g. with vaekit prepare)")
        self.shape, self.channels_last = example_layout((sum(h[0][0] for h in heads), *first[0][1:]), self.where)
        self.stored_shape = first[0][1:]
        self.dtype = first[1]
        self.row_bytes = int(np.prod(self.stored_shape, dtype=np.int64)) * self.dtype.itemsize
        counts = np.array([h[0][0] for h in heads], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.offsets = [h[3] for h in heads]
        for f, (shape, _, fortran, off), n in zip(self.files, heads, counts):
            if fortran and len(shape) > 1 and n > 1:
                raise DataError(f"{f} is stored in Fortran (column-major) order, so its examples are not contiguous; "
                                "save it C-ordered: np.save(path, np.ascontiguousarray(x))")
            need = off + int(n) * self.row_bytes
            if os.path.getsize(f) < need:
                raise DataError(f"{f} is truncated: its header says {shape} of {self.dtype}, which needs {need} bytes, "
                                f"and the file has {os.path.getsize(f)}")
        self._fds: list[int] | None = None
        self._pid = -1
        self._open()  # now, not on a read-ahead thread (a copy in a worker process opens its own)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def _open(self) -> list[int]:
        if self._fds is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fds = [os.open(f, os.O_RDONLY) for f in self.files]
            self._pid = os.getpid()
        return self._fds

    def close(self) -> None:
        if self._fds is not None and self._pid == os.getpid():
            for fd in self._fds:
                os.close(fd)
        self._fds = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes: without open files
        return {**self.__dict__, "_fds": None, "_pid": -1}

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (int64, any order, repeats allowed) as (len(rows), *shape)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} examples")
        out = np.empty((len(rows), *self.stored_shape), self.dtype)
        if len(rows):
            self._read_into(rows, out.reshape(len(rows), -1).view(np.uint8))
        if self.channels_last:
            out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
        return out.reshape(len(rows), *self.shape)

    def _read_into(self, rows: np.ndarray, flat: np.ndarray) -> None:
        """Read file rows in ascending order, one ``preadv`` per run of consecutive rows of one file,
        each row scattered straight to its place in ``flat`` (len(rows), row_bytes)."""
        fds = self._open()
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        fidx = np.searchsorted(self.starts, srt, side="right") - 1
        brk = np.flatnonzero((np.diff(srt) != 1) | (np.diff(fidx) != 0)) + 1
        bounds = np.concatenate([[0], brk, [len(srt)]]).tolist()
        order_l, srt_l, fidx_l = order.tolist(), srt.tolist(), fidx.tolist()
        rb = self.row_bytes
        for s, e in zip(bounds[:-1], bounds[1:]):
            f = fidx_l[s]
            off = self.offsets[f] + (srt_l[s] - int(self.starts[f])) * rb
            for c in range(s, e, _IOV_MAX):
                bufs = [flat[d] for d in order_l[c:min(e, c + _IOV_MAX)]]
                got = os.preadv(fds[f], bufs, off)
                if got != len(bufs) * rb:
                    raise DataError(f"{self.files[f]}: short read ({got} of {len(bufs) * rb} bytes); the file changed "
                                    "or is truncated")
                off += got

    def chunks(self, rows: np.ndarray, max_bytes: int = 64 << 20):
        """``read`` of ``rows`` in pieces of at most ``max_bytes`` (for passes over the whole data)."""
        step = max(1, max_bytes // max(1, self.row_bytes))
        for i in range(0, len(rows), step):
            yield rows[i:i + step], self.read(rows[i:i + step])


# -- shard folders ---------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest (None without one); DataError when it is not one of ours."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable JSON manifest ({e}); write the folder again with vaekit prepare") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("shards"), list):
        raise DataError(f"{path} is not a vaekit shard manifest (format {FORMAT!r}); write the folder with vaekit prepare")
    return m


def is_shard_folder(folder: Path) -> bool:
    """A folder with a vaekit manifest, or one whose top level holds .npy files and no subfolders."""
    if (folder / MANIFEST).is_file():
        return True
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    return any(e.suffix.lower() == ".npy" and e.is_file() for e in entries) and not any(e.is_dir() for e in entries)


def open_shard_folder(folder: Path) -> tuple[RowStore, dict[str, Any], np.ndarray | None]:
    """(rows, manifest or {}, labels as int64 indices into manifest["classes"] with -1 unlabelled, or None)."""
    m = read_manifest(folder)
    if m is None:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".npy" and f.is_file())
        if not files:
            raise DataError(f"{folder} holds no .npy shards")
        return RowStore(files, folder), {}, None
    files = [folder / s["file"] for s in m["shards"]]
    if not files:
        raise DataError(f"{folder}: the manifest lists no shards")
    store = RowStore(files, folder)
    counts = [int(s.get("count", -1)) for s in m["shards"]]
    if counts != np.diff(store.starts).tolist() or (m.get("shape") and list(store.shape) != list(m["shape"])):
        raise DataError(f"{folder}: the shards do not match the manifest (examples per shard or shape); "
                        "write the folder again with vaekit prepare")
    labels = None
    if m.get("labels"):
        try:
            labels = np.load(folder / m["labels"], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the labels {folder / m['labels']}: {e}") from None
        if labels.shape != (len(store),) or labels.dtype.kind not in "iu":
            raise DataError(f"{folder / m['labels']}: expected {len(store)} integer labels, got {labels.shape} {labels.dtype}")
    return store, m, labels


def label_names(labels: np.ndarray | None, classes: list | None) -> np.ndarray | None:
    """Stored label indices -> the class values a reader gives (names or numbers as text; "" for -1),
    so that ``datasets._encode_labels`` treats shards exactly like the folder or table they came from."""
    if labels is None or not classes:
        return None
    names = np.array([str(c) for c in classes] + [""])
    return names[np.where(labels < 0, len(classes), labels)]


def read_shard_folder(folder: Path) -> tuple[np.ndarray, np.ndarray | None, str | None, dict[str, Any]]:
    """The whole shard folder in memory: (x (N, ...) in stored layout, label values or None, kind or None, info)."""
    store, m, labels = open_shard_folder(folder)
    x = store.read(np.arange(len(store)))
    info = {k: m[k] for k in ("color", "columns", "label_column", "classes") if m.get(k) is not None}
    return x, label_names(labels, m.get("classes")), m.get("kind"), info
