"""The conditional VAE from the command line: training on labels, attribute vectors and
conditioning inputs, the conditional verbs, and bad input (exit 2, one line, nothing written)."""

import json

import numpy as np
import pytest
from PIL import Image

from cli_helpers import cli
from vaekit.cli import main


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cvae") / "run"
    assert main(["train", "--data", "digits", "--model", "cvae", "--epochs", "2", "--out", str(out),
                 "--hidden", "32", "--latent-dim", "4", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "run"
    assert main(["train", "--data", "digits", "--epochs", "1", "--out", str(out), "--hidden", "16",
                 "--latent-dim", "2", "--quiet"]) == 0
    return out


def test_training_writes_the_usual_run(cvae_run):
    cfg = json.loads((cvae_run / "config.json").read_text())
    assert cfg["model"]["model"] == "cvae" and cfg["spec"]["num_classes"] == 10
    for name in ("model.safetensors", "samples.png", "reconstructions.png", "report.html", "evaluation.json"):
        assert (cvae_run / name).exists(), name
    page = (cvae_run / "report.html").read_text()
    assert "one row per class" in page
    assert "mlp 32 · latent 4 · bernoulli likelihood" in page  # the resolved settings, not None
    grid = Image.open(cvae_run / "samples.png")
    assert grid.size[1] > grid.size[0]  # 10 rows (classes) of 8 samples


def test_sample_one_class(cvae_run, tmp_path, capsys):
    code, out, _ = cli(capsys, "sample", cvae_run, "--label", 7, "--n", 16, "--out", tmp_path / "s.npy", "--json")
    assert code == 0 and json.loads(out)["label"] == "7" and json.loads(out)["counts"] == {"7": 16}
    assert np.load(tmp_path / "s.npy").shape == (16, 1, 8, 8)
    assert cli(capsys, "sample", cvae_run, "--label", 7, "--n", 16, "--out", tmp_path / "s.png")[0] == 0
    assert Image.open(tmp_path / "s.png").size[0] > 32


def test_sample_per_class(cvae_run, tmp_path, capsys):
    assert cli(capsys, "sample", cvae_run, "--per-class", 10, "--out", tmp_path / "p.npz")[0] == 0
    d = np.load(tmp_path / "p.npz")
    assert d["x"].shape == (100, 1, 8, 8) and np.bincount(d["y"]).tolist() == [10] * 10
    assert d["classes"].tolist() == [str(i) for i in range(10)]
    assert cli(capsys, "sample", cvae_run, "--per-class", 2, "--out", tmp_path / "synth")[0] == 0
    assert sorted(p.name for p in (tmp_path / "synth").iterdir()) == [str(i) for i in range(10)]
    assert all(len(list((tmp_path / "synth" / str(i)).glob("*.png"))) == 2 for i in range(10))
    assert cli(capsys, "sample", cvae_run, "--per-class", 3, "--out", tmp_path / "g.png")[0] == 0
    w, h = Image.open(tmp_path / "g.png").size
    assert h > 3 * w  # 10 rows of 3


def test_edit_to_label_interpolate_and_traverse(cvae_run, tmp_path, capsys):
    code, out, _ = cli(capsys, "edit", cvae_run, "--input", 3, "--to-label", 5, "--out", tmp_path / "e.npy", "--json")
    res = json.loads(out)
    assert code == 0 and res["to"] == ["5"] and np.load(tmp_path / "e.npy").shape == (2, 1, 8, 8)
    assert cli(capsys, "edit", cvae_run, "--input", 3, "--to-label", "all", "--out", tmp_path / "e.png")[0] == 0
    code, out, _ = cli(capsys, "interpolate", cvae_run, "--from", 0, "--to", 1, "--label", 2, "--steps", 5,
                       "--out", tmp_path / "i.npy", "--json")
    assert code == 0 and json.loads(out)["label"] == "2" and np.load(tmp_path / "i.npy").shape == (5, 1, 8, 8)
    code, out, _ = cli(capsys, "traverse", cvae_run, "--label", 4, "--dim", "0,1", "--steps", 3,
                       "--out", tmp_path / "t.npy", "--json")
    assert code == 0 and json.loads(out)["label"] == "4" and np.load(tmp_path / "t.npy").shape == (2, 3, 1, 8, 8)
    code, out, _ = cli(capsys, "traverse", cvae_run, "--input", 5, "--dim", 0, "--out", tmp_path / "t.png", "--json")
    assert code == 0 and json.loads(out)["label"] is not None


def test_the_other_verbs_read_the_labels(cvae_run, tmp_path, capsys):
    assert cli(capsys, "reconstruct", cvae_run, "--n", 8, "--out", tmp_path / "r.png")[0] == 0
    assert cli(capsys, "embed", cvae_run, "--out", tmp_path / "z.npz")[0] == 0
    assert np.load(tmp_path / "z.npz")["mean"].shape[1] == 4
    code, out, _ = cli(capsys, "detect", cvae_run, "--out", tmp_path / "d.csv", "--json")
    assert code == 0 and json.loads(out)["score"] == "elbo"
    code, out, _ = cli(capsys, "evaluate", cvae_run, "--iw-samples", 5, "--json")
    assert code == 0 and json.loads(out)["nll"] <= -json.loads(out)["elbo"] + 1.0
    assert cli(capsys, "report", cvae_run, "--out", tmp_path / "r.html")[0] == 0


def _bad(capsys, *argv):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_labels_and_runs(cvae_run, vae_run, tmp_path, capsys):
    assert "the classes are: 0, 1, 2" in _bad(capsys, "sample", cvae_run, "--label", 12, "--out", tmp_path / "a.png")
    assert "not conditional" in _bad(capsys, "sample", vae_run, "--label", 3, "--out", tmp_path / "b.png")
    assert "not conditional" in _bad(capsys, "sample", vae_run, "--per-class", 3, "--out", tmp_path / "c.npz")
    assert "not conditional" in _bad(capsys, "edit", vae_run, "--input", 0, "--to-label", 3, "--out", tmp_path / "d.png")
    assert "not conditional" in _bad(capsys, "interpolate", vae_run, "--from", 0, "--to", 1, "--label", 3,
                                     "--out", tmp_path / "e.png")
    assert "--to-label" in _bad(capsys, "edit", cvae_run, "--input", 0, "--toward", 3, "--out", tmp_path / "f.png")
    assert "give it alone" in _bad(capsys, "sample", cvae_run, "--per-class", 3, "--n", 5, "--out", tmp_path / "g.npz")
    assert "excess" in _bad(capsys, "detect", cvae_run, "--score", "excess", "--out", tmp_path / "h.csv")
    assert list(tmp_path.iterdir()) == []
    # an unconditional run still edits along the class-mean difference
    assert cli(capsys, "edit", vae_run, "--input", 0, "--toward", 3, "--out", tmp_path / "ok.png")[0] == 0


def test_bad_training_data(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(size=(40, 6)).astype(np.float32))
    assert "--model m2" in _bad(capsys, "train", "--data", "digits", "--model", "cvae", "--labels-per-class", 5,
                                "--out", tmp_path / "r1")
    assert "neither" in _bad(capsys, "train", "--data", tmp_path / "x.npy", "--model", "cvae", "--out", tmp_path / "r2")
    one = tmp_path / "one" / "cats"
    one.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(one / f"{i}.png")
    # one class subfolder is no labelling at all (the data layer reads no labels from it)
    assert "one subfolder per class (two or more)" in _bad(capsys, "train", "--data", tmp_path / "one", "--model",
                                                           "cvae", "--out", tmp_path / "r3")
    assert "--model cvae" in _bad(capsys, "train", "--data", "digits", "--conditional-prior", "--out", tmp_path / "r4")
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3", "r4"))


def test_attribute_vectors_from_a_csv_and_an_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=120), rng.uniform(size=120)
    x = np.stack([a + 0.1 * rng.normal(size=120), 2 * b, a * b], 1)
    rows = ["f1,f2,f3,age,height"] + [",".join(f"{v:.4f}" for v in (*x[i], a[i], b[i])) for i in range(120)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "csvrun"
    assert cli(capsys, "train", "--data", tmp_path / "t.csv", "--condition-columns", "age,height", "--model", "cvae",
               "--epochs", 1, "--hidden", 8, "--latent-dim", 2, "--out", run, "--quiet")[0] == 0
    assert json.loads((run / "config.json").read_text())["spec"]["cond_shape"] == [2]
    assert cli(capsys, "sample", run, "--n", 5, "--out", tmp_path / "s.csv")[0] == 0
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "f1,f2,f3"
    assert "attribute vectors" in _bad(capsys, "sample", run, "--label", 1, "--out", tmp_path / "bad.csv")
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), c=np.stack([a, b], 1).astype(np.float32))
    run2 = tmp_path / "npzrun"
    assert cli(capsys, "train", "--data", tmp_path / "d.npz", "--model", "cvae", "--conditional-prior", "--epochs", 1,
               "--hidden", 8, "--latent-dim", 2, "--out", run2, "--quiet")[0] == 0
    code, out, _ = cli(capsys, "sample", run2, "--input", tmp_path / "d.npz", "--n", 4, "--out", tmp_path / "s.npy",
                       "--json")
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (4, 3)


def test_a_paired_conditioning_input_with_conv(tmp_path, capsys):
    rng = np.random.default_rng(1)
    img = (rng.uniform(size=(60, 1, 8, 8)) > 0.5).astype(np.float32)
    np.save(tmp_path / "x.npy", img)
    np.save(tmp_path / "c.npy", 1.0 - img)
    run = tmp_path / "paired"
    assert cli(capsys, "train", "--data", tmp_path / "x.npy", "--condition", tmp_path / "c.npy", "--model", "cvae",
               "--arch", "conv", "--epochs", 1, "--latent-dim", 2, "--out", run, "--quiet")[0] == 0
    assert json.loads((run / "config.json").read_text())["spec"]["cond_shape"] == [1, 8, 8]
    assert cli(capsys, "sample", run, "--n", 6, "--out", tmp_path / "s.npy")[0] == 0
    assert np.load(tmp_path / "s.npy").shape == (6, 1, 8, 8)


def test_a_class_folder_with_conv_at_32(tmp_path, capsys):
    root = tmp_path / "shapes"
    rng = np.random.default_rng(2)
    for name, draw in (("bars", lambda a: a.__setitem__((slice(None), slice(6, 10)), 255)),
                       ("blocks", lambda a: a.__setitem__((slice(4, 12), slice(4, 12)), 255))):
        (root / name).mkdir(parents=True)
        for i in range(12):
            a = (rng.uniform(size=(16, 16)) * 60).astype(np.uint8)
            draw(a)
            Image.fromarray(a).save(root / name / f"{i}.png")
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", root, "--model", "cvae", "--arch", "conv", "--image-size", 32,
               "--epochs", 1, "--latent-dim", 2, "--out", run, "--quiet")[0] == 0
    code, out, _ = cli(capsys, "sample", run, "--label", "blocks", "--n", 4, "--out", tmp_path / "b.npy", "--json")
    assert code == 0 and json.loads(out)["label"] == "blocks"
    assert np.load(tmp_path / "b.npy").shape == (4, 1, 32, 32)
    assert "bars, blocks" in _bad(capsys, "sample", run, "--label", "circles", "--out", tmp_path / "x.png")
    code, out, _ = cli(capsys, "sample", run, "--label", 1, "--n", 2, "--out", tmp_path / "i.npy", "--json")
    assert code == 0 and json.loads(out)["label"] == "blocks"  # a class index works beside the names
