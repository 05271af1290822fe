"""Bad inputs give a DataError or UsageError whose message says what is wrong and where."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from vaekit.data import load_data, read_idx
from vaekit.errors import DataError, UsageError


def idx_bytes(a: np.ndarray, magic: int | None = None) -> bytes:
    magic = magic or {1: 2049, 3: 2051}[a.ndim]
    return b"".join(int(v).to_bytes(4, "big") for v in (magic, *a.shape)) + a.astype(np.uint8).tobytes()


def test_truncated_idx(tmp_path):
    good = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    (tmp_path / "raw-idx3-ubyte").write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"truncated.*3920 values, payload holds 3820"):
        read_idx(tmp_path / "raw-idx3-ubyte")
    (tmp_path / "long-idx3-ubyte").write_bytes(good + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(tmp_path / "long-idx3-ubyte")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-30])  # an interrupted download
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "hdr-idx1-ubyte").write_bytes(good[:6])
    with pytest.raises(DataError, match="header"):
        read_idx(tmp_path / "hdr-idx1-ubyte")


def test_wrong_magic_idx(tmp_path):
    (tmp_path / "x-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 3, 3), np.uint8), magic=2052))
    with pytest.raises(DataError, match="magic number 2052, expected 2049 .labels. or 2051 .images."):
        read_idx(tmp_path / "x-idx3-ubyte")


def test_idx_labels_and_images_must_match(tmp_path):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for prefix, n in (("train", 4), ("t10k", 2)):
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((n, 28, 28)))))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(n + 1))))
    with pytest.raises(DataError, match="do not match"):
        load_data("fashion-mnist", data_dir=str(tmp_path), download=False)


@pytest.mark.parametrize("name", ["empty.npy", "empty.csv", "empty.npz"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        load_data(str(tmp_path / name))
    with pytest.raises(DataError, match="empty file"):
        read_idx(tmp_path / name)


@pytest.mark.parametrize(
    "text,match",
    [
        ("a,b\n1,2\n3,oops\n", r"row 2 \(line 3\), column 2 \(b\): 'oops' is not a number"),
        ("1,2\n3,\n", r"row 2 \(line 2\), column 2 .*empty cell"),
        ("a,b,label\n1,2,0\n3,4,1\n5,nan,0\n", r"row 3 \(line 4\), column 2 \(b\): 'nan'.*NaN and infinite"),
        ("1,2\ninf,4\n", r"row 2 \(line 2\), column 1"),
    ],
    ids=["text", "empty-cell", "nan", "inf"],
)
def test_csv_bad_cells(tmp_path, text, match):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        load_data(str(tmp_path / "t.csv"))


def test_ragged_csv(tmp_path):
    (tmp_path / "r.csv").write_text("a,b,c\n1,2,3\n\n4,5\n")
    with pytest.raises(DataError, match=r"row 2 \(line 4\) has 2 columns, expected 3"):
        load_data(str(tmp_path / "r.csv"))


def test_csv_unknown_label_column(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(UsageError, match="label column 'kind' is not in .*columns: a, b"):
        load_data(str(tmp_path / "t.csv"), label_column="kind")


def test_corrupt_image_in_folder(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / c / "ok.png")
    good = (tmp_path / "a" / "ok.png").read_bytes()
    (tmp_path / "b" / "bad.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*b/bad\.png"):
        load_data(str(tmp_path))
    with pytest.raises(DataError, match=r"cannot read image .*b/bad\.png"):
        load_data(str(tmp_path), image_size=4)


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        load_data(str(tmp_path))


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="no such file or directory: .*nothing.csv"):
        load_data(str(tmp_path / "nothing.csv"))
    with pytest.raises(DataError, match="no such file or directory: data.npz"):
        load_data("data.npz")
    with pytest.raises(UsageError, match="unknown dataset 'fashion_mnist'.*did you mean 'fashion-mnist'"):
        load_data("fashion_mnist")


def test_bad_binarize_and_options():
    with pytest.raises(UsageError, match="unknown binarize 'yes'; valid: none, static, dynamic"):
        load_data("digits", binarize="yes")
    with pytest.raises(UsageError, match="below 1"):
        load_data("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(UsageError, match="image folders only"):
        load_data("digits", image_size=16)


def test_binarize_needs_unit_range(tmp_path):
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(UsageError, match="needs values in \\[0, 1\\].*continuous"):
        load_data(str(tmp_path / "c.npy"), binarize="static")


def test_npy_with_nan(tmp_path):
    x = np.zeros((5, 4))
    x[3, 2] = np.nan
    np.save(tmp_path / "n.npy", x)
    with pytest.raises(DataError, match="example 3 holds NaN or infinite"):
        load_data(str(tmp_path / "n.npy"))


def test_npz_with_pickled_object_array(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([[1.0, 2.0]] * 4), y=np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(DataError, match="pickled object array"):
        load_data(str(tmp_path / "o.npz"))
    np.savez(tmp_path / "k.npz", features=np.zeros((3, 2)))
    with pytest.raises(DataError, match="no array named x/X/images/data/arr_0 .it holds: features"):
        load_data(str(tmp_path / "k.npz"))


def test_garbage_and_truncated_numpy_files(tmp_path):
    for name in ("g.npy", "g.npz"):
        (tmp_path / name).write_bytes(b"not numpy at all\n" * 4)
        with pytest.raises(DataError, match=f"{name} is not a .npy/.npz file"):
            load_data(str(tmp_path / name))
    np.save(tmp_path / "t.npy", np.zeros((40, 8)))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:300])
    with pytest.raises(DataError, match="cannot read .*t.npy as a NumPy file"):
        load_data(str(tmp_path / "t.npy"))


def test_bad_shapes_and_types(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(5))
    with pytest.raises(DataError, match=r"got \(5,\)"):
        load_data(str(tmp_path / "one.npy"))
    (tmp_path / "x.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_data(str(tmp_path / "x.txt"))
    np.save(tmp_path / "two.npy", np.zeros((2, 3)))
    with pytest.raises(DataError, match="too few examples"):
        load_data(str(tmp_path / "two.npy"))
