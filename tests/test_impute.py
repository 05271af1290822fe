"""Imputation: better than the mean on masked pixels, observed values untouched, NaN inputs accepted
only when asked for, and the CLI writes the right file or exits 2 leaving nothing behind."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.apps.common import open_run
from vaekit.apps.impute import METHODS, impute, missing_mask
from cli_helpers import cli
from vaekit.data import load_inputs
from vaekit.errors import DataError, UsageError
from vaekit.run import load_run_data


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("impute") / "digits"
    vaekit.train("digits", epochs=40, out=out, progress=False, evaluate_test=False, figures=False,
                 hidden=[64], latent_dim=8)
    run = open_run(out, device="cpu")
    d = load_run_data(run.config)
    return run, d.train.x, d.test.x


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A Gaussian VAE on sklearn's wine table, written as a CSV with a header and a label column."""
    from sklearn.datasets import load_wine

    folder = tmp_path_factory.mktemp("impute-table")
    w = load_wine()
    rows = [",".join(w.feature_names + ["label"])]
    rows += [",".join([repr(float(v)) for v in r] + [str(c)]) for r, c in zip(w.data, w.target)]
    (folder / "wine.csv").write_text("\n".join(rows) + "\n")
    vaekit.train(str(folder / "wine.csv"), epochs=30, out=folder / "run", progress=False, evaluate_test=False,
                 figures=False, hidden=[32], latent_dim=4)
    return folder, w


def rmse(a, b, m):
    return float(((a - b)[m] ** 2).mean().sqrt())


@pytest.mark.parametrize("method", METHODS)
def test_beats_mean_imputation_and_keeps_observed(digits, method):
    run, train, x = digits
    m = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    filled = impute(run.model, torch.where(m, float("nan"), x), method=method, iters=100, seed=0)
    assert torch.equal(filled[~m], x[~m])  # bit for bit
    assert torch.isfinite(filled).all() and filled.min() >= 0 and filled.max() <= 1  # Bernoulli means
    mean_fill = train.mean(0).expand_as(x)
    assert rmse(filled, x, m) < 0.9 * rmse(mean_fill, x, m)


def test_bottom_half_and_mask_argument(digits):
    run, train, x = digits
    m = torch.zeros(x.shape[1:], dtype=torch.bool)
    m[:, 4:] = True  # one (C, H, W) mask for every example
    filled = impute(run.model, x, m, seed=0)
    full = m.expand_as(x)
    assert torch.equal(filled[~full], x[~full])
    assert rmse(filled, x, full) < rmse(train.mean(0).expand_as(x), x, full)


def test_seeded_and_all_missing_rows(digits):
    run, _, x = digits
    xm = x[:6].clone()
    xm[0] = float("nan")  # nothing observed: filled from the model's marginal
    xm[1, 0, :2] = float("nan")
    a = impute(run.model, xm, method="mwg", iters=20, seed=3)
    assert torch.equal(a, impute(run.model, xm, method="mwg", iters=20, seed=3))
    assert torch.isfinite(a).all()
    assert torch.equal(a[2:], x[2:6])  # rows without missing values come back as they were


def test_missing_mask_shapes_and_bad_arguments(digits):
    run, _, x = digits
    xs = x[:4]
    assert missing_mask(xs, np.ones(64)).all()  # flat mask for images
    assert missing_mask(xs, np.zeros((4, 1, 8, 8))).sum() == 0
    # masks of pixels without the channel axis: (H, W) for all, (N, H, W) for one channel
    top = np.zeros((8, 8)); top[:4] = 1
    got = missing_mask(xs, top)
    assert got.shape == (4, 1, 8, 8) and bool(got[:, :, :4].all()) and not bool(got[:, :, 4:].any())
    per = np.zeros((4, 8, 8)); per[1, 0, 0] = 1
    got = missing_mask(xs, per)
    assert got.shape == (4, 1, 8, 8) and int(got.sum()) == 1 and bool(got[1, 0, 0, 0])
    rgb = torch.zeros(2, 3, 8, 8)
    got = missing_mask(rgb, top)
    assert got.shape == (2, 3, 8, 8) and int(got.sum()) == 2 * 3 * 32
    with pytest.raises(DataError, match="mask has shape"):
        missing_mask(rgb, np.zeros((2, 8, 8)))  # (N, H, W) is ambiguous with three channels: refused
    with pytest.raises(DataError, match="mask has shape"):
        missing_mask(xs, np.zeros((3, 8, 8)))  # three masks for four examples
    with pytest.raises(DataError, match="mask has shape"):
        missing_mask(xs, np.zeros((3, 3)))
    with pytest.raises(UsageError, match="valid: hmc"):
        impute(run.model, xs, method="gibbs")
    with pytest.raises(UsageError, match="--iters"):
        impute(run.model, xs, iters=0)
    with pytest.raises(UsageError, match="--leapfrog"):
        impute(run.model, xs, leapfrog=0)


def linear_gaussian_model(d=6, latent=2, sigma=0.5, seed=0):
    """A VAE whose decoder is linear and likelihood Gaussian with fixed sigma: p(z | x_obs) and
    E[x_mis | x_obs] are then known in closed form (probabilistic PCA)."""
    from torch import nn

    from vaekit.data.spec import DataSpec
    from vaekit.models.base import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(hidden=[8], latent_dim=latent, likelihood="gaussian-fixed",
                                    extra={"likelihood_args": {"sigma": sigma}}), DataSpec((d,), "continuous"))

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(latent, d)
            with torch.no_grad():
                self.lin.weight.mul_(4.0)  # an informative posterior, far from the prior

        def forward(self, z):
            return self.lin(z).view(z.shape[0], 1, d)

    model.decoder = Linear()
    return model.eval()


def test_hmc_matches_the_closed_form_conditional_mean():
    """The encoder here is untrained, so only a sampler that does not lean on it can get this right
    (MWG's proposals come from the encoder: 0.16 off here)."""
    model = linear_gaussian_model()
    w, b = model.decoder.lin.weight.detach().double(), model.decoder.lin.bias.detach().double()
    sigma = float(model.likelihood.sigma)
    x = (torch.randn(5, 2).double() @ w.T + b + sigma * torch.randn(5, 6).double()).float()
    miss = torch.zeros(5, 6, dtype=torch.bool)
    miss[:, 3:] = True
    o = ~miss[0]
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w[o].T @ w[o] / sigma ** 2)
    post_mean = (x.double()[:, o] - b[o]) @ w[o] @ cov / sigma ** 2
    truth = post_mean @ w[~o].T + b[~o]
    assert (truth - b[~o]).abs().max() > 1.0  # the answer is far from the prior's
    filled = impute(model, torch.where(miss, float("nan"), x), method="hmc", chains=64, iters=200, seed=0)
    assert (filled[:, 3:].double() - truth).abs().max() < 0.1
    assert torch.equal(filled[:, :3], x[:, :3])


def test_load_inputs_refuses_nan_unless_asked(table):
    folder, _ = table
    run = open_run(folder / "run")
    lines = (folder / "wine.csv").read_text().splitlines()
    lines[1] = "," + lines[1].split(",", 1)[1]  # empty first cell
    lines[2] = "NaN," + lines[2].split(",", 1)[1]
    (folder / "holes.csv").write_text("\n".join(lines[:6]) + "\n")
    with pytest.raises(DataError, match="empty cell"):
        load_inputs(str(folder / "holes.csv"), run.spec, run.source)
    s = load_inputs(str(folder / "holes.csv"), run.spec, run.source, allow_missing=True)
    assert torch.isnan(s.x[:2, 0]).all() and not torch.isnan(s.x[2:]).any() and not torch.isnan(s.x[:, 1:]).any()


def test_cli_csv_round_trip_in_original_units(table, tmp_path, capsys):
    folder, w = table
    lines = (folder / "wine.csv").read_text().splitlines()[:11]
    cells = [r.split(",") for r in lines[1:]]
    cells[0][0], cells[3][5], cells[4] = "", "NA", [""] * 13 + [cells[4][13]]  # a row with every value missing
    (tmp_path / "in.csv").write_text("\n".join([lines[0]] + [",".join(r) for r in cells]) + "\n")
    code, out, _ = cli(capsys, "impute", folder / "run", "--input", tmp_path / "in.csv", "--out", tmp_path / "o.csv",
                       "--json")
    res = json.loads(out)
    assert code == 0 and res["missing_values"] == 15 and res["rows_all_missing"] == 1
    got = (tmp_path / "o.csv").read_text().splitlines()
    assert got[0] == lines[0]  # header, label column included
    vals = np.array([[float(v) for v in r.split(",")] for r in got[1:]])
    given = w.data[:10]
    held = np.ones_like(given, bool)
    held[0, 0] = held[3, 5] = False
    held[4] = False
    assert np.array_equal(vals[:, :13][held], given[held])  # observed values exactly as written
    assert np.array_equal(vals[:, 13], w.target[:10])
    lo, hi = w.data.min(0), w.data.max(0)  # imputations land in a plausible range, in original units
    assert lo[0] - 1 < vals[0, 0] < hi[0] + 1 and lo[5] - 1 < vals[3, 5] < hi[5] + 1


def test_cli_images_npy_and_mask_image(digits, tmp_path, capsys):
    run, _, x = digits
    xm = x[:5].numpy().copy()
    xm[:, :, :2] = np.nan
    np.save(tmp_path / "in.npy", xm)
    assert cli(capsys, "impute", run.dir, "--input", tmp_path / "in.npy", "--out", tmp_path / "o.npy")[0] == 0
    o = np.load(tmp_path / "o.npy")
    assert o.shape == (5, 1, 8, 8) and np.isfinite(o).all() and np.array_equal(o[:, :, 2:], xm[:, :, 2:])
    mask = np.zeros((8, 8), np.uint8)
    mask[4:] = 255  # white = missing
    Image.fromarray(mask).save(tmp_path / "mask.png")
    np.save(tmp_path / "clean.npy", x[:5].numpy())
    code, out, _ = cli(capsys, "impute", run.dir, "--input", tmp_path / "clean.npy", "--mask", tmp_path / "mask.png",
                       "--method", "pseudo-gibbs", "--iters", 20, "--out", tmp_path / "o.png", "--json")
    assert code == 0 and json.loads(out)["missing_values"] == 5 * 32
    assert Image.open(tmp_path / "o.png").size[0] > 16


@pytest.mark.parametrize("extra, msg", [
    (["--input", "nope.npy"], "no such file"),
    (["--input", "wrong.npy"], "expects"),
    (["--input", "in.npy", "--mask", "mask.png"], "pixels"),
    (["--input", "in.npy", "--mask", "mask.npy"], "mask has shape"),
    (["--input", "in.npy", "--method", "em"], "valid"),
    (["--input", "in.npy", "--iters", "-3"], "--iters"),
    (["--input", "in.npy", "--chains", "0"], "--chains"),
    (["--input", "in.npy", "--leapfrog", "0"], "--leapfrog"),
    (["--input", "in.npy", "--out", "o.txt"], "expected one of"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(digits, tmp_path, capsys, extra, msg, monkeypatch):
    run, _, x = digits
    monkeypatch.chdir(tmp_path)
    np.save("in.npy", x[:3].numpy())
    np.save("wrong.npy", np.zeros((3, 10), np.float32))
    np.save("mask.npy", np.zeros((2, 5)))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save("mask.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    run_files = sorted(p.name for p in run.dir.iterdir())
    out = [] if "--out" in extra else ["--out", "o.npy"]
    code, _, err = cli(capsys, "impute", run.dir, *extra, *out)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in run.dir.iterdir()) == run_files
