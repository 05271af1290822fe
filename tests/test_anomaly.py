"""Anomaly scores, thresholds and the ``vaekit detect`` verb."""

import json

import numpy as np
import pytest
import torch

from vaekit.apps.anomaly import (Correction, bernoulli_entropy, crn_terms, detect, excess_score, fit_correction,
                                 threshold_for)
from cli_helpers import cli
from vaekit.cli import main
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.metrics import per_example_scores
from vaekit.models import ModelConfig, build_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("detect") / "run"
    assert main(["train", "--data", "digits", "--epochs", "15", "--out", str(out), "--hidden", "64",
                 "--latent-dim", "4", "--quiet", "--seed", "0", "--device", "cpu"]) == 0
    return out


def test_crn_terms_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[16], latent_dim=3), DataSpec((10,), "unit")).double()
    x = torch.rand(7, 10, dtype=torch.float64)
    full = crn_terms(m, x, samples=5)
    parts = crn_terms(m, x, samples=5, batch_size=2)
    alone = crn_terms(m, x[3:4], samples=5)
    for k in ("elbo", "nll", "recon", "kl", "entropy"):
        torch.testing.assert_close(full[k], parts[k])
        torch.testing.assert_close(full[k][3:4], alone[k])
    assert torch.allclose(full["elbo"], full["recon"] + full["kl"])
    # an untrained model's posterior is near its prior: the IS estimate is near the -ELBO
    assert (full["nll"] - full["elbo"]).abs().max() < 1.0


def test_entropy_and_excess_score():
    x = torch.tensor([[0.0, 1.0, 0.5]])
    assert float(bernoulli_entropy(x)) == pytest.approx(np.log(2))
    terms = {"elbo": torch.tensor([5.0]), "entropy": bernoulli_entropy(x)}
    assert float(excess_score(x, terms, Correction())) == 5.0  # no correction: the -ELBO
    c = -(np.log(0.5) * 3) - np.log(2)  # background nll at rate 0.5 minus the entropy
    assert float(excess_score(x, terms, Correction(0.5, 2.0))) == pytest.approx((5 - np.log(2)) / c * 2)
    gauss = build_model(ModelConfig(hidden=[8], latent_dim=2, likelihood="gaussian"), DataSpec((3,), "continuous"))
    assert fit_correction(gauss, x, terms).rate is None


def test_excess_mode_follows_the_entropy_share():
    """Mostly binary [0, 1] data (images) gets the complexity ratio; fractions (a min-max scaled
    table) get the residual score calibrated on held-out rows, a row-wise Gaussian NLL."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[16], latent_dim=3, likelihood="bernoulli"), DataSpec((10,), "unit")).double()
    binary = (torch.rand(50, 10, dtype=torch.float64) < 0.2).double()
    binary[:, 0] = 0.5  # a few grey levels do not make it a table
    assert fit_correction(m, binary, crn_terms(m, binary, samples=2)).mode == "complexity"
    frac = 0.3 + 0.4 * torch.rand(50, 10, dtype=torch.float64)
    terms = crn_terms(m, frac, samples=2)
    corr = fit_correction(m, frac, terms, heldout=np.arange(10))
    assert corr.mode == "residual" and corr.var.shape == (10,) and (corr.var > 0).all()
    full = excess_score(frac, terms, corr, m)
    alone = excess_score(frac[3:4], {k: v[3:4] for k, v in terms.items()}, corr, m)
    torch.testing.assert_close(full[3:4], alone)
    assert torch.isfinite(full).all()
    with pytest.raises(UsageError):
        excess_score(frac, terms, corr)  # the residual form needs the model


def test_threshold_and_detect_with_labels():
    assert threshold_for(np.arange(101.0), 0.1) == pytest.approx(90.0)
    with pytest.raises(UsageError):
        threshold_for(np.arange(5.0), 0.6)
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[16], latent_dim=2), DataSpec((6,), "unit"))
    normal = torch.full((200, 6), 0.1) + 0.05 * torch.rand(200, 6)
    m.init_from_data(normal)  # the decoder starts at the normal data's marginal
    odd = torch.full((20, 6), 0.9)
    d = detect(m, torch.cat([normal, odd]), labels=np.r_[np.zeros(200), np.ones(20)], reference=normal,
               score="elbo", contamination=0.05)
    assert d.threshold_from == "reference" and d.auroc > 0.99 and d.average_precision > 0.9
    assert d.flags[200:].all() and d.flags[:200].mean() < 0.15
    # scores for elbo/recon/nll are metrics.per_example_scores
    np.testing.assert_allclose(d.scores[:200], per_example_scores(m, normal, kind="elbo").numpy(), rtol=1e-5)


def test_detect_cli_writes_scores_and_histogram(run, tmp_path, capsys):
    out = tmp_path / "s.csv"
    code, text, _ = cli(capsys, "detect", run, "--out", out, "--json", "--normal-label", "3")
    res = json.loads(text)
    rows = out.read_text().splitlines()
    assert code == 0 and rows[0] == "index,score,flag,threshold,label"
    assert len(rows) == res["n"] + 1 == 181  # the run's test split of the 1797 digits
    flags = [int(r.split(",")[2]) for r in rows[1:]]
    assert sum(flags) == res["flagged"] and res["threshold_from"] == "reference"
    assert res["auroc"] is not None and 0 <= res["auroc"] <= 1
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_detect_cli_with_input_file_separates_noise(run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    x = load_digits().data[:60] / 16.0
    noise = np.random.default_rng(0).uniform(0, 1, size=(20, 64))
    np.savez(tmp_path / "in.npz", x=np.r_[x, noise].astype(np.float32), y=np.r_[np.zeros(60), np.ones(20)].astype(int))
    code, text, _ = cli(capsys, "detect", run, "--input", tmp_path / "in.npz", "--out", tmp_path / "o.csv",
                        "--contamination", "0.1", "--json")
    res = json.loads(text)
    assert code == 0 and res["n"] == 80 and res["auroc"] > 0.95
    flags = np.array([int(r.split(",")[2]) for r in (tmp_path / "o.csv").read_text().splitlines()[1:]])
    assert flags[60:].all()


@pytest.mark.parametrize("argv", [
    ["--contamination", "0.7"], ["--contamination", "0"], ["--score", "bogus"], ["--input", "missing.npy"],
    ["--iw-samples", "0"], ["--input", "WRONG"], ["--out", "scores.txt"],
])
def test_detect_cli_bad_input_exits_2_and_writes_nothing(run, tmp_path, capsys, argv):
    if "WRONG" in argv:
        np.save(tmp_path / "wrong.npy", np.zeros((3, 10), dtype=np.float32))
        argv = ["--input", tmp_path / "wrong.npy"]
    before = sorted(p.name for p in run.iterdir())
    code, out, err = cli(capsys, "detect", run, *argv, "--out" if "--out" not in argv else "--json",
                         *([tmp_path / "o.csv"] if "--out" not in argv else []))
    assert code == 2 and err.count("\n") == 1 and "error" in err
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.png").exists()
