"""Command-line smoke runs with tiny settings, and bad input: exit 2, one line, no files."""

import json
import subprocess
import sys

import pytest

from cli_helpers import cli as run_cli
from vaekit.cli import main

TINY = ["--hidden", "32", "--latent-dim", "4", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", "digits", "--epochs", "2", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_run_directory(trained):
    for name in ("config.json", "model.safetensors", "last.safetensors", "metrics.jsonl", "evaluation.json",
                 "reconstructions.png", "samples.png", "training_curves.png", "kl_per_dim.png"):
        assert (trained / name).exists(), name
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model"]["likelihood"] == "bernoulli" and cfg["spec"]["shape"] == [1, 8, 8]
    assert "vaekit_version" in cfg
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 2


def test_train_json(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "r"),
                             "--json", "--kl-warmup", "1", "--free-bits", "0.1", *TINY)
    assert code == 0
    res = json.loads(out)
    assert res["epochs"] == 1 and res["test"]["elbo"] < 0 and "active_units" in res["test"]


def test_evaluate_json(trained, capsys):
    code, out, _ = run_cli(capsys, "evaluate", str(trained), "--iw-samples", "20", "--limit", "40", "--json")
    assert code == 0
    res = json.loads(out)
    for k in ("elbo", "recon", "kl", "nll", "bits_per_dim", "active_units", "kl_per_dim"):
        assert k in res, k
    assert res["n"] == 40 and len(res["kl_per_dim"]) == 4
    assert res["nll"] <= -res["elbo"] + 1.0  # the IS estimate is (statistically) below -ELBO
    code, out, _ = run_cli(capsys, "evaluate", str(trained), "--split", "val", "--json")
    assert code == 0 and "nll" not in json.loads(out)
    for flag, value, says in (("--limit", "0", "--limit must be >= 1"), ("--iw-samples", "-2", "--iw-samples must be >= 0"),
                              ("--batch-size", "0", "--batch-size must be >= 1")):
        code, out, err = run_cli(capsys, "evaluate", str(trained), flag, value)
        assert code == 2 and says in err and out == "" and "Traceback" not in err


def test_resume_extends_training(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(capsys, "train", "--data", "digits", "--epochs", "1", "--out", str(out), *TINY)[0] == 0
    first = json.loads((out / "config.json").read_text())
    first["created"] = "2000-01-01T00:00:00+0000"  # as if trained long ago
    (out / "config.json").write_text(json.dumps(first))
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--epochs", "2", "--quiet",
                           "--matmul-precision", "medium")  # a compute setting may change on resume
    assert code == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["matmul_precision"] == "medium"
    # the run keeps when it was created and says when it was resumed
    assert saved["created"] == "2000-01-01T00:00:00+0000" and saved["resumed"][:4] >= "2026"
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--epochs", "3", "--lr", "0.1", "--quiet")
    assert code == 2 and "--lr 0.1 (saved: 0.001)" in err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_with_the_first_command_line_is_accepted(tmp_path, capsys):
    """``vaekit train <the same flags> --resume`` continues; only settings that differ are refused."""
    out = tmp_path / "r"
    first = ["train", "--data", "digits", "--out", str(out), "--seed", "3", *TINY]
    assert run_cli(capsys, *first, "--epochs", "1")[0] == 0
    code, _, err = run_cli(capsys, *first, "--epochs", "2", "--resume")
    assert code == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    code, _, err = run_cli(capsys, *first, "--epochs", "3", "--latent-dim", "6", "--resume")
    assert code == 2 and "--latent-dim 6 (saved: 4)" in err and "--seed" not in err.split("differ")[1].split(";")[0]
    code, _, err = run_cli(capsys, "train", "--data", "mnist", "--out", str(out), "--resume", "--quiet")
    assert code == 2 and "--data mnist (saved: digits)" in err


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(capsys, "train", "--data", "digits", "--out", str(out), "--epochs", "1", *TINY)[0] == 0
    for name in ("last.safetensors", "model.safetensors"):
        (out / name).unlink()
    (out / "metrics.jsonl").write_text('{"epoch": 0, "half": "written"}\n')
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--resume", "--epochs", "2", "--quiet")
    assert code == 0, err
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and "half" not in rows[0]
    assert (out / "last.safetensors").exists()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["train", "--data", "digits", "--binarize", "sometimes"], "binarize"),
        (["train", "--data", "digits", "--hidden", "abc"], "integers"),
        (["train", "--data", "digits", "--lr", "nan"], "finite"),
        (["train", "--data", "digits", "--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["train", "--data", "digits", "--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
        (["train", "--data", "digitz"], "did you mean 'digits'"),
        (["train", "--data", "/no/such/file.csv"], "no such file"),
        (["train", "--data", "digits", "--likelihood", "poisson"], "likelihood"),
        (["train", "--data", "digits", "--latent-dim", "0"], "latent-dim"),
        (["train", "--data", "digits", "--beta", "-1"], "--beta must be >= 0, got -1.0"),
        (["train", "--data", "digits", "--free-bits", "-0.5"], "--free-bits must be >= 0, got -0.5"),
        (["train", "--data", "digits", "--device", "cuda:7" if False else "gpu"], "device"),
        (["train", "--data", "digits", "--bogus-flag", "1"], "unrecognized"),
        # no prefix matching: --lat is not --latent-dim, and detect's --data is not its --data-dir
        (["train", "--data", "digits", "--lat", "4"], "unrecognized arguments: --lat 4"),
        (["detect", "/no/such/run", "--data", "imgs"], "reads its inputs from --input"),
        (["train"], "--data is required"),
        (["evaluate", "/no/such/run"], "not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, match):
    out = tmp_path / "never"
    if argv[0] == "train" and len(argv) > 1:
        argv = [*argv, "--out", str(out), "--quiet"]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_csv_via_cli_leaves_nothing(tmp_path, capsys):
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n3,nan\n")
    code, _, err = run_cli(capsys, "train", "--data", str(p), "--out", str(tmp_path / "r"), "--quiet")
    assert code == 2 and "NaN" in err or "nan" in err.lower()
    assert not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten(trained, capsys):
    before = (trained / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--out", str(trained), "--quiet")
    assert code == 2 and "--resume" in err
    assert (trained / "model.safetensors").read_bytes() == before


def test_corrupt_and_foreign_checkpoints(trained, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    code, _, err = run_cli(capsys, "evaluate", str(bad))
    assert code == 2 and "corrupt" in err
    # weights from a different architecture under this config
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["hidden"] = [16]
    (bad / "config.json").write_text(json.dumps(cfg))
    shutil.copy(trained / "model.safetensors", bad / "model.safetensors")
    code, _, err = run_cli(capsys, "evaluate", str(bad))
    assert code == 2 and "another model" in err


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "vaekit.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "vaekit" in res.stdout
    res = subprocess.run([sys.executable, "-m", "vaekit.cli", "train", "--data", "nope-set", "--quiet"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_python_api_train_and_load(tmp_path):
    import vaekit

    run = vaekit.train("digits", out=tmp_path / "r", epochs=1, hidden=[16], latent_dim=2, progress=False,
                       figures=False)
    assert callable(vaekit.train) and run.test["n"] > 0
    m = vaekit.load(tmp_path / "r")
    x = run.data.test.x[:5]
    assert m.reconstruct(x).shape == x.shape and m.sample(3).shape == (3, 1, 8, 8)
    assert "latent_dim" in vaekit.options()


def test_progress_in_a_log_is_one_line_per_epoch(tmp_path):
    """With stderr redirected to a file (not a terminal) the bar gives way to one line per epoch."""
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "vaekit.cli", "train", "--data", "digits", "--epochs", "3", "--hidden",
                            "32", "--latent-dim", "4", "--out", str(tmp_path / "r")], stderr=f, stdout=subprocess.PIPE)
    assert r.returncode == 0
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    assert "\r" not in text and [ln.split(",")[0] for ln in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("val ELBO" in ln and "ex/s" in ln for ln in lines)
