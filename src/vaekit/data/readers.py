"""Readers for the file formats vaekit takes, each to a NumPy array:

IDX (MNIST, Fashion-MNIST), binarized-MNIST ``.amat``, image folders, ``.npy``/``.npz`` and CSV.
Scaling, splitting and standardisation happen later, in ``datasets``.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
X_KEYS = ("x", "X", "images", "data", "arr_0")  # .npz keys tried for the examples, in this order
Y_KEYS = ("y", "Y", "labels", "targets")  # ... and for the labels
C_KEYS = ("c", "cond", "condition", "conditions")  # ... and for a condition per example
MISSING_CELLS = ("", "nan", "na", "n/a")  # CSV cells read as missing values when read_csv(allow_missing=True)
LABEL_NAMES = ("label", "labels", "y", "target", "class", "outlier")  # CSV label column names (any case)

# IDX magic numbers: 0x00 0x00, type byte 0x08 (unsigned byte), number of dimensions.
IDX_LABELS = 2049  # 0x00000801: uint8, 1-D (N,)
IDX_IMAGES = 2051  # 0x00000803: uint8, 3-D (N, rows, cols)
_NDIM = {IDX_LABELS: 1, IDX_IMAGES: 3}



def is_number(cell: str) -> bool:
    """Whether a CSV cell reads as a number."""
    try:
        float(cell)
        return True
    except ValueError:
        return False

def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic (whatever the file name says)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"no such file or directory: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"{path} is an empty file")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            # EOFError: the gzip stream stops early, i.e. an interrupted download.
            raise DataError(f"{path} is a truncated or corrupt gzip file ({e}); download it again") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``) of unsigned bytes, as used by MNIST and Fashion-MNIST.

    Returns a uint8 array: labels (magic 2049) as (N,), images (magic 2051) as (N, rows, cols).
    Raises DataError when the magic number, the number of dimensions, or the payload length
    (which must equal the product of the dimensions exactly) is wrong.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _NDIM:
        raise DataError(f"{path} is not an IDX file of labels or images: magic number {magic}, "
                        f"expected {IDX_LABELS} (labels) or {IDX_IMAGES} (images)")
    ndim = _NDIM[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX file {what}: header says {'x'.join(map(str, dims))} = {expected} "
                        f"values, payload holds {got} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable, like any array


def read_amat(path: str | Path, dim: int = 784) -> np.ndarray:
    """Read one binarized-MNIST split as a (N, dim) uint8 array of 0/1.

    Accepts both the MAT v5 files (variable ``X``) found in some mirrors under the ``.amat`` name,
    and the original whitespace-separated text ``.amat`` of Larochelle & Murray.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if raw[:6] == b"MATLAB":  # MAT v5 files start with a text header "MATLAB 5.0 MAT-file"
        import scipy.io

        try:
            x = np.asarray(scipy.io.loadmat(str(path))["X"])
        except KeyError:
            raise DataError(f"{path}: MAT file without the variable 'X'") from None
        except Exception as e:  # scipy raises several types for damaged files
            raise DataError(f"{path}: cannot read the MAT file ({e})") from None
    else:
        # Text: one example per line, values "0"/"1" separated by spaces. Keeping only the digit
        # bytes is a vectorised parse that needs no per-line Python.
        b = np.frombuffer(raw, dtype=np.uint8)
        digits = b[(b >= ord("0")) & (b <= ord("9"))]
        other = b[~((b >= ord("0")) & (b <= ord("9")) | np.isin(b, np.frombuffer(b" \t\r\n", np.uint8)))]
        if other.size or digits.size % dim:
            raise DataError(f"{path}: not a binarized-MNIST .amat file (expected lines of {dim} values 0/1)")
        x = (digits - ord("0")).reshape(-1, dim)
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
        raise DataError(f"{path}: expected an (N, {dim}) array, got shape {x.shape}")
    if not np.isin(x, (0, 1)).all():
        raise DataError(f"{path}: binarized MNIST must hold only 0 and 1")
    return np.ascontiguousarray(x, dtype=np.uint8)


def read_images(files: list[Path], size: tuple[int, int], color: str | None) -> tuple[np.ndarray, str]:
    """Decode images to uint8 (N, C, H, W) at ``size`` = (H, W). ``color`` None: "L" if all are grey."""
    from PIL import Image

    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    h, w = size
    lum = np.empty((len(files), h, w), np.uint8)
    rgb = np.empty((len(files), h, w, 3), np.uint8) if color == "RGB" else None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")  # loads the pixels: a damaged file fails here
                a = np.asarray(im if im.size == (w, h) else im.resize((w, h), bilinear))
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... for bad files
            raise DataError(f"cannot read image {f}: {' '.join(str(e).split())}") from None
        if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            lum[i] = a[..., 0]
        elif color == "L":  # PIL's own luminance formula (ITU-R 601-2), in fixed point
            lum[i] = (a.astype(np.uint32) @ np.array([19595, 38470, 7471], np.uint32) + 0x8000) >> 16
        elif rgb is None:  # first colour image: switch to RGB, keeping the grey ones seen so far
            rgb = np.repeat(lum[..., None], 3, axis=3)
        if rgb is not None:
            rgb[i] = a
    if rgb is None:
        return lum[:, None], "L"
    return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)), "RGB"


def list_images(root: Path) -> list[Path]:
    """The image files under ``root`` (recursive, hidden parts skipped), sorted by relative path."""
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                    and not any(s.startswith(".") for s in p.relative_to(root).parts)),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"{root} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    return files


def common_size(root: Path, files: list[Path]) -> tuple[int, int]:
    """(H, W) shared by every image in ``files`` (headers only); UsageError when they differ."""
    from PIL import Image

    sizes = {}
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.setdefault(im.size, f)
        except Exception as e:
            raise DataError(f"cannot read image {f}: {' '.join(str(e).split())}") from None
    if len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise UsageError(f"images in {root} have different sizes ({f1.name} {s1[0]}x{s1[1]}, {f2.name} "
                         f"{s2[0]}x{s2[1]}); pass --image-size N to resize them all to NxN")
    (w, h), = sizes
    return h, w


def folder_labels(root: Path, files: list[Path]) -> np.ndarray | None:
    """Subfolder names (N,) as labels when every image sits in one of >= 2 subfolders, else None."""
    tops = [p.relative_to(root).parts for p in files]
    names = sorted({t[0] for t in tops})
    return np.array([t[0] for t in tops]) if len(names) >= 2 and all(len(t) > 1 for t in tops) else None


def read_image_folder(root: Path, size: tuple[int, int] | None,
                      color: str | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Images under ``root`` (recursive, sorted by path) -> uint8 (N, C, H, W), subfolder names (N,) or None, colour.

    ``size`` (H, W): resize to it; None: the images' common size (UsageError when they differ).
    ``color`` "L"/"RGB" forces a colour mode; None picks "L" when every image is grey.
    """
    files = list_images(root)
    if size is None:
        size = common_size(root, files)
    x, color = read_images(files, size, color)
    return x, folder_labels(root, files), color


def read_array(path: Path, with_condition: bool = False) -> tuple[np.ndarray, ...]:
    """A ``.npy`` array, or a ``.npz``'s examples (keys X_KEYS) and labels (keys Y_KEYS, optional):
    (x, y); with ``with_condition`` also its conditions (keys C_KEYS, optional): (x, y, c).

    Loaded with ``allow_pickle=False``: object arrays would run pickle code, so they are refused.
    """
    try:
        obj = np.load(path, allow_pickle=False)
        if isinstance(obj, np.ndarray):
            return (obj, None, None) if with_condition else (obj, None)
        with obj:
            xk = next((k for k in X_KEYS if k in obj.files), None)
            if xk is None:
                raise DataError(f"{path}: no array named {'/'.join(X_KEYS)} (it holds: {', '.join(obj.files)})")
            yk = next((k for k in Y_KEYS if k in obj.files), None)
            out = (obj[xk], (obj[yk] if yk else None))
            if with_condition:
                ck = next((k for k in C_KEYS if k in obj.files), None)
                out += (obj[ck] if ck else None,)
            return out
    except DataError:
        raise
    except ValueError as e:
        if "Object arrays" in str(e):
            raise DataError(f"{path} holds a pickled object array, which vaekit does not load (it could run "
                            f"code); save plain numeric arrays, e.g. np.save(path, x.astype(np.float32))") from None
        if "pickled" in str(e):  # not NumPy's magic bytes: np.load would fall back to unpickling
            raise DataError(f"{path} is not a .npy/.npz file (NumPy could only read it by unpickling it, "
                            f"which vaekit does not do)") from None
        raise DataError(f"cannot read {path} as a NumPy file: {e}") from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError
        raise DataError(f"cannot read {path} as a NumPy file: {' '.join(str(e).split())}") from None


def npz_classes(path: Path) -> list[str] | None:
    """The class names an ``.npz`` stores beside its labels (key ``classes``, text), or None."""
    try:
        with np.load(path, allow_pickle=False) as obj:
            if "classes" not in obj.files:
                return None
            names = obj["classes"]
    except Exception:  # read_array has already read the file (and said what is wrong with it)
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        return None  # not class names (e.g. class ids): left alone, as before
    if len(set(names.tolist())) != len(names):
        raise DataError(f"{path}: 'classes' names a class twice; give distinct class names, one per class")
    return [str(n) for n in names.tolist()]


def to_examples(x: np.ndarray, path: Path, allow_missing: bool = False) -> np.ndarray:
    """(N, D) and (N, C, H, W) stay; (N, H, W) -> (N, 1, H, W); (N, H, W, C) with C in {1, 3, 4} -> NCHW.

    NaN and infinite values are refused; with ``allow_missing`` NaN passes (a missing value).
    """
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim not in (2, 4):
        raise DataError(f"{path}: expected examples shaped (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W), "
                        f"got {x.shape}")
    if x.shape[0] == 0 or 0 in x.shape:
        raise DataError(f"{path}: no data (shape {x.shape})")
    if x.dtype.kind == "f":
        flat = x.reshape(len(x), -1)
        bad = ~(np.isfinite(flat) | np.isnan(flat) if allow_missing else np.isfinite(flat)).all(axis=1)
        if bad.any():
            what = "infinite" if allow_missing else "NaN or infinite"
            raise DataError(f"{path}: example {int(bad.argmax())} holds {what} values; drop or fill them")
    return x


def array_kind(x: np.ndarray) -> str:
    # {0,1} is checked before uint8 so that 0/1 arrays stored as uint8 stay 0/1 rather than 0, 1/255.
    if x.dtype == bool or ((x == 0) | (x == 1)).all():
        return "binary"
    if x.dtype == np.uint8:
        return "8bit"
    if x.dtype.kind == "f" and x.min() >= 0 and x.max() <= 1:
        return "unit"
    return "continuous"


def read_csv(path: Path, label_column: str | None, need_label: bool = True,
             allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, str | None]:
    """A numeric CSV table -> features float64 (N, D), label strings (N,) or None, feature names, label name.

    Feature names are None without a header row; columns are then named by number ("1", "2", ...).
    Empty, NaN and infinite cells are refused; with ``allow_missing`` the cells "", "nan", "na"
    and "n/a" (any case) become NaN (missing values) and only infinite values are refused.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as a text CSV file: {e}") from None
    first = text.split("\n", 1)[0]
    delim = next((d for d in (",", "\t", ";") if d in first), ",")
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    rows, lines = [], []
    for row in reader:
        if row and any(c.strip() for c in row):  # blank lines are not rows
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise DataError(f"{path} holds no rows")

    header = not any(is_number(c) for c in rows[0])  # a header row has no numbers in it
    names = [c.strip() for c in rows[0]] if header else [str(j + 1) for j in range(len(rows[0]))]
    rows, lines = (rows[1:], lines[1:]) if header else (rows, lines)
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    widths = np.fromiter((len(r) for r in rows), int, len(rows))
    if (widths != len(names)).any():
        i = int(np.argmax(widths != len(names)))
        raise DataError(f"{path}: row {i + 1} (line {lines[i]}) has {widths[i]} columns, expected {len(names)}")
    if label_column is not None:
        match = [j for j, n in enumerate(names) if n == label_column] or \
                [j for j, n in enumerate(names) if n.lower() == label_column.lower()]
        if not match and need_label:
            raise UsageError(f"label column {label_column!r} is not in {path}; columns: {', '.join(names)}")
        lab = match[0] if match else None
    else:
        lab = next((j for j, n in enumerate(names) if header and n.lower() in LABEL_NAMES), None)
    cells = np.array(rows, dtype=str)
    feat = [j for j in range(len(names)) if j != lab]
    if not feat:
        raise DataError(f"{path}: no feature columns besides the label column")
    fcells = cells[:, feat]
    if allow_missing:
        fcells = np.where(np.isin(np.char.lower(np.char.strip(fcells)), MISSING_CELLS), "nan", fcells)
    try:
        x = fcells.astype(np.float64)
    except ValueError:  # find the first bad cell, for the message (only on this error path)
        for i, row in enumerate(fcells):
            for j, c in zip(feat, row):
                if not is_number(c):
                    what = "empty cell" if not c.strip() else f"{str(c)!r} is not a number"
                    raise DataError(f"{path}: row {i + 1} (line {lines[i]}), column {j + 1} ({names[j]}): "
                                    f"{what}") from None
        raise
    bad = np.argwhere(~np.isfinite(x) & ~(allow_missing & np.isnan(x)))
    if len(bad):
        i, j = int(bad[0][0]), feat[int(bad[0][1])]
        cell = str(cells[i, j]).strip()
        raise DataError(f"{path}: row {i + 1} (line {lines[i]}), column {j + 1} ({names[j]}): {cell!r}; "
                        f"NaN and infinite values are not allowed, drop or fill them first")
    y = None if lab is None else np.char.strip(cells[:, lab])
    return x, y, ([names[j] for j in feat] if header else None), (None if lab is None else names[lab])
