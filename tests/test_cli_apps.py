"""The application verbs from the command line: files written, and bad input -> exit 2, one line,
nothing written."""

import json

import numpy as np
import pytest
from PIL import Image

from cli_helpers import cli
from vaekit.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cliapps") / "run"
    assert main(["train", "--data", "digits", "--epochs", "3", "--out", str(out), "--hidden", "32",
                 "--latent-dim", "3", "--quiet"]) == 0
    return out


def listing(d):
    return sorted(p.name for p in d.iterdir())


def test_train_writes_the_html_report(trained):
    page = (trained / "report.html").read_text()
    assert "data:image/png;base64," in page and "Latent space" in page


def test_sample_outputs(trained, tmp_path, capsys):
    code, out, _ = cli(capsys, "sample", trained, "--n", 12, "--out", tmp_path / "s.npy", "--json")
    assert code == 0 and json.loads(out)["n"] == 12
    assert np.load(tmp_path / "s.npy").shape == (12, 1, 8, 8)
    assert cli(capsys, "sample", trained, "--n", 9, "--out", tmp_path / "g.png")[0] == 0
    assert Image.open(tmp_path / "g.png").size[0] > 24
    assert cli(capsys, "sample", trained, "--n", 4, "--out", tmp_path / "folder")[0] == 0
    assert len(list((tmp_path / "folder").glob("*.png"))) == 4
    assert cli(capsys, "sample", trained, "--n", 5, "--out", tmp_path / "a.npz", "--draw")[0] == 0
    assert set(np.unique(np.load(tmp_path / "a.npz")["x"])) <= {0.0, 1.0}


def test_reconstruct_writes_figure_and_errors(trained, tmp_path, capsys):
    code, out, _ = cli(capsys, "reconstruct", trained, "--n", 10, "--out", tmp_path / "r.png", "--json")
    res = json.loads(out)
    assert code == 0 and res["n"] == 10 and res["mean_recon_nll"] > 0
    rows = (tmp_path / "r-errors.csv").read_text().splitlines()
    assert rows[0] == "index,squared_error,recon_nll_nats" and len(rows) == 11


def test_reconstruct_from_an_input_file(trained, tmp_path, capsys):
    x = np.random.default_rng(0).uniform(0, 1, size=(3, 64)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    code, out, _ = cli(capsys, "reconstruct", trained, "--input", tmp_path / "in.npy", "--out", tmp_path / "r.png", "--json")
    assert code == 0 and json.loads(out)["n"] == 3


def test_latent_verbs(trained, tmp_path, capsys):
    assert cli(capsys, "interpolate", trained, "--from", 0, "--to", 3, "--steps", 5, "--out", tmp_path / "i.npy")[0] == 0
    assert np.load(tmp_path / "i.npy").shape == (5, 1, 8, 8)
    assert cli(capsys, "interpolate", trained, "--from", 1, "--to", 2, "--method", "slerp",
               "--out", tmp_path / "i.png")[0] == 0
    code, out, _ = cli(capsys, "traverse", trained, "--json", "--out", tmp_path / "t.png")
    assert code == 0 and sorted(json.loads(out)["dims"]) == [0, 1, 2]
    assert cli(capsys, "traverse", trained, "--dim", "1", "--steps", 4, "--out", tmp_path / "t.npy")[0] == 0
    assert np.load(tmp_path / "t.npy").shape == (1, 4, 1, 8, 8)
    code, out, _ = cli(capsys, "edit", trained, "--input", 0, "--toward", 3, "--strength", 2, "--steps", 3,
                       "--out", tmp_path / "e.npy", "--json")
    assert code == 0 and json.loads(out)["toward"] == "3"
    assert np.load(tmp_path / "e.npy").shape == (3, 1, 8, 8)


def test_latent_frames_of_a_table_are_in_its_units(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    data = np.column_stack([rng.normal(1000, 50, 300) + 100 * y, rng.normal(-3, 0.1, 300), y])
    np.savetxt(tmp_path / "t.csv", data, delimiter=",", header="price,temp,kind", comments="", fmt="%.6g")
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", tmp_path / "t.csv", "--label-column", "kind", "--epochs", 5,
               "--hidden", 16, "--latent-dim", 2, "--out", run, "--quiet")[0] == 0
    assert cli(capsys, "interpolate", run, "--from", 0, "--to", 1, "--steps", 4, "--out", tmp_path / "i.csv")[0] == 0
    rows = np.genfromtxt(tmp_path / "i.csv", delimiter=",", names=True)
    assert rows.dtype.names == ("t", "price", "temp") and len(rows) == 4
    np.testing.assert_allclose(rows["t"], [0, 1 / 3, 2 / 3, 1])
    assert 700 < rows["price"].mean() < 1400 and -4 < rows["temp"].mean() < -2  # not standardised units
    assert cli(capsys, "traverse", run, "--dim", "0,1", "--steps", 3, "--out", tmp_path / "tr.csv")[0] == 0
    assert cli(capsys, "traverse", run, "--dim", "0,1", "--steps", 3, "--out", tmp_path / "t.npy")[0] == 0
    rows = np.genfromtxt(tmp_path / "tr.csv", delimiter=",", names=True)
    assert rows.dtype.names == ("dim", "value", "price", "temp")
    assert rows["dim"].tolist() == [0, 0, 0, 1, 1, 1] and rows["value"].tolist() == [-3, 0, 3] * 2
    frames = np.load(tmp_path / "t.npy")
    assert frames.shape == (2, 3, 2)
    np.testing.assert_allclose(frames.reshape(6, 2), np.column_stack([rows["price"], rows["temp"]]), rtol=1e-5)
    code, _, err = cli(capsys, "edit", run, "--input", 0, "--toward", 1, "--steps", 3, "--out", tmp_path / "e.csv")
    assert code == 0, err
    assert (tmp_path / "e.csv").read_text().splitlines()[0] == "strength,price,temp"
    # the file the run was trained on and the run's own files are never an --out
    table, model = (tmp_path / "t.csv").read_bytes(), (run / "model.safetensors").read_bytes()
    for out, needle in ((tmp_path / "t.csv", "the run's training data"),
                        (run / "model.safetensors", "the run's model.safetensors")):
        code, _, err = cli(capsys, "sample", run, "--n", 3, "--out", out)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "t.csv").read_bytes() == table and (run / "model.safetensors").read_bytes() == model


def test_embed_csv_and_map(trained, tmp_path, capsys):
    code, out, _ = cli(capsys, "embed", trained, "--out", tmp_path / "z.csv", "--variance", "--limit", 50, "--json")
    assert code == 0
    rows = (tmp_path / "z.csv").read_text().splitlines()
    assert rows[0].split(",") == ["z0", "z1", "z2", "var0", "var1", "var2"] and len(rows) == 51
    assert (tmp_path / "z-map.png").exists()
    assert cli(capsys, "embed", trained, "--out", tmp_path / "z.npz", "--map", "none")[0] == 0
    z = np.load(tmp_path / "z.npz")
    assert z["mean"].shape[1] == 3 and "y" in z


def test_report_verb(trained, tmp_path, capsys):
    code, out, _ = cli(capsys, "report", trained, "--out", tmp_path / "page.html")
    assert code == 0 and (tmp_path / "page.html").read_text().count("<img") >= 6


@pytest.mark.parametrize("argv, needle", [
    (["sample", "{run}", "--n", "0"], "--n"),
    (["sample", "{run}", "--temperature", "-1"], "--temperature"),
    (["sample", "{run}", "--out", "{tmp}/x.gif"], ".gif"),
    (["sample", "{run}", "--out", "{tmp}/nodir/x.png"], "does not exist"),
    (["sample", "{tmp}/missing-run"], "not found"),
    (["reconstruct", "{run}", "--input", "{tmp}/missing.npy", "--out", "{tmp}/r.png"], "missing.npy"),
    (["reconstruct", "{run}", "--input", "{tmp}/bad.npy", "--out", "{tmp}/r.png"], "shape"),
    (["interpolate", "{run}", "--from", "0", "--to", "99999", "--out", "{tmp}/i.png"], "out of range"),
    (["interpolate", "{run}", "--from", "0", "--to", "1", "--steps", "1", "--out", "{tmp}/i.png"], "--steps"),
    (["traverse", "{run}", "--dim", "7", "--out", "{tmp}/t.png"], "out of range"),
    (["traverse", "{run}", "--dim", "a", "--out", "{tmp}/t.png"], "--dim"),
    (["edit", "{run}", "--input", "0", "--toward", "cat", "--out", "{tmp}/e.png"], "unknown label"),
    (["embed", "{run}", "--out", "{tmp}/z.txt"], ".txt"),
    (["report", "{run}", "--out", "{tmp}/r.pdf"], ".pdf"),
    (["reconstruct", "{run}", "--input", "{tmp}/bad.npy", "--out", "{tmp}/bad.npy"], "bad.npy is also the --input given"),
    (["embed", "{run}", "--input", "{tmp}/bad.npy", "--out", "{tmp}/z.csv", "--map-out", "{tmp}/../{tmpname}/bad.npy"],
     "--map-out"),
])
def test_bad_input_exits_2_with_one_line_and_no_files(trained, tmp_path, capsys, argv, needle):
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    before = listing(tmp_path)
    run_before = listing(trained)
    bad = (tmp_path / "bad.npy").read_bytes()
    code, out, err = cli(capsys, *[a.format(run=trained, tmp=tmp_path, tmpname=tmp_path.name) for a in argv])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
    assert listing(tmp_path) == before and listing(trained) == run_before
    assert (tmp_path / "bad.npy").read_bytes() == bad
