"""Denoising: a noisy digit comes back closer to the clean one (higher PSNR), and the CLI writes
the denoised examples plus a before/after figure, or exits 2 leaving nothing behind."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.apps.common import open_run
from vaekit.apps.denoise import denoise, psnr
from cli_helpers import cli
from vaekit.errors import UsageError
from vaekit.run import load_run_data


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("denoise") / "digits"
    vaekit.train("digits", epochs=40, out=out, progress=False, evaluate_test=False, figures=False,
                 hidden=[64], latent_dim=8)
    run = open_run(out, device="cpu")
    return run, load_run_data(run.config).test.x


def noisy(x, kind, level, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return (x + level * torch.randn(x.shape, generator=g)).clamp(0, 1)
    u = torch.rand(x.shape, generator=g)
    return torch.where(u < level / 2, 0.0, torch.where(u > 1 - level / 2, 1.0, x))


@pytest.mark.parametrize("kind, level", [("gaussian", 0.5), ("salt-and-pepper", 0.3)])
def test_denoising_raises_psnr(digits, kind, level):
    run, x = digits
    xn = noisy(x, kind, level)
    out = denoise(run.model, xn)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert psnr(x, out).mean() > psnr(x, xn).mean() + 2.0  # dB


def test_steps_iterate_the_projection(digits):
    run, x = digits
    once = denoise(run.model, x[:10])
    twice = denoise(run.model, x[:10], steps=2)
    assert torch.allclose(twice, denoise(run.model, once), atol=1e-6)
    assert torch.equal(once, denoise(run.model, x[:10]))  # deterministic
    with pytest.raises(UsageError):
        denoise(run.model, x[:2], steps=0)
    with pytest.raises(UsageError, match="impute"):
        denoise(run.model, torch.full((1, 1, 8, 8), float("nan")))


def test_psnr_values():
    a = torch.zeros(2, 4)
    assert torch.allclose(psnr(a, a + 0.1), torch.full((2,), 20.0, dtype=torch.float64))


def test_cli_writes_array_and_before_after_figure(digits, tmp_path, capsys):
    run, x = digits
    np.save(tmp_path / "in.npy", noisy(x[:7], "gaussian", 0.2).numpy())
    code, out, _ = cli(capsys, "denoise", run.dir, "--input", tmp_path / "in.npy", "--out", tmp_path / "d.npy", "--json")
    res = json.loads(out)
    assert code == 0 and res["n"] == 7 and res["figure"] == str(tmp_path / "d-before-after.png")
    assert np.load(tmp_path / "d.npy").shape == (7, 1, 8, 8)
    assert Image.open(tmp_path / "d-before-after.png").size[0] > 16
    assert cli(capsys, "denoise", run.dir, "--input", tmp_path / "in.npy", "--out", tmp_path / "g.png",
               "--steps", 2, "--figure", tmp_path / "f.png")[0] == 0
    assert (tmp_path / "g.png").exists() and (tmp_path / "f.png").exists()
    assert cli(capsys, "denoise", run.dir, "--input", tmp_path / "in.npy", "--out", tmp_path / "d.csv")[0] == 0
    assert len((tmp_path / "d.csv").read_text().splitlines()) == 8  # header + 7 rows


@pytest.mark.parametrize("extra, msg", [
    (["--input", "nope.npy", "--out", "d.npy"], "no such file"),
    (["--input", "wrong.npy", "--out", "d.npy"], "expects"),
    (["--input", "nan.npy", "--out", "d.npy"], "NaN"),
    (["--input", "in.npy", "--out", "d.txt"], "expected one of"),
    (["--input", "in.npy", "--out", "d"], "expected one of"),
    (["--input", "in.npy", "--out", "d.npy", "--steps", "0"], "--steps"),
    (["--input", "in.npy", "--out", "d.npy", "--figure", "f.jpg"], "--figure"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(digits, tmp_path, capsys, monkeypatch, extra, msg):
    run, x = digits
    monkeypatch.chdir(tmp_path)
    np.save("in.npy", x[:3].numpy())
    np.save("wrong.npy", np.zeros((3, 10), np.float32))
    np.save("nan.npy", np.full((2, 64), np.nan, np.float32))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(capsys, "denoise", run.dir, *extra)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
