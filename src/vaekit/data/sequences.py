"""Series data: one long (multivariate) series read from a CSV or ``.npy`` file and cut into windows.

A series is T rows (time steps) of D channels. CSV files may carry a time column (its cells are
kept as written, to label the rows of a detector's output) and a label column (0/1 per row: known
anomalies); every other column must be numeric. Empty cells and "nan"/"na"/"n/a" are missing values;
in a ``.npy`` (T,) or (T, D) array, NaN is. Missing values are never filled in: each window carries
a mask (1 observed, 0 missing) and the likelihood is taken over observed values only.

Windows of ``window`` rows start every ``stride`` rows; one more window ends on the last row when
the stride does not land there, so every row is covered. Channels are scaled by the mean and
standard deviation of the training part's observed values (saved with the run and applied
unchanged to any later series). The training series is split in time, not at random: the first
rows train, the next validate, the last test, and windows are cut inside each part, so no window
straddles two parts.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, UsageError
from .readers import MISSING_CELLS, is_number

SERIES_SUFFIXES = (".csv", ".tsv", ".npy")
#: CSV column names read as the time index (any case).
TIME_NAMES = ("timestamp", "time", "date", "datetime", "ts", "index")
#: CSV column names read as per-row anomaly labels (any case).
SERIES_LABEL_NAMES = ("label", "labels", "anomaly", "is_anomaly", "outlier", "attack")


@dataclass
class Series:
    """values: float64 (T, D), NaN where missing; index: the time column's cells (T,) or None;
    labels: int64 (T,) 0/1 or None; columns: the D channel names."""

    values: np.ndarray
    index: list[str] | None
    labels: np.ndarray | None
    columns: list[str]

    def __len__(self) -> int:
        return int(self.values.shape[0])


def _labels(raw: np.ndarray, where: str) -> np.ndarray:
    """0/1 per row from label cells ("0"/"1", "true"/"false", numbers: nonzero is an anomaly)."""
    out = np.zeros(len(raw), np.int64)
    for i, cell in enumerate(raw):
        c = str(cell).strip().lower()
        if c in ("1", "true", "yes", "anomaly"):
            out[i] = 1
        elif c in ("0", "false", "no", "normal", ""):
            out[i] = 0
        elif is_number(c):
            out[i] = int(float(c) != 0)
        else:
            raise DataError(f"{where}: label {cell!r} in row {i + 1} is not 0/1; labels mark anomalies with 1")
    return out


def read_series_csv(path: Path, label_column: str | None = None) -> Series:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as a text CSV file: {e}") from None
    first = text.split("\n", 1)[0]
    delim = next((d for d in (",", "\t", ";") if d in first), ",")
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delim) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path} holds no rows; a series needs one row per time step")
    header = not all(is_number(c) or c.strip().lower() in MISSING_CELLS for c in rows[0])
    names = [c.strip() for c in rows[0]] if header else [str(j + 1) for j in range(len(rows[0]))]
    if header:
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    width = len(names)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(f"{path}: row {i + 1} has {len(r)} columns, expected {width}")
    cells = np.array(rows, dtype=str)
    lower = [n.lower() for n in names]
    if label_column is not None:
        lab = next((j for j, n in enumerate(names) if n == label_column), None)
        lab = lab if lab is not None else next((j for j, n in enumerate(lower) if n == label_column.lower()), None)
        if lab is None:
            raise UsageError(f"label column {label_column!r} is not in {path}; columns: {', '.join(names)}")
    else:
        lab = next((j for j, n in enumerate(lower) if header and n in SERIES_LABEL_NAMES), None)
    time_col = next((j for j, n in enumerate(lower) if header and n in TIME_NAMES and j != lab), None)
    if time_col is None:  # a first column of dates or other text, unnamed: the time index
        col0 = np.char.strip(cells[:, 0])
        if lab != 0 and width > 1 and not any(is_number(c) for c in col0[:100]) and not np.isin(
                np.char.lower(col0[:100]), MISSING_CELLS).all():
            time_col = 0
    feat = [j for j in range(width) if j not in (lab, time_col)]
    if not feat:
        raise DataError(f"{path}: no value columns besides the time and label columns")
    fcells = np.char.strip(cells[:, feat])
    fcells = np.where(np.isin(np.char.lower(fcells), MISSING_CELLS), "nan", fcells)
    try:
        values = fcells.astype(np.float64)
    except ValueError:
        for j_local, j in enumerate(feat):
            bad = [i for i, c in enumerate(fcells[:, j_local]) if not is_number(c)]
            if bad:
                raise DataError(f"{path}: column {names[j]!r} is not numeric (row {bad[0] + 1}: "
                                f"{fcells[bad[0], j_local]!r}); drop that column or fix the cell") from None
        raise
    if np.isinf(values).any():
        i, j = np.argwhere(np.isinf(values))[0]
        raise DataError(f"{path}: row {i + 1}, column {names[feat[j]]!r} is infinite; drop or fill it")
    return Series(values=values,
                  index=None if time_col is None else [str(c).strip() for c in cells[:, time_col]],
                  labels=None if lab is None else _labels(cells[:, lab], str(path)),
                  columns=[names[j] for j in feat])


def read_series_npy(path: Path) -> Series:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except ValueError as e:
        raise DataError(f"cannot read {path} as a .npy array ({e}); vaekit loads plain numeric arrays only") from None
    except Exception as e:  # noqa: BLE001 -- truncated or not NumPy at all
        raise DataError(f"cannot read {path} as a .npy array: {' '.join(str(e).split())}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected a numeric array, got {getattr(arr, 'dtype', type(arr).__name__)}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or 0 in arr.shape:
        raise DataError(f"{path}: a series is (T,) or (T, D) (time steps by channels), got shape {arr.shape}; "
                        "many sequences of one length go in an .npz with x (N, T, D)")
    values = arr.astype(np.float64)
    if np.isinf(values).any():
        i, j = np.argwhere(np.isinf(values))[0]
        raise DataError(f"{path}: row {i + 1}, channel {j + 1} is infinite; drop or fill it")
    return Series(values=values, index=None, labels=None, columns=[str(j + 1) for j in range(values.shape[1])])


def read_series(path: str | Path, label_column: str | None = None) -> Series:
    """A series from a ``.csv``/``.tsv`` (columns: optional time, optional label, values) or ``.npy``."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in SERIES_SUFFIXES:
        raise DataError(f"{p}: a series is read from {', '.join(SERIES_SUFFIXES)}, not {p.suffix or 'a file with no suffix'}")
    if not p.is_file():
        raise DataError(f"no such file: {p}")
    return read_series_npy(p) if p.suffix.lower() == ".npy" else read_series_csv(p, label_column)


def read_labels(path: str | Path, n: int) -> np.ndarray:
    """Per-row anomaly labels from a ``.npy`` (n,) or a one-column CSV / text file: int64 0/1, (n,)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"no such labels file: {p}")
    if p.suffix.lower() == ".npy":
        try:
            y = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"cannot read {p} as a .npy array: {' '.join(str(e).split())}") from None
        y = np.asarray(y).reshape(-1)
        if y.dtype.kind not in "biuf" or np.isnan(y.astype(np.float64)).any():
            raise DataError(f"{p}: labels must be numbers 0/1, one per row of the series")
        out = (y.astype(np.float64) != 0).astype(np.int64)
    else:
        s = read_series_csv(p)
        if s.labels is not None:
            out = s.labels
        elif s.values.shape[1] == 1 and not np.isnan(s.values).any():
            out = (s.values[:, 0] != 0).astype(np.int64)
        else:
            raise DataError(f"{p}: labels are one 0/1 column (or a column named label), one row per time step")
    if len(out) != n:
        raise DataError(f"{p} holds {len(out)} labels but the series has {n} rows; give one label per row")
    return out


# -- scaling ---------------------------------------------------------------------------------------
def fit_scaler(values: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of the observed (non-NaN) values. A channel with no
    observed value, or a constant one, gets std 1 (and mean 0 when never observed)."""
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(values, axis=0)
            std = np.nanstd(values, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return {"mean": mean.tolist(), "std": std.tolist()}


def apply_scaler(values: np.ndarray, scaler: dict[str, list[float]]) -> np.ndarray:
    mean, std = np.asarray(scaler["mean"]), np.asarray(scaler["std"])
    if values.shape[1] != len(mean):
        raise DataError(f"the series has {values.shape[1]} channels but the run was trained on {len(mean)}; "
                        "give a series with the same columns")
    return (values - mean) / std


def invert_scaler(values: np.ndarray, scaler: dict[str, list[float]]) -> np.ndarray:
    return values * np.asarray(scaler["std"]) + np.asarray(scaler["mean"])


# -- windows ---------------------------------------------------------------------------------------
def check_window(window: int, stride: int) -> None:
    for flag, v in (("--window", window), ("--stride", stride)):
        if int(v) != v or v < 1:
            raise UsageError(f"{flag} must be a positive integer, got {v!r}")


def window_starts(n_rows: int, window: int, stride: int) -> np.ndarray:
    """Start rows of the windows over ``n_rows`` rows: every ``stride`` rows, plus one ending on the
    last row when the stride does not land there. Empty when the rows are fewer than one window."""
    if n_rows < window:
        return np.zeros(0, np.int64)
    starts = np.arange(0, n_rows - window + 1, stride, dtype=np.int64)
    if starts[-1] != n_rows - window:
        starts = np.append(starts, n_rows - window)
    return starts


def cut_windows(values: np.ndarray, window: int, stride: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Windows of a scaled series with NaN for missing values: (x, mask, starts), x float32
    (N, window, D) with 0 where missing, mask float32 (N, window, D) (1: observed), starts (N,)."""
    starts = window_starts(len(values), window, stride)
    if not len(starts):
        d = values.shape[1]
        return torch.zeros(0, window, d), torch.zeros(0, window, d), starts
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # (T - W + 1, D, W), no copy
    w = np.ascontiguousarray(view[starts].transpose(0, 2, 1))
    observed = ~np.isnan(w)
    x = torch.from_numpy(np.where(observed, w, 0.0).astype(np.float32))
    return x, torch.from_numpy(observed.astype(np.float32)), starts


def observed_rows(values: np.ndarray) -> int:
    """Rows with at least one observed value."""
    return int((~np.isnan(values)).any(axis=1).sum())


def check_series_length(values: np.ndarray, window: int, where: str) -> None:
    n = observed_rows(values)
    if len(values) < window or n < window:
        extra = f" ({len(values)} rows, {len(values) - n} of them with no value)" if n != len(values) else ""
        raise DataError(f"{where}: the series has {n} rows with values{extra}, fewer than one window of {window}; "
                        f"give a longer series or a smaller --window")


def series_record(s: Series, path: Path, window: int, stride: int, scaler: dict[str, Any]) -> dict[str, Any]:
    return {"kind_of_source": "series", "source": str(path.resolve()), "window": int(window), "stride": int(stride),
            "channels": s.columns, "scaler": scaler, "rows": len(s), "time_index": s.index is not None}


def series_files(folder: Path) -> list[Path]:
    """The series files of a folder (one series each), in name order; DataError when there are none."""
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in SERIES_SUFFIXES
                   and not f.name.startswith("."))
    if not files:
        raise DataError(f"{folder} holds no series files ({', '.join(SERIES_SUFFIXES)}); give a folder of series, "
                        "one per file, or one series file")
    return files


def _read_all(p: Path, label_column: str | None) -> list[tuple[Path, Series]]:
    """One series file, or every file of a folder; the files of a folder must have the same channels."""
    if not p.is_dir():
        return [(p, read_series(p, label_column))]
    out = [(f, read_series(f, label_column)) for f in series_files(p)]
    first, s0 = out[0]
    for f, s in out[1:]:
        if s.values.shape[1] != s0.values.shape[1] or (s.columns != s0.columns and s.index is not None):
            raise DataError(f"{f.name} has columns {s.columns} but {first.name} has {s0.columns}; the series of a "
                            "folder must have the same channels")
    return out


def load_series_data(source: str | Path, *, window: int, stride: int = 1, val_fraction: float = 0.1,
                     test_fraction: float = 0.1, label_column: str | None = None, mask_anomalies: bool = True):
    """A series (or a folder of series, one per file) cut into windows, as ``Data``: spec (window, D)
    "continuous"; each split's ``x`` (N, window, D) with 0 where missing and ``mask`` (N, window, D).
    The rows of each series are split in time: the first ``1 - val_fraction - test_fraction`` train
    (and fit the scaler, over all the files' training rows), then validation, then test; no window
    crosses from one file into the next. Rows marked anomalous by a label column are masked out of the
    training windows (as Donut's modified ELBO does: known anomalies do not teach the model what
    normal looks like) unless ``mask_anomalies`` is False. Windows with no observed value are dropped."""
    from .batch import Batch
    from .datasets import Data
    from .spec import DataSpec

    check_window(window, stride)
    for nm, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= f < 1:
            raise UsageError(f"{nm} must be in [0, 1), got {f}")
    p = Path(source).expanduser()
    series = _read_all(p, label_column)
    parts: list[tuple[Path, Series, int, int, int]] = []
    for f, s in series:
        check_series_length(s.values, window, str(f))
        n = len(s)
        n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
        a = n - n_val - n_test
        if observed_rows(s.values[:a]) < window:
            raise DataError(f"{f}: the training part ({a} of {n} rows, after holding out --val-fraction {val_fraction} "
                            f"and --test-fraction {test_fraction} at the end) is shorter than one window of {window}; "
                            "give a longer series, a smaller --window or smaller fractions")
        parts.append((f, s, a, n_val, n_test))
    scaler = fit_scaler(np.concatenate([s.values[:a] for _, s, a, _, _ in parts]))
    pieces: dict[str, list[Batch]] = {"train": [], "val": [], "test": []}
    for f, s, a, n_val, n_test in parts:
        scaled = apply_scaler(s.values, scaler)
        for name, lo, hi in (("train", 0, a), ("val", a, a + n_val), ("test", a + n_val, len(s))):
            part = scaled[lo:hi].copy()
            if name == "train" and s.labels is not None and mask_anomalies:
                part[s.labels[lo:hi] == 1] = np.nan  # known anomalies: not normal data to learn from
            x, m, _ = cut_windows(part, window, stride)
            keep = m.flatten(1).any(1)
            pieces[name].append(Batch(x[keep], mask=m[keep]))
    splits = {k: Batch(torch.cat([b.x for b in v]).contiguous(), mask=torch.cat([b.mask for b in v]).contiguous())
              for k, v in pieces.items()}
    if not len(splits["train"]):
        raise DataError(f"{p}: no training window has an observed value; the training rows are all missing")
    first = parts[0][1]
    record = series_record(first, p, window, stride, scaler)
    record.update(val_fraction=val_fraction, test_fraction=test_fraction, label_column=label_column,
                  mask_anomalies=mask_anomalies,
                  labelled_rows=None if all(s.labels is None for _, s, *_ in parts)
                  else int(sum(int(s.labels.sum()) for _, s, *_ in parts if s.labels is not None)),
                  rows=int(sum(len(s) for _, s, *_ in parts)), kind="continuous", standardize=None, classes=None)
    if p.is_dir():  # per file: its name and how its rows were split
        record["files"] = [{"name": f.name, "rows": len(s), "split_rows": {"train": a, "val": v, "test": t}}
                          for f, s, a, v, t in parts]
    else:
        _, _, a, v, t = parts[0]
        record["split_rows"] = {"train": a, "val": v, "test": t}
    spec = DataSpec((window, first.values.shape[1]), "continuous")
    return Data(spec, splits["train"], splits["val"], splits["test"], record)


LENGTH_KEYS = ("lengths", "length", "lens", "seq_len")


def read_sequences_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """An ``.npz`` (or ``.npy``) of many sequences: x (N, T, D) or (N, T), optional lengths (N,)
    and labels y (N,). Returns (x float64 (N, T, D) with NaN where missing, lengths or None, y or None)."""
    from .readers import X_KEYS, Y_KEYS

    try:
        obj = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read {path} as a NumPy file ({' '.join(str(e).split())}); vaekit loads plain "
                        "numeric arrays only") from None
    if isinstance(obj, np.ndarray):
        x, lengths, y = obj, None, None
    else:
        with obj:
            xk = next((k for k in X_KEYS if k in obj.files), None)
            if xk is None:
                raise DataError(f"{path}: no array named {'/'.join(X_KEYS)} (it holds: {', '.join(obj.files)})")
            x = obj[xk]
            lk = next((k for k in LENGTH_KEYS if k in obj.files), None)
            yk = next((k for k in Y_KEYS if k in obj.files), None)
            lengths = obj[lk] if lk else None
            y = obj[yk] if yk else None
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: x must be numeric, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or 0 in x.shape:
        raise DataError(f"{path}: sequences are x (N, T, D) or (N, T), got shape {x.shape}")
    x = x.astype(np.float64)
    if np.isinf(x).any():
        raise DataError(f"{path}: x holds infinite values; drop or fill them")
    n, t = x.shape[:2]
    if lengths is not None:
        lengths = np.asarray(lengths).reshape(-1)
        if lengths.dtype.kind not in "iu" and not (lengths.dtype.kind == "f" and np.all(lengths == np.round(lengths))):
            raise DataError(f"{path}: lengths must be whole numbers, got dtype {lengths.dtype}")
        lengths = lengths.astype(np.int64)
        if len(lengths) != n:
            raise DataError(f"{path}: {len(lengths)} lengths for {n} sequences; give one length per sequence")
        if (lengths < 1).any() or (lengths > t).any():
            i = int(np.flatnonzero((lengths < 1) | (lengths > t))[0])
            raise DataError(f"{path}: length {int(lengths[i])} of sequence {i} is outside 1..{t} (the padded length)")
        x[np.arange(t)[None, :] >= lengths[:, None]] = np.nan  # padding: not data
    if y is not None and len(y) != n:
        raise DataError(f"{path}: {len(y)} labels for {n} sequences; give one label per sequence")
    return x, lengths, y


def load_sequences_data(source: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0):
    """Many sequences from an ``.npz``/``.npy`` as ``Data``: spec (T, D); every split's ``x`` (N, T, D)
    with 0 where missing or padded and ``mask`` (N, T, D); a random split by sequence (seeded).
    Values in [0, 1] stay as they are (Bernoulli by default; "binary" when all 0/1); others are
    scaled per channel with the training split's observed values."""
    from .batch import Batch
    from .datasets import Data, _carve, _count, _encode_labels
    from .readers import array_kind
    from .spec import DataSpec

    p = Path(source).expanduser()
    x, lengths, y = read_sequences_npz(p)
    n = len(x)
    rng = np.random.default_rng(seed % 2**64)
    idx = np.arange(n)
    (tr, _), (te, _), (va, _) = _carve((idx, None), [_count(test_fraction, n), _count(val_fraction, n)], rng)
    if not len(tr):
        raise DataError(f"{p}: too few sequences ({n}) to split")
    observed = x[~np.isnan(x)]
    kind = array_kind(observed) if len(observed) else "continuous"
    scaler = None
    if kind == "continuous":
        scaler = fit_scaler(x[tr].reshape(-1, x.shape[2]))
        x = apply_scaler(x.reshape(-1, x.shape[2]), scaler).reshape(x.shape)
    classes = None
    if y is not None:
        y, classes = _encode_labels(y, p)
    splits = {}
    for name, rows in (("train", tr), ("val", va), ("test", te)):
        part = x[rows]
        m = ~np.isnan(part)
        splits[name] = Batch(torch.from_numpy(np.where(m, part, 0.0).astype(np.float32)),
                             y=None if y is None else torch.as_tensor(y[rows], dtype=torch.int64),
                             mask=torch.from_numpy(m.astype(np.float32)))
    record = {"kind_of_source": "sequences", "source": str(p.resolve()), "kind": kind, "scaler": scaler,
              "standardize": None, "classes": classes, "seed": seed, "val_fraction": val_fraction,
              "test_fraction": test_fraction, "variable_length": lengths is not None,
              "channels": [str(j + 1) for j in range(x.shape[2])]}
    spec = DataSpec(tuple(x.shape[1:]), kind, None if classes is None else len(classes))
    return Data(spec, splits["train"], splits["val"], splits["test"], record)


def load_sequence_inputs(path: str | Path, spec: Any, source: dict[str, Any]):
    """NEW inputs for a run trained on a series or on many sequences, prepared like its training data:
    a series file cut into the run's windows (its --window and --stride, the last window ending on
    the last row) and scaled with the training scaler; an ``.npz``/``.npy`` of sequences of the
    training length and channels. Returns a Batch (x with 0 where missing, mask)."""
    from .batch import Batch

    p = Path(path).expanduser()
    t, d = spec.shape
    if source.get("kind_of_source") == "series":
        xs, ms = [], []
        for f, s in _read_all(p, source.get("label_column")):  # a series file, or a folder of them
            check_series_length(s.values, t, str(f))
            x, m, _ = cut_windows(apply_scaler(s.values, source["scaler"]), t, int(source.get("stride") or 1))
            keep = m.flatten(1).any(1)
            xs.append(x[keep])
            ms.append(m[keep])
        return Batch(torch.cat(xs).contiguous(), mask=torch.cat(ms).contiguous())
    if p.suffix.lower() not in (".npz", ".npy"):
        raise DataError(f"{p}: this run was trained on sequences from an .npz/.npy; give one of those")
    x, _, y = read_sequences_npz(p)
    if x.shape[1:] != (t, d):
        raise DataError(f"{p}: sequences of shape {x.shape[1:]} (steps, channels); the run was trained on {(t, d)}; "
                        "pad or cut them to its length")
    if source.get("scaler"):
        x = apply_scaler(x.reshape(-1, d), source["scaler"]).reshape(x.shape)
    m = ~np.isnan(x)
    labels = None
    if y is not None and source.get("classes"):  # labels y of the run's classes, as their indices (a conditional run reads them)
        from .datasets import _encode_labels
        codes, classes = _encode_labels(y, p, source["classes"])
        labels = torch.as_tensor(codes, dtype=torch.int64) if classes == source["classes"] else None
    return Batch(torch.from_numpy(np.where(m, x, 0.0).astype(np.float32)), y=labels,
                 mask=torch.from_numpy(m.astype(np.float32)))
