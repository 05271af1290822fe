"""A folder of series (one per file) as training data: each file split in time and windowed on its own,
one scaler over all training rows, detection thresholds from every file's validation rows."""

import json

import numpy as np

from cli_helpers import cli


def _folder(d, n=3, rows=600, channels=2):
    d.mkdir()
    for k in range(n):
        t = np.arange(rows)
        x = np.column_stack([np.sin(t / (11 + 4 * k) + j) for j in range(channels)])
        x += np.random.default_rng(k).normal(scale=0.05, size=x.shape)
        cols = ",".join("abcdefgh"[:channels])
        (d / f"machine-{k}.csv").write_text(f"time,{cols}\n" + "".join(
            f"{i}," + ",".join(f"{v:.4f}" for v in row) + "\n" for i, row in enumerate(x)))
    return d


def test_train_on_a_folder_of_series_and_detect(tmp_path, capsys):
    data = _folder(tmp_path / "series")
    code, out, err = cli(capsys, "train", "--data", data, "--window", "24", "--stride", "4", "--arch", "gru",
                         "--hidden", "16", "--latent-dim", "3", "--epochs", "2", "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    src = json.loads((tmp_path / "run" / "config.json").read_text())["source"]
    assert [f["name"] for f in src["files"]] == ["machine-0.csv", "machine-1.csv", "machine-2.csv"]
    assert all(f["split_rows"] == {"train": 480, "val": 60, "test": 60} for f in src["files"])
    assert src["rows"] == 1800 and len(src["scaler"]["mean"]) == 2
    # windows never cross files: the training windows are each file's own (480 rows -> starts 0, 4, ..., 456)
    from vaekit.run import load_run_data, read_config

    cfg, _, _ = read_config(tmp_path / "run")
    d = load_run_data(cfg)
    assert len(d.train) == 3 * len(range(0, 480 - 24 + 1, 4))
    code, out, err = cli(capsys, "detect", tmp_path / "run", "--input", data / "machine-1.csv",
                         "--out", tmp_path / "s.csv", "--json")
    assert code == 0, err
    assert json.loads(out)["rows"] == 600
    code, out, err = cli(capsys, "embed", tmp_path / "run", "--input", data, "--out", tmp_path / "z.csv",
                         "--map", "none", "--json")  # a folder as --input: every file's windows
    assert code == 0 and json.loads(out)["n"] == 3 * (len(range(0, 600 - 24 + 1, 4)) + 0), err
    code, _, err = cli(capsys, "detect", tmp_path / "run", "--out", tmp_path / "t.csv")
    assert code == 2 and "--input" in err and not (tmp_path / "t.csv").exists()


def test_bad_folders(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "train", "--data", empty, "--window", "8", "--arch", "gru", "--out", tmp_path / "r1")
    assert code == 2 and "no series files" in err and not (tmp_path / "r1").exists()
    mixed = _folder(tmp_path / "mixed", n=2)
    t = np.arange(300)
    (mixed / "z-three.csv").write_text("time,a,b,c\n" + "".join(f"{i},1,2,{np.sin(i):.3f}\n" for i in t))
    code, _, err = cli(capsys, "train", "--data", mixed, "--window", "8", "--arch", "gru", "--out", tmp_path / "r2")
    assert code == 2 and "same channels" in err and not (tmp_path / "r2").exists()
