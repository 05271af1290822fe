"""Labels, hidden labels and conditions carried through the data layer as one Batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaekit.data.batch import UNLABELLED, Batch, labelled_first_order
from vaekit.data.datasets import hide_labels, load_data, load_inputs
from vaekit.errors import DataError, UsageError


def _csv(path, rows, header="a,b,age,height,label"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [(round(rng.normal(), 4), round(rng.normal(), 4), int(rng.integers(20, 70)), round(rng.normal(170, 9), 1),
             ["cat", "dog", "owl"][i % 3]) for i in range(n)]


def test_batch_slices_selects_and_moves_every_field():
    b = Batch(torch.arange(10.0).reshape(5, 2), torch.tensor([0, 1, -1, 1, 0]), torch.ones(5, 3))
    part = b[1:3]
    assert len(part) == 2 and part.y.tolist() == [1, -1] and part.c.shape == (2, 3)
    sel = b.select(torch.tensor([4, 0]))
    assert sel.x[:, 0].tolist() == [8.0, 0.0] and sel.y.tolist() == [0, 0]
    assert b.to("cpu", torch.float64).x.dtype == torch.float64 and b.to("cpu", torch.float64).y.dtype == torch.int64
    assert b.labelled.tolist() == [True, True, False, True, True]
    assert Batch(torch.zeros(3, 1)).labelled is None and [f for f, _ in Batch(torch.zeros(1, 1)).items()] == ["x"]


def test_condition_columns_leave_the_features_and_are_standardised(tmp_path):
    p = _csv(tmp_path / "t.csv", _table())
    d = load_data(str(p), condition_columns=["age", "height"], label_column="label", seed=1)
    assert d.spec.shape == (2,) and d.spec.cond_shape == (2,) and d.spec.num_classes == 3
    assert d.source["columns"] == ["a", "b"] and d.source["condition_columns"] == ["age", "height"]
    assert d.source["classes"] == ["cat", "dog", "owl"]
    c = d.train.c
    assert c.shape == (len(d.train), 2) and c.dtype == torch.float32
    assert torch.allclose(c.mean(0), torch.zeros(2), atol=1e-5) and torch.allclose(c.std(0, correction=0), torch.ones(2), atol=1e-4)
    # new inputs get the training statistics, and their condition columns are taken out as well
    s = load_inputs(str(p), d.spec, d.source)
    raw = np.array([r[2:4] for r in _table()], np.float64)
    st = d.source["condition_standardize"]
    expect = (raw - np.array(st["mean"])) / np.array(st["std"])
    assert s.x.shape == (60, 2) and np.allclose(s.c.numpy(), expect, atol=1e-5)


def test_condition_column_errors(tmp_path):
    p = _csv(tmp_path / "t.csv", _table())
    with pytest.raises(UsageError, match="'weight' not in"):
        load_data(str(p), condition_columns=["weight"])
    with pytest.raises(UsageError, match="every feature column"):
        load_data(str(p), condition_columns=["a", "b", "age", "height"], label_column="label")
    with pytest.raises(UsageError, match="CSV"):
        load_data("digits", condition_columns=["a"])


def test_npz_condition_and_paired_condition_input(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((40, 1, 8, 8)) > 0.5).astype(np.float32)
    attrs = rng.random((40, 4)).astype(np.float32)  # in [0, 1]: kept as they are
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 4, c=attrs)
    d = load_data(str(tmp_path / "d.npz"), seed=0)
    assert d.spec.cond_shape == (4,) and d.source["condition_standardize"] is None
    # each example keeps its own condition through the random split
    for s in (d.train, d.val, d.test):
        idx = [int(np.flatnonzero((x.reshape(40, -1) == xi.numpy().reshape(1, -1)).all(1))[0]) for xi in s.x]
        assert np.allclose(s.c.numpy(), attrs[idx])
    # a second image array paired example by example is a conditioning input
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "given.npy", (x * 255).astype(np.uint8)[:, :, :4])
    d2 = load_data(str(tmp_path / "x.npy"), condition=str(tmp_path / "given.npy"), seed=0)
    assert d2.spec.cond_shape == (1, 4, 8) and float(d2.train.c.max()) <= 1.0
    np.save(tmp_path / "short.npy", x[:10])
    with pytest.raises(DataError, match="10 conditions for 40 examples"):
        load_data(str(tmp_path / "x.npy"), condition=str(tmp_path / "short.npy"))


def test_labels_per_class_hides_the_rest_of_the_training_labels():
    d = load_data("digits", labels_per_class=5, label_seed=3)
    y = d.train.y
    known = y[y != UNLABELLED]
    assert len(known) == 50 and torch.bincount(known).tolist() == [5] * 10
    assert (d.val.y >= 0).all() and (d.test.y >= 0).all()  # evaluation keeps its labels
    assert d.source["labelled"] == 50 and d.source["labels_per_class"] == 5
    again = load_data("digits", labels_per_class=5, label_seed=3).train.y
    other = load_data("digits", labels_per_class=5, label_seed=4).train.y
    assert torch.equal(y, again) and not torch.equal(y, other)
    assert torch.equal(load_data("digits").train.x, d.train.x)  # the same split, only labels hidden


def test_labels_per_class_errors(tmp_path):
    with pytest.raises(UsageError, match="more than class"):
        load_data("digits", labels_per_class=1000)
    with pytest.raises(UsageError, match="at least 1"):
        hide_labels(torch.tensor([0, 1]), 0, 0)
    np.save(tmp_path / "x.npy", np.zeros((20, 5), np.float32))
    with pytest.raises(UsageError, match="has none"):
        load_data(str(tmp_path / "x.npy"), labels_per_class=2)


def test_label_values(tmp_path):
    p = _csv(tmp_path / "f.csv", [(1, 2, 0.5), (3, 4, 1.5), (1, 1, 2.0)], header="a,b,label")
    with pytest.raises(DataError, match="integers or class names, got 0.5"):
        load_data(str(p), val_fraction=0, test_fraction=0)
    # empty label cells and -1 (with >= 2 real classes) are unlabelled examples, not a class
    rows = [(i, i % 3, ["", "-1", "1", "2", "3"][i % 5]) for i in range(20)]
    q = _csv(tmp_path / "u.csv", rows, header="a,b,label")
    d = load_data(str(q), val_fraction=0, test_fraction=0)
    assert d.source["classes"] == [1, 2, 3] and int((d.train.y == UNLABELLED).sum()) == 8
    pm = _csv(tmp_path / "pm.csv", [(i, i, [-1, 1][i % 2]) for i in range(10)], header="a,b,label")
    assert load_data(str(pm), val_fraction=0, test_fraction=0).source["classes"] == [-1, 1]


def test_labelled_first_order_puts_labels_in_every_batch():
    labelled = torch.zeros(1000, dtype=torch.bool)
    labelled[torch.arange(0, 1000, 100)] = True  # 10 labelled examples
    order = labelled_first_order(labelled, 64, 8, torch.Generator().manual_seed(0))
    unl = order[~labelled[order]]
    assert sorted(unl.tolist()) == torch.nonzero(~labelled).flatten().tolist()  # each unlabelled once
    for i in range(0, len(order), 64):
        b = order[i:i + 64]
        assert int(labelled[b].sum()) == 8 and len(b) <= 64


def _png_folder(root, classes, n=6, size=8, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def test_labels_per_class_names_the_smallest_class():
    y = torch.tensor([0] * 9 + [1] * 4 + [2] * 6)
    with pytest.raises(UsageError, match=r"class 1 has .*\(4, the fewest of any class\); use at most 4"):
        hide_labels(y, 7, 0)
    assert (hide_labels(y, 4, 0) >= 0).sum() == 12


def test_folder_names_are_classes_as_written(tmp_path):
    # "01" and "1" were both read as the number 1 (one class), and "-1" as "unlabelled"
    d = load_data(str(_png_folder(tmp_path / "a", ["01", "1", "10", "2"])), val_fraction=0.2, test_fraction=0.2)
    assert d.source["classes"] == ["1", "2", "10", "01"] and d.spec.num_classes == 4
    d = load_data(str(_png_folder(tmp_path / "b", ["-1", "0", "1"])), val_fraction=0.2, test_fraction=0.2)
    assert d.source["classes"] == ["-1", "0", "1"] and bool((d.train.y >= 0).all())


def test_new_inputs_take_the_run_classes_by_name(tmp_path):
    d = load_data(str(_png_folder(tmp_path / "train", ["cat", "dog", "owl"])), val_fraction=0.2, test_fraction=0.2)
    new = _png_folder(tmp_path / "new", ["owl", "dog"], n=2, seed=1)
    s = load_inputs(str(new), d.spec, d.source)
    assert s.y.tolist() == [1, 1, 2, 2]  # dog, dog, owl, owl: the run's indices, not the folder's own order
    odd = _png_folder(tmp_path / "odd", ["owl", "seven"], n=2, seed=2)
    assert load_inputs(str(odd), d.spec, d.source).y.tolist() == [2, 2, 3, 3]  # a new class after the run's
    with pytest.raises(DataError, match="'seven' are not classes of this run"):
        load_inputs(str(odd), d.spec, d.source, labels="run")
    # a run whose classes are the numbers 0..9 (named datasets): folders "3" and "7" are those classes
    digits = load_data("digits")
    from PIL import Image

    for c in ("3", "7"):
        (tmp_path / "dig" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "dig" / c / "a.png")
    assert load_inputs(str(tmp_path / "dig"), digits.spec, digits.source).y.tolist() == [3, 7]


def test_one_image_file_is_one_input(tmp_path):
    from PIL import Image

    d = load_data(str(_png_folder(tmp_path / "train", ["a", "b"])), val_fraction=0.2, test_fraction=0.2)
    Image.fromarray(np.full((16, 12, 3), 200, np.uint8)).save(tmp_path / "one.jpg")  # RGB, another size
    s = load_inputs(str(tmp_path / "one.jpg"), d.spec, d.source)
    assert s.x.shape == (1, *d.spec.shape) and s.y is None and float(s.x.mean()) == pytest.approx(200 / 255, abs=0.02)


def test_npz_class_names_are_kept(tmp_path):
    x = np.random.default_rng(0).random((40, 4)).astype(np.float32)
    y = np.repeat(np.arange(4), 10)
    y[::7] = -1
    names = np.array(["ankle boot", "bag", "coat", "dress"])
    np.savez(tmp_path / "s.npz", x=x, y=y, classes=names)
    d = load_data(str(tmp_path / "s.npz"))
    assert d.source["classes"] == names.tolist()
    got = torch.cat([d.train.y, d.val.y, d.test.y])
    assert (got == UNLABELLED).sum() == (y == -1).sum() and set(got[got >= 0].tolist()) == {0, 1, 2, 3}
    np.savez(tmp_path / "bad.npz", x=x, y=y + 5, classes=names)
    with pytest.raises(DataError, match="class indices 0..3"):
        load_data(str(tmp_path / "bad.npz"))


def test_labels_against_known_classes():
    from vaekit.data.datasets import _encode_labels

    # a prepared folder's class names read back as text: "-1" is a class there, "01" is not "1"
    codes, classes = _encode_labels(np.array(["-1", "0", "1", "-1"]), "x", ["-1", "0", "1"])
    assert codes.tolist() == [0, 1, 2, 0] and classes == ["-1", "0", "1"]
    codes, _ = _encode_labels(np.array(["01", "1", ""]), "x", ["1", "01"])
    assert codes.tolist() == [1, 0, UNLABELLED]
    # -1 is unlabelled for classes that do not include it, even beside a single class
    codes, _ = _encode_labels(np.array([-1, 3, -1]), "x", list(range(10)))
    assert codes.tolist() == [UNLABELLED, 3, UNLABELLED]
    # integers index named classes (an .npz saved with y = 0..9 for a Fashion-MNIST run)
    names = ["T-shirt-top", "Trouser", "Pullover"]
    codes, classes = _encode_labels(np.array([2, 0, -1]), "x", names, extend=True)
    assert codes.tolist() == [2, 0, UNLABELLED] and classes == names
    # names outside the classes: appended with extend, the labels' own classes without
    codes, classes = _encode_labels(np.array(["Trouser", "Boot"]), "x", names, extend=True)
    assert codes.tolist() == [1, 3] and classes == names + ["Boot"]
    assert _encode_labels(np.array(["Trouser", "Boot"]), "x", names)[1] == ["Boot", "Trouser"]


def test_streamed_and_prepared_folders_keep_folder_names(tmp_path):
    from vaekit.data.prepare import prepare

    root = _png_folder(tmp_path / "f", ["-1", "0", "01", "10", "9"], n=4)
    mem = load_data(str(root), val_fraction=0.2, test_fraction=0.2)
    streamed = load_data(str(root), val_fraction=0.2, test_fraction=0.2, data_in_memory="no")
    assert mem.source["classes"] == streamed.source["classes"] == ["-1", "0", "9", "10", "01"]
    assert torch.equal(mem.test.y, torch.as_tensor(streamed.test.y))
    prepare(str(root), tmp_path / "shards")
    shards = load_data(str(tmp_path / "shards"), val_fraction=0.2, test_fraction=0.2)
    assert shards.source["classes"] == mem.source["classes"] and bool((shards.train.y >= 0).all())
