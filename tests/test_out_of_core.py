"""Data larger than memory: ``vaekit prepare`` shards, and training streamed from disk
(``--data-in-memory no``) that equals training on the same data in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vaekit
from vaekit.data import load_data
from vaekit.data import prepare as prep
from vaekit.data.readers import read_csv, read_image_folder
from vaekit.data.stream import StreamSplit

from cli_helpers import cli

SMALL = dict(hidden=[32], latent_dim=4, epochs=2, batch_size=32, progress=False, evaluate_test=False, figures=False)


def image_folder(root, n_per_class=40, size=(6, 5), grey_first=True):
    """Two class subfolders of PNGs; the first images grey, then colour ones (the colour switch)."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            if grey_first and c == "a" and i < 20:
                a[...] = a[..., :1]
            Image.fromarray(a).save(root / c / f"{i:03d}.png")
    return root


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def same_weights(a, b, tol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=tol) if tol else torch.equal(wa[k], wb[k]), k


def test_prepare_images_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "_CHUNK", 8)  # several decoding tasks: the grey -> RGB switch mid-way
    src = image_folder(tmp_path / "imgs")
    m = prep.prepare(src, tmp_path / "sh", shard_size=15, workers=1)
    x, y, color = read_image_folder(src, None)
    assert color == "RGB" and m["color"] == "RGB" and m["shape"] == [3, 6, 5] and m["dtype"] == "uint8"
    assert m["count"] == 80 and [s["count"] for s in m["shards"]] == [15] * 5 + [5]
    assert m["classes"] == ["a", "b"] and m["kind"] == "8bit" and "/ 255" in m["scale"]
    on_disk = json.loads((tmp_path / "sh" / "manifest.json").read_text())
    assert on_disk["shards"] == m["shards"]
    xs = np.concatenate([np.load(tmp_path / "sh" / s["file"]) for s in m["shards"]])
    assert xs.dtype == np.uint8 and np.array_equal(xs, x)
    assert np.array_equal(np.load(tmp_path / "sh" / "labels.npy"), (y == "b").astype(np.int64))
    assert not list(tmp_path.glob(".sh.partial*"))
    # in memory, the shard folder is the image folder
    d_img, d_sh = load_data(str(src), data_in_memory="yes"), load_data(str(tmp_path / "sh"), data_in_memory="yes")
    assert d_sh.spec == d_img.spec and torch.equal(d_sh.train.x, d_img.train.x) and torch.equal(d_sh.test.y, d_img.test.y)
    assert d_sh.source["classes"] == ["a", "b"] and d_sh.source["color"] == "RGB"


def test_prepare_grey_folder_and_parallel_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "_CHUNK", 16)
    src = tmp_path / "g"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (7, 7), dtype=np.uint8)).save(src / f"{i}.png")
    m = prep.prepare(src, tmp_path / "sh", workers=2)
    x, y, color = read_image_folder(src, None)
    assert color == "L" and m["shape"] == [1, 7, 7] and m["labels"] is None and len(m["shards"]) == 1
    assert np.array_equal(np.load(tmp_path / "sh" / "shard-000000.npy"), x)


def test_prepare_csv_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(50, 3))
    rows = ["a,b,c,kind"] + [",".join(map(repr, map(float, v))) + ("," + ("yes" if i % 3 else "no")) for i, v in enumerate(vals)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n\n")
    m = prep.prepare(tmp_path / "t.csv", tmp_path / "sh", label_column="kind", shard_size=20)
    x, y, cols, lab = read_csv(tmp_path / "t.csv", "kind")
    assert m["dtype"] == "float32" and m["shape"] == [3] and m["columns"] == cols == ["a", "b", "c"]
    assert m["label_column"] == "kind" and m["classes"] == ["no", "yes"] and m["kind"] == "continuous"
    xs = np.concatenate([np.load(tmp_path / "sh" / s["file"]) for s in m["shards"]])
    assert xs.dtype == np.float32 and np.array_equal(xs, x.astype(np.float32))
    assert np.array_equal(np.load(tmp_path / "sh" / "labels.npy"), (y == "yes").astype(np.int64))
    # the table trains from disk within float rounding of the same shards in memory
    vaekit.train(str(tmp_path / "sh"), out=tmp_path / "mem", data_in_memory="yes", **SMALL)
    vaekit.train(str(tmp_path / "sh"), out=tmp_path / "disk", data_in_memory="no", **SMALL)
    same_weights(tmp_path / "mem", tmp_path / "disk", tol=1e-6)
    cfg = json.loads((tmp_path / "disk" / "config.json").read_text())
    assert cfg["source"]["streamed"] and cfg["source"]["columns"] == ["a", "b", "c"] and cfg["spec"]["num_classes"] == 2


def test_streamed_shards_train_like_in_memory(tmp_path, capsys):
    src = image_folder(tmp_path / "imgs")
    code, out, err = cli(capsys, "prepare", src, "--out", tmp_path / "sh", "--shard-size", "25", "--quiet")
    assert code == 0 and "80 examples" in out
    common = ["--hidden", "32", "--latent-dim", "4", "--epochs", "2", "--batch-size", "16", "--quiet", "--iw-samples", "0"]
    code, out, err = cli(capsys, "train", "--data", tmp_path / "sh", "--data-in-memory", "no", "--out", tmp_path / "disk",
                         *common)
    assert code == 0, err
    vaekit.train(str(src), out=tmp_path / "folder", **{**SMALL, "batch_size": 16})  # today's path, in memory
    same_weights(tmp_path / "disk", tmp_path / "folder")
    d = load_data(str(tmp_path / "sh"), data_in_memory="no")
    assert isinstance(d.train, StreamSplit) and d.source["streamed"] and d.spec.num_classes == 2
    assert json.loads((tmp_path / "disk" / "evaluation.json").read_text())["n"] == len(d.test)
    # the run works after training from its config (evaluate reads the test split from disk)
    code, out, err = cli(capsys, "evaluate", tmp_path / "disk", "--json")
    assert code == 0 and json.loads(out)["n"] == len(d.test)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw-float"])
def test_npy_streamed_equals_in_memory(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 1, 6, 6), dtype=np.uint8)
    if layout == "nhwc":
        x = rng.integers(0, 256, (300, 6, 6, 3), dtype=np.uint8)
    elif layout == "nhw-float":
        x = rng.random((300, 6, 6))  # float64 in [0, 1]: "unit", no manifest, kind found by a scan
    np.save(tmp_path / "x.npy", x)
    vaekit.train(str(tmp_path / "x.npy"), out=tmp_path / "mem", data_in_memory="yes", **SMALL)
    vaekit.train(str(tmp_path / "x.npy"), out=tmp_path / "disk", data_in_memory="no", **SMALL)
    same_weights(tmp_path / "mem", tmp_path / "disk")
    a, b = load_data(str(tmp_path / "x.npy"), data_in_memory="yes"), load_data(str(tmp_path / "x.npy"), data_in_memory="no")
    assert a.spec == b.spec and torch.equal(a.val.x, b.val.x) and torch.equal(a.test[:7].x, b.test[:7].x)


def test_streamed_image_folder_equals_in_memory(tmp_path):
    src = image_folder(tmp_path / "imgs")
    a, b = load_data(str(src), data_in_memory="yes"), load_data(str(src), data_in_memory="no")
    assert b.source["kind_of_source"] == "images" and a.spec == b.spec
    order = torch.randperm(len(a.train), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.train.select(order)[5:40].x, b.train.select(order)[5:40].x)
    assert torch.equal(a.train.select(order)[5:40].y, b.train.select(order)[5:40].y)


def test_resume_streamed_run(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, (200, 1, 5, 5), dtype=np.uint8))
    opts = {**SMALL, "data_in_memory": "no", "checkpoint_every": 0}
    vaekit.train(str(tmp_path / "x.npy"), out=tmp_path / "full", **opts)
    vaekit.train(str(tmp_path / "x.npy"), out=tmp_path / "part", **{**opts, "epochs": 1})
    vaekit.train(str(tmp_path / "x.npy"), out=tmp_path / "part", resume=True, epochs=2, progress=False,
                 evaluate_test=False, data_in_memory="yes")  # may change on resume: same training
    same_weights(tmp_path / "full", tmp_path / "part")
    assert load_file(str(tmp_path / "full" / "last.safetensors")).keys() == load_file(str(tmp_path / "part" / "last.safetensors")).keys()


def _bad(capsys, tmp_path, *argv):
    code, out, err = cli(capsys, "train", *argv, "--out", tmp_path / "run", "--quiet", "--epochs", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
    return err


def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys):
    sh = tmp_path / "sh"
    sh.mkdir()
    np.save(sh / "a.npy", np.zeros((10, 1, 4, 4), np.uint8))
    np.save(sh / "b.npy", np.zeros((10, 1, 5, 5), np.uint8))
    assert "disagree" in _bad(capsys, tmp_path, "--data", sh, "--data-in-memory", "no")
    assert "disagree" in _bad(capsys, tmp_path, "--data", sh)  # in memory too
    np.save(tmp_path / "c.npy", np.zeros((10, 4), np.complex64))
    assert "complex64" in _bad(capsys, tmp_path, "--data", tmp_path / "c.npy", "--data-in-memory", "no")
    (tmp_path / "empty").mkdir()
    assert "holds no images" in _bad(capsys, tmp_path, "--data", tmp_path / "empty", "--data-in-memory", "no")
    assert "--data-in-memory must be one of" in _bad(capsys, tmp_path, "--data", "digits", "--data-in-memory", "maybe")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,4\n")
    assert "vaekit prepare" in _bad(capsys, tmp_path, "--data", tmp_path / "t.csv", "--data-in-memory", "no")
    np.save(tmp_path / "u.npy", np.zeros((10, 4), np.uint8))
    assert "--binarize" in _bad(capsys, tmp_path, "--data", tmp_path / "u.npy", "--data-in-memory", "no",
                                "--binarize", "static")
    f = np.zeros((10, 4))
    f[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", f)
    assert "example 3" in _bad(capsys, tmp_path, "--data", tmp_path / "nan.npy", "--data-in-memory", "no")


def test_prepare_bad_inputs_leave_nothing(tmp_path, capsys):
    src = image_folder(tmp_path / "imgs", n_per_class=5)
    (tmp_path / "imgs" / "b" / "999.png").write_bytes(b"not a png")
    code, out, err = cli(capsys, "prepare", src, "--out", tmp_path / "new" / "sh", "--quiet")
    assert code == 2 and "999.png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for argv in ([src, "--out", tmp_path / "full"], [src, "--out", src / "sh"], [tmp_path / "full" / "x", "--out", tmp_path / "o"],
                 [src, "--out", tmp_path / "o", "--shard-size", "lots"]):
        code, out, err = cli(capsys, "prepare", *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists() and not (src / "sh").exists()
