"""``vaekit prepare``: an image folder or a CSV table -> a folder of ``.npy`` shards plus a manifest.

Images are decoded once (in parallel worker processes) and stored as uint8 (C, H, W), a quarter of
their float32 size; tables as float32 (D,). Both are streamed: a bounded number of images or rows
is in memory at a time, so the source may be larger than memory. The folder is written under a
temporary name and renamed into place at the end, so a failed or interrupted run leaves nothing.
Training reads the folder like any data (``--data SHARDS``), in memory or streamed
(``--data-in-memory``), with the same labels, colour mode and values as the source itself gives.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import DataError, UsageError
from .shards import FORMAT, LABELS, MANIFEST

DEFAULT_SHARD_BYTES = 256 << 20
_CHUNK = 256  # images per decoding task


def parse_shard_size(text: str | int | None) -> tuple[int | None, int | None]:
    """"10000" -> (10000 examples, None); "256MB" / "1GB" / "512KB" -> (None, bytes); None -> default bytes."""
    if text is None:
        return None, DEFAULT_SHARD_BYTES
    if isinstance(text, int):
        text = str(text)
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]i?[bB]?)?\s*", text)
    if not m or int(m.group(1)) < 1:
        raise UsageError(f"--shard-size must be a number of examples (e.g. 10000) or a size (e.g. 256MB), got {text!r}")
    if not m.group(2):
        return int(m.group(1)), None
    return None, int(m.group(1)) << {"k": 10, "m": 20, "g": 30}[m.group(2)[0].lower()]


class _ShardWriter:
    """Collects arrays of examples and writes them as shard-000000.npy, ... of ``per_shard`` rows."""

    def __init__(self, folder: Path, per_shard: int, log: Callable[[str], None] | None) -> None:
        self.folder, self.per_shard, self.log = folder, per_shard, log
        self.parts: list[np.ndarray] = []
        self.held = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, a: np.ndarray) -> None:
        self.parts.append(a)
        self.held += len(a)
        while self.held >= self.per_shard:
            self._write(self.per_shard)

    def _write(self, n: int) -> None:
        allx = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        name = f"shard-{len(self.shards):06d}.npy"
        np.save(self.folder / name, allx[:n])
        self.shards.append({"file": name, "count": int(n)})
        rest = allx[n:]
        self.parts, self.held = ([rest] if len(rest) else []), len(rest)
        if self.log:
            self.log(f"wrote {name} ({n} examples)")

    def finish(self) -> None:
        if self.held:
            self._write(self.held)

    def to_rgb(self) -> None:
        """Grey shards written so far (and held rows) become RGB: the grey value in each channel,
        as ``read_images`` does when a colour image follows grey ones."""
        for s in self.shards:
            a = np.load(self.folder / s["file"])
            np.save(self.folder / s["file"], np.repeat(a, 3, axis=1))
        self.parts = [np.repeat(a, 3, axis=1) for a in self.parts]


def _decode_chunk(files: list[str], size: tuple[int, int]) -> tuple[np.ndarray, str]:
    from .readers import read_images

    return read_images([Path(f) for f in files], size, None)


def _prepare_images(root: Path, tmp: Path, image_size: int | None, shard: tuple[int | None, int | None],
                    workers: int | None, log: Callable[[str], None] | None) -> dict[str, Any]:
    from .datasets import _encode_labels
    from .readers import common_size, folder_labels, list_images
    from .stream import worker_pool

    files = list_images(root)
    size = (image_size, image_size) if image_size else common_size(root, files)
    names = folder_labels(root, files)
    labels, classes = _encode_labels(names, root, names=True) if names is not None else (None, None)
    per = shard[0] or max(1, shard[1] // (3 * size[0] * size[1]))
    tmp.mkdir(parents=True)
    writer = _ShardWriter(tmp, per, log)
    color = "L"
    parts = [[str(f) for f in files[i:i + _CHUNK]] for i in range(0, len(files), _CHUNK)]
    pool = worker_pool(workers) if len(parts) > 1 else None
    try:
        results: Iterator = _ordered(pool, parts, size)
        for x, c in results:
            if c == "RGB" and color == "L":
                writer.to_rgb()
                color = "RGB"
            writer.add(np.repeat(x, 3, axis=1) if color == "RGB" and c == "L" else x)
        writer.finish()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if labels is not None:
        np.save(tmp / LABELS, labels.astype(np.int64))
    return {"kind": "8bit", "dtype": "uint8", "shape": [1 if color == "L" else 3, *size], "shards": writer.shards,
            "labels": LABELS if labels is not None else None, "classes": classes, "kind_of_source": "images",
            "color": color, "image_size": list(size),
            "scale": "value = stored uint8 / 255, in [0, 1] (as an image folder read in memory)"}


def _ordered(pool: Any, parts: list[list[str]], size: tuple[int, int]) -> Iterator[tuple[np.ndarray, str]]:
    """Decoded chunks in order, at most two per worker in flight (bounded memory)."""
    if pool is None:
        for p in parts:
            yield _decode_chunk(p, size)
        return
    ahead: deque = deque()
    todo = iter(parts)
    for p in itertools.islice(todo, 2 * pool._max_workers):  # noqa: SLF001
        ahead.append(pool.submit(_decode_chunk, p, size))
    while ahead:
        out = ahead.popleft().result()
        nxt = next(todo, None)
        if nxt is not None:
            ahead.append(pool.submit(_decode_chunk, nxt, size))
        yield out


def _csv_chunks(path: Path, label_column: str | None, rows_per_chunk: int = 65536):
    """A CSV table a chunk of rows at a time, with ``readers.read_csv``'s rules (delimiter, header,
    label column, blank lines, errors). Yields (names, label name); then (features float64 (n, D),
    label cells (n,) or None) per chunk."""
    from .readers import LABEL_NAMES, is_number

    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DataError(f"cannot read {path} as a text CSV file: {e}") from None
    with f:
        try:
            first = f.readline()
            delim = next((d for d in (",", "\t", ";") if d in first), ",")
            reader = csv.reader(itertools.chain([first], f), delimiter=delim)
            rows = ((r, reader.line_num) for r in reader if r and any(c.strip() for c in r))
            head = next(rows, None)
            if head is None:
                raise DataError(f"{path} holds no rows")
            header = not any(is_number(c) for c in head[0])
            names = [c.strip() for c in head[0]] if header else [str(j + 1) for j in range(len(head[0]))]
            if not header:
                rows = itertools.chain([head], rows)
            if label_column is not None:
                match = [j for j, n in enumerate(names) if n == label_column] or \
                        [j for j, n in enumerate(names) if n.lower() == label_column.lower()]
                if not match:
                    raise UsageError(f"label column {label_column!r} is not in {path}; columns: {', '.join(names)}")
                lab = match[0]
            else:
                lab = next((j for j, n in enumerate(names) if header and n.lower() in LABEL_NAMES), None)
            feat = [j for j in range(len(names)) if j != lab]
            if not feat:
                raise DataError(f"{path}: no feature columns besides the label column")
            yield ([names[j] for j in feat] if header else None), (None if lab is None else names[lab])
            done = 0
            while True:
                block = list(itertools.islice(rows, rows_per_chunk))
                if not block:
                    break
                for i, (r, line) in enumerate(block):
                    if len(r) != len(names):
                        raise DataError(f"{path}: row {done + i + 1} (line {line}) has {len(r)} columns, expected {len(names)}")
                cells = np.array([r for r, _ in block], dtype=str)
                try:
                    x = cells[:, feat].astype(np.float64)
                except ValueError:
                    for i, (r, line) in enumerate(block):
                        for j in feat:
                            if not is_number(r[j]):
                                what = "empty cell" if not r[j].strip() else f"{r[j]!r} is not a number"
                                raise DataError(f"{path}: row {done + i + 1} (line {line}), column {j + 1} "
                                                f"({names[j]}): {what}") from None
                    raise
                bad = np.argwhere(~np.isfinite(x))
                if len(bad):
                    i, j = int(bad[0][0]), feat[int(bad[0][1])]
                    raise DataError(f"{path}: row {done + i + 1} (line {block[i][1]}), column {j + 1} ({names[j]}): "
                                    f"{cells[i, j].strip()!r}; NaN and infinite values are not allowed, drop or fill them first")
                done += len(block)
                yield x, (None if lab is None else np.char.strip(cells[:, lab]))
            if not done:
                raise DataError(f"{path} has a header but no data rows")
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"cannot read {path} as a text CSV file: {e}") from None


def _prepare_csv(path: Path, tmp: Path, label_column: str | None, shard: tuple[int | None, int | None],
                 log: Callable[[str], None] | None) -> dict[str, Any]:
    from .datasets import _encode_labels

    chunks = _csv_chunks(path, label_column)
    cols, lab = next(chunks)
    tmp.mkdir(parents=True)
    writer, cells, width = None, [], None
    for x, y in chunks:
        if writer is None:
            width = x.shape[1]
            writer = _ShardWriter(tmp, shard[0] or max(1, shard[1] // (4 * width)), log)
        writer.add(x.astype(np.float32))
        if y is not None:
            cells.append(y)
    writer.finish()
    labels, classes = (_encode_labels(np.concatenate(cells), path) if cells else (None, None))
    if labels is not None:
        np.save(tmp / LABELS, labels.astype(np.int64))
    return {"kind": "continuous", "dtype": "float32", "shape": [width], "shards": writer.shards,
            "labels": LABELS if labels is not None else None, "classes": classes, "kind_of_source": "csv",
            "columns": cols, "label_column": lab,
            "scale": "value = (stored - mean) / std per column, with the mean and population std of the training "
                     "split, computed when training starts (as a CSV read in memory; values stored as float32)"}


def prepare(source: str | Path, out: str | Path, *, image_size: int | None = None, shard_size: str | int | None = None,
            label_column: str | None = None, workers: int | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Convert an image folder (class subfolders -> labels) or a CSV table (``label_column``) into a
    folder ``out`` of ``.npy`` shards and ``manifest.json``; returns the manifest.

    image_size: resize images to S x S (default: their common size). shard_size: examples per shard
    (int or "10000") or bytes ("256MB", the default). workers: image-decoding processes (default
    min(4, CPUs)). Raises UsageError / DataError before anything is written where it can; a
    failure later removes the partial folder.
    """
    src, out = Path(source).expanduser(), Path(out).expanduser()
    shard = parse_shard_size(shard_size)
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise UsageError(f"--image-size must be a positive integer, got {image_size!r}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if not src.exists():
        raise DataError(f"no such file or directory: {src}")
    rs, ro = src.resolve(), out.resolve()
    if ro == rs or rs in ro.parents:
        raise UsageError(f"--out {out} lies inside the source {src}; write the shards elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists; remove it or choose another folder")
    is_csv = src.is_file() and src.suffix.lower() in (".csv", ".tsv")
    if not src.is_dir() and not is_csv:
        hint = " (a .npy file streams as it is: vaekit train --data FILE --data-in-memory no)" \
            if src.suffix.lower() == ".npy" else ""
        raise UsageError(f"vaekit prepare converts an image folder or a .csv table; {src} is neither{hint}")
    if is_csv and image_size is not None:
        raise UsageError("--image-size resizes images; drop it for a CSV table")
    if not is_csv and label_column is not None:
        raise UsageError("--label-column names a CSV column; an image folder's labels are its subfolders")
    if is_csv and src.stat().st_size == 0:
        raise DataError(f"{src} is an empty file")
    tmp = ro.parent / f".{ro.name}.partial-{os.getpid()}"
    made_parent = not ro.parent.exists()
    try:
        if is_csv:
            m = _prepare_csv(src, tmp, label_column, shard, log)
        else:
            m = _prepare_images(src, tmp, image_size, shard, workers, log)
        from .. import __version__
        from ..io import write_json

        manifest = {"format": FORMAT, "version": 1, "count": sum(s["count"] for s in m["shards"]), **m,
                    "source": str(rs), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "vaekit_version": __version__}
        write_json(tmp / MANIFEST, manifest)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, ro)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent and ro.parent.is_dir() and not any(ro.parent.iterdir()):
            ro.parent.rmdir()
        raise
    return manifest
