"""vaekit.data loading: named datasets, paths, splits, standardisation, binarization, downloads."""

from __future__ import annotations

import gzip
import hashlib
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.data import DATASETS, Data, load_data, load_inputs, read_idx
from vaekit.data import download as dl
from vaekit.data.spec import KINDS, DataSpec
from vaekit.errors import DataError, UsageError

# The shared datasets live beside the repository checkout (…/main and …/shared), never at a fixed path.
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def need_shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


def idx_bytes(a: np.ndarray) -> bytes:
    magic = {1: 2049, 3: 2051}[a.ndim]
    return b"".join(int(v).to_bytes(4, "big") for v in (magic, *a.shape)) + a.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 40, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic Fashion-MNIST-layout IDX .gz files (the real images are not in shared data)."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte.gz": np.arange(n_train, dtype=np.uint8) % 10,
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte.gz": np.arange(n_test, dtype=np.uint8) % 10}
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(a)))
    return arrays


@pytest.fixture(scope="module")
def registry_cases(tmp_path_factory) -> dict[str, tuple[dict, int]]:
    """How to load each registered dataset offline, and its total number of examples."""
    fake = tmp_path_factory.mktemp("fashion")
    write_fashion(fake / "fashion-mnist")
    return {"digits": ({}, 1797), "mnist": ({"data_dir": str(SHARED)}, 70000),
            "fashion-mnist": ({"data_dir": str(fake)}, 50), "binarized-mnist": ({"data_dir": str(SHARED)}, 70000)}


@pytest.mark.parametrize("name", DATASETS.names())
def test_registry_contract(name, registry_cases):
    assert name in registry_cases, f"add an offline loading recipe for dataset {name!r} to this test"
    kwargs, total = registry_cases[name]
    if "data_dir" in kwargs and kwargs["data_dir"] == str(SHARED):
        need_shared(name)
    d = load_data(name, download=False, **kwargs)
    assert isinstance(d, Data) and d.spec.kind in KINDS
    assert len(d.train) + len(d.val) + len(d.test) == total and min(len(d.train), len(d.val), len(d.test)) > 0
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.float32 and s.x.is_contiguous() and tuple(s.x.shape[1:]) == d.spec.shape
        if d.spec.kind != "continuous":
            assert 0 <= s.x.min() and s.x.max() <= 1
        if d.spec.num_classes is None:
            assert s.y is None
        else:
            assert s.y.dtype == torch.int64 and s.y.shape == (len(s),)
            assert 0 <= s.y.min() and s.y.max() < d.spec.num_classes
    json.dumps(d.source)
    assert d.source["source"] == name and d.source["kind_of_source"] == "dataset"


def test_same_call_twice_is_identical():
    a, b = load_data("digits", binarize="static", seed=3), load_data("digits", binarize="static", seed=3)
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(a, s).x, getattr(b, s).x) and torch.equal(getattr(a, s).y, getattr(b, s).y)
    c = load_data("digits", binarize="static", seed=4)
    assert not torch.equal(a.train.y, c.train.y)


def test_digits_values():
    d = load_data("digits", val_fraction=0.2, test_fraction=0.1)
    assert d.spec.shape == (1, 8, 8) and d.spec.kind == "unit" and d.spec.num_classes == 10
    assert (len(d.test), len(d.val)) == (180, 359)
    assert torch.equal(d.train.x * 16, (d.train.x * 16).round())  # 0..16 scaled by 1/16


def test_real_mnist():
    need_shared("mnist")
    d = load_data("mnist", data_dir=str(SHARED), download=False)
    assert d.spec.shape == (1, 28, 28) and d.spec.kind == "8bit" and d.spec.num_classes == 10
    assert (len(d.train), len(d.val), len(d.test)) == (54000, 6000, 10000)
    assert d.test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.equal(d.test.x[:2] * 255, (d.test.x[:2] * 255).round())


def test_real_fashion_labels_and_binarized_mnist():
    need_shared("fashion-mnist")
    for name, n in (("train-labels-idx1-ubyte.gz", 6000), ("t10k-labels-idx1-ubyte.gz", 1000)):
        y = read_idx(SHARED / "fashion-mnist" / name)
        assert np.bincount(y).tolist() == [n] * 10
    need_shared("binarized-mnist")
    d = load_data("binarized-mnist", data_dir=str(SHARED), binarize="static")
    assert (len(d.train), len(d.val), len(d.test)) == (50000, 10000, 10000)
    assert d.spec.kind == "binary" and d.spec.num_classes is None
    assert abs(d.test.x.mean().item() - 0.1325) < 1e-3  # already binary: static binarization changes nothing


def test_binarized_mnist_text_amat(tmp_path):
    # The original Larochelle files are whitespace-separated text; some mirrors ship MAT v5 files.
    rng = np.random.default_rng(0)
    arrays = {s: (rng.random((n, 784)) < 0.3).astype(np.uint8) for s, n in (("train", 6), ("valid", 2), ("test", 3))}
    for s, a in arrays.items():
        (tmp_path / f"binarized_mnist_{s}.amat").write_text("\n".join(" ".join(map(str, r)) for r in a) + "\n")
    d = load_data("binarized-mnist", data_dir=str(tmp_path), download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (6, 2, 3) and d.spec == DataSpec((1, 28, 28), "binary")
    assert torch.equal(d.val.x.reshape(2, 784), torch.from_numpy(arrays["valid"]).float())


def test_fashion_synthetic_idx_and_lookup_order(tmp_path, monkeypatch):
    arrays = write_fashion(tmp_path / "direct")  # files directly in data_dir
    d = load_data("fashion-mnist", data_dir=str(tmp_path / "direct"), download=False, val_fraction=0.25)
    assert (len(d.train), len(d.val), len(d.test)) == (30, 10, 10)
    assert torch.equal(d.test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"]).float() / 255)
    assert d.test.y.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    write_fashion(tmp_path / "env" / "fashion-mnist", n_train=20)  # $VAEKIT_DATA_DIR/<name>
    monkeypatch.setenv("VAEKIT_DATA_DIR", str(tmp_path / "env"))
    assert len(load_data("fashion-mnist", download=False).train) == 18
    monkeypatch.delenv("VAEKIT_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the cache comes last
    write_fashion(tmp_path / "cache" / "vaekit" / "fashion-mnist", n_train=30)
    assert len(load_data("fashion-mnist", download=False).train) == 27


def save_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def test_image_folder_labels_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    grey = {f"{c}/{i}.png": rng.integers(0, 256, (6, 5), dtype=np.uint8) for c in ("cat", "dog") for i in range(5)}
    for k, a in grey.items():
        save_png(tmp_path / "g" / k, a)
    d = load_data(str(tmp_path / "g"), val_fraction=0.2, test_fraction=0.2)
    assert d.spec.shape == (1, 6, 5) and d.spec.kind == "8bit" and d.spec.num_classes == 2
    assert d.source["color"] == "L" and d.source["classes"] == ["cat", "dog"]
    allx = torch.cat([d.train.x, d.val.x, d.test.x])
    ally = torch.cat([d.train.y, d.val.y, d.test.y])
    ref = torch.from_numpy(np.stack(list(grey.values()))).float()[:, None] / 255
    for x, y in zip(allx, ally):  # every example is one of the files, with its folder's label
        i = int(((ref - x).abs().sum((1, 2, 3)) == 0).nonzero()[0])
        assert y.item() == (i >= 5)
    # An RGB image makes the whole set RGB; the grey ones become three equal channels.
    save_png(tmp_path / "g" / "dog" / "rgb.png", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    d = load_data(str(tmp_path / "g"))
    assert d.spec.shape == (3, 6, 5) and d.source["color"] == "RGB" and len(d.train) + len(d.val) + len(d.test) == 11
    # Different sizes need image_size; a single folder gives no labels.
    save_png(tmp_path / "m" / "a.png", rng.integers(0, 256, (9, 9), dtype=np.uint8))
    save_png(tmp_path / "m" / "b.png", rng.integers(0, 256, (4, 7), dtype=np.uint8))
    with pytest.raises(UsageError, match="image-size"):
        load_data(str(tmp_path / "m"))
    d = load_data(str(tmp_path / "m"), image_size=8, val_fraction=0, test_fraction=0)
    assert d.spec.shape == (1, 8, 8) and d.spec.num_classes is None and d.train.y is None


def test_npy_npz_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (20, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    d = load_data(str(tmp_path / "u8.npy"), val_fraction=0, test_fraction=0)
    assert d.spec == DataSpec((1, 4, 4), "8bit")
    assert torch.equal(d.train.x[:, 0] * 255, torch.from_numpy(u8).float())
    np.save(tmp_path / "b.npy", rng.random((20, 7)) < 0.5)
    assert load_data(str(tmp_path / "b.npy")).spec.kind == "binary"
    np.save(tmp_path / "b01.npy", (rng.random((20, 7)) < 0.5).astype(np.uint8))  # 0/1 stored as uint8
    assert load_data(str(tmp_path / "b01.npy")).train.x.max() == 1
    np.save(tmp_path / "f.npy", rng.random((20, 7)).astype(np.float32))
    assert load_data(str(tmp_path / "f.npy")).spec.kind == "unit"
    np.save(tmp_path / "nhwc.npy", rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8))
    d = load_data(str(tmp_path / "nhwc.npy"), val_fraction=0, test_fraction=0)
    assert d.spec.shape == (3, 5, 4) and d.source["color"] == "RGB"
    np.save(tmp_path / "nchw.npy", rng.random((6, 3, 5, 4)))
    assert load_data(str(tmp_path / "nchw.npy")).spec.shape == (3, 5, 4)
    np.savez(tmp_path / "l.npz", images=u8, labels=np.where(np.arange(20) % 2, 7, 3))
    d = load_data(str(tmp_path / "l.npz"))
    assert d.spec.num_classes == 2 and d.source["classes"] == [3, 7]


def test_standardisation_uses_train_stats(tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.normal(5, 3, (50, 3)) * [1, 10, 0] + [0, 0, 4]  # last column constant
    raw[:, 0] = np.arange(50) * 1.5  # a unique key per row, to find the rows again
    np.save(tmp_path / "c.npy", raw)
    d = load_data(str(tmp_path / "c.npy"), val_fraction=0.2, test_fraction=0.2, seed=5)
    assert d.spec.kind == "continuous" and d.spec.shape == (3,)
    mean, std = (np.array(d.source["standardize"][k]) for k in ("mean", "std"))
    assert std[2] == 1.0
    train_raw = d.train.x.double().numpy() * std + mean
    rows = np.rint(train_raw[:, 0] / 1.5).astype(int)
    np.testing.assert_allclose(train_raw, raw[rows], atol=1e-4)
    np.testing.assert_allclose(mean, raw[rows].mean(0))
    np.testing.assert_allclose(std[:2], raw[rows].std(0)[:2])
    assert abs(mean[0] - raw[:, 0].mean()) > 1e-6  # train-only statistics, not the whole set's
    assert torch.allclose(d.train.x.mean(0)[:2], torch.zeros(2), atol=1e-5)


def test_csv_round_trip_and_labels(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 3))
    lab = np.array(["cat", "dog", "eel"])[np.arange(30) % 3]
    lines = ["a,b,Class,c"] + [f"{r[0]},{r[1]},{c},{r[2]}" for r, c in zip(x, lab)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    d = load_data(str(tmp_path / "t.csv"), val_fraction=0, test_fraction=0)
    assert d.spec.shape == (3,) and d.spec.kind == "continuous" and d.spec.num_classes == 3
    assert d.source["columns"] == ["a", "b", "c"] and d.source["label_column"] == "Class"
    np.testing.assert_allclose(d.train.x.numpy(), (x - x.mean(0)) / x.std(0), atol=1e-5)
    assert d.train.y.tolist() == (np.arange(30) % 3).tolist()
    # Without a header, the label column is named by its 1-based number.
    (tmp_path / "n.csv").write_text("\n".join(lines[1:]).replace("cat", "0").replace("dog", "1").replace("eel", "1"))
    d = load_data(str(tmp_path / "n.csv"), label_column="3")
    assert d.spec.shape == (3,) and d.spec.num_classes == 2
    assert load_data(str(tmp_path / "n.csv")).spec.shape == (4,)


def test_static_and_dynamic_binarize():
    base = load_data("digits", seed=1)
    st = load_data("digits", seed=1, binarize="static")
    dy = load_data("digits", seed=1, binarize="dynamic")
    assert st.spec.kind == dy.spec.kind == "binary" and not st.dynamic_binarize and dy.dynamic_binarize
    for s in ("train", "val", "test"):
        assert set(getattr(st, s).x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(dy.train.x, base.train.x)  # grey levels, re-binarized by the trainer
    assert torch.equal(dy.val.x, st.val.x) and torch.equal(dy.test.x, st.test.x)  # same fixed eval sets
    assert abs(st.train.x.mean() - base.train.x.mean()) < 0.01  # bernoulli(p) keeps the mean
    assert not torch.equal(load_data("digits", seed=2, binarize="static").test.x[:5], st.test.x[:5])


def test_load_inputs_matches_training(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 4))
    (tmp_path / "t.csv").write_text("p,q,r,s\n" + "\n".join(",".join(map(str, r)) for r in x))
    d = load_data(str(tmp_path / "t.csv"), seed=3)
    source = json.loads(json.dumps(d.source))  # as it comes back from a run's config.json
    new = load_inputs(str(tmp_path / "t.csv"), d.spec, source)
    key = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731
    assert torch.allclose(key(new.x), key(torch.cat([d.train.x, d.val.x, d.test.x])), atol=1e-6)
    (tmp_path / "o.csv").write_text("p,q,x,s\n1,2,3,4\n")
    with pytest.raises(DataError, match="columns"):
        load_inputs(str(tmp_path / "o.csv"), d.spec, source)
    # Images: a grey model resizes new (colour, other size) images to its shape.
    for i in range(4):
        save_png(tmp_path / "g" / f"{i}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
        save_png(tmp_path / "new" / f"{i}.png", rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    g = load_data(str(tmp_path / "g"), binarize="static")
    new = load_inputs(str(tmp_path / "new"), g.spec, g.source)
    assert new.x.shape == (4, 1, 6, 6) and set(new.x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(new.x, load_inputs(str(tmp_path / "new"), g.spec, g.source).x)  # deterministic
    # Arrays: the same values in another layout are accepted, wrong sizes and ranges are not.
    u8 = rng.integers(0, 256, (10, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "u.npy", u8)
    a = load_data(str(tmp_path / "u.npy"))
    np.save(tmp_path / "flat.npy", u8.reshape(10, 16))
    assert torch.equal(load_inputs(str(tmp_path / "flat.npy"), a.spec, a.source).x[:, 0] * 255,
                       torch.from_numpy(u8).float())
    np.save(tmp_path / "bad.npy", u8.reshape(10, 16)[:, :15])
    with pytest.raises(DataError, match="expects"):
        load_inputs(str(tmp_path / "bad.npy"), a.spec, a.source)
    np.save(tmp_path / "big.npy", rng.normal(size=(3, 4, 4)) * 5)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_inputs(str(tmp_path / "big.npy"), a.spec, a.source)


# -- downloads (never the network: the downloader is replaced by a fake server) ----------------------
def fake_server(files: dict[str, bytes], calls: list[str] | None = None):
    def fetch(url: str, dest: Path, timeout: float) -> None:
        if calls is not None:
            calls.append(url)
        dest.write_bytes(files[url.rsplit("/", 1)[1]])
    return fetch


def test_download_verifies_and_renames(tmp_path, monkeypatch):
    src = write_fashion(tmp_path / "server")
    served = {n: (tmp_path / "server" / n).read_bytes() for n in src}
    sums = {n: {"raw": hashlib.sha256(gzip.decompress(b)).hexdigest()} for n, b in served.items()}
    monkeypatch.setitem(dl.CHECKSUMS, "fashion-mnist", sums)
    calls: list[str] = []
    monkeypatch.setattr(dl, "fetch_url", fake_server(served, calls))
    d = load_data("fashion-mnist", data_dir=str(tmp_path / "data"))
    assert len(d.test) == 10 and calls[0] == dl.FASHION_URL + IDX_FILES[0]
    assert sorted(p.name for p in (tmp_path / "data" / "fashion-mnist").iterdir()) == sorted(IDX_FILES)
    load_data("fashion-mnist", data_dir=str(tmp_path / "data"))
    assert len(calls) == 4  # present files are not downloaded again


def test_real_checksums_accept_the_real_files(tmp_path, monkeypatch):
    need_shared("mnist")
    served = {n: (SHARED / "mnist" / n).read_bytes() for n in IDX_FILES}
    served.update({f"f-{n}": (SHARED / "fashion-mnist" / n).read_bytes() for n in IDX_FILES if "labels" in n})
    monkeypatch.setattr(dl, "fetch_url", fake_server(served))
    dl.ensure_files("mnist", IDX_FILES, data_dir=tmp_path, base_url="x/", checksums=dl.CHECKSUMS["mnist"])
    labels = [n for n in IDX_FILES if "labels" in n]
    dl.ensure_files("fashion-mnist", labels, data_dir=tmp_path, base_url="x/f-",
                    checksums=dl.CHECKSUMS["fashion-mnist"])


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "fetch_url", fake_server({n: gzip.compress(b"not mnist") for n in IDX_FILES}))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_data("mnist", data_dir=str(tmp_path))
    assert not (tmp_path / "mnist").exists() and tmp_path.exists()  # the folder made for it is gone again


def test_download_offline_is_one_line(tmp_path, monkeypatch):
    def offline(url, dest, timeout):
        dest.write_bytes(b"half a fi")  # a partial file before the connection drops
        raise urllib.error.URLError(OSError("[Errno -3] Temporary failure\nin name resolution"))

    monkeypatch.setattr(dl, "fetch_url", offline)
    with pytest.raises(DataError) as e:
        load_data("mnist", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "mnist") in msg and all(n in msg for n in IDX_FILES)
    assert not (tmp_path / "mnist").exists()
    with pytest.raises(DataError):  # a --data-dir that did not exist is not left behind either
        load_data("mnist", data_dir=str(tmp_path / "new" / "dir"))
    assert not (tmp_path / "new").exists()
    with pytest.raises(DataError, match="downloads are off"):
        load_data("mnist", data_dir=str(tmp_path / "none"), download=False)
