"""Classifier Frechet distance, precision/recall, and ``vaekit evaluate --sample-quality``."""

import json

import numpy as np
import pytest
from scipy import linalg

import vaekit.apps.feature_net as fn
from cli_helpers import cli
from vaekit.apps.sample_quality import frechet_distance, precision_recall


def _gaussian(n, d, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a.T * scale


def test_fd_of_a_set_with_itself_is_zero():
    x = _gaussian(500, 16, 0)
    assert abs(frechet_distance(x, x)) < 1e-8


def test_fd_of_a_mean_shift_is_the_squared_shift():
    # same covariance: the closed form for Gaussians leaves ||m1 - m2||^2
    x = _gaussian(400, 12, 1)
    delta = np.random.default_rng(2).normal(size=12)
    for s in (0.5, 1.0, 3.0):
        assert frechet_distance(x, x + s * delta) == pytest.approx(s**2 * (delta @ delta), rel=1e-7, abs=1e-8)


def test_fd_matches_the_closed_form_on_known_covariances():
    # N(0, I) against N(m, 4I) in d dims: ||m||^2 + d (1 + 4 - 2 * 2) = ||m||^2 + d, from large samples
    rng = np.random.default_rng(3)
    d, m = 4, np.array([1.0, -1.0, 0.5, 0.0])
    a, b = rng.normal(size=(200000, d)), 2.0 * rng.normal(size=(200000, d)) + m
    assert frechet_distance(a, b) == pytest.approx(m @ m + d, rel=0.01)
    # and agrees with the usual sqrtm formula on a generic pair
    x, y = _gaussian(300, 8, 4), _gaussian(300, 8, 5, scale=1.5) + 0.3
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)


def test_precision_recall_identical_disjoint_and_half():
    x = _gaussian(300, 8, 6)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0) == (0.0, 0.0)
    fake = np.concatenate([x[:150], x[150:] + 1000.0])  # half the samples on the data, half far away
    assert precision_recall(x, fake, k=3)[0] == pytest.approx(0.5)
    real = np.concatenate([x[:150], x[150:] + 1000.0])  # two far clusters; samples of one of them only
    assert precision_recall(real, real[:150], k=3) == (1.0, 0.5)


@pytest.fixture(scope="module")
def run_and_net(tmp_path_factory):
    from vaekit.cli import main

    d = tmp_path_factory.mktemp("sq")
    assert main(["train", "--data", "digits", "--epochs", "2", "--hidden", "64", "--latent-dim", "4",
                 "--out", str(d / "run"), "--quiet"]) == 0
    assert main(["features", "--data", "digits", "--epochs", "2", "--out", str(d / "net"), "--quiet"]) == 0
    return d / "run", d / "net"


def test_evaluate_sample_quality_json(run_and_net, capsys):
    run, net = run_and_net
    code, out, err = cli(capsys, "evaluate", run, "--sample-quality", "--feature-net", net, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["fd"] > 0 and 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1 and res["k"] == 3
    assert "not Inception FID" in res["fd_features"] and "small-cnn on digits" in res["fd_features"]
    assert res["feature_net"] == str(net) and res["n_samples"] == 180 and "elbo" in res
    code, out, _ = cli(capsys, "evaluate", run, "--sample-quality", "--feature-net", net, "--n-samples", "50")
    assert code == 0 and "not Inception FID" in out and "precision" in out


def test_reference_net_is_trained_once_and_cached(run_and_net, capsys, tmp_path, monkeypatch):
    run, _ = run_and_net
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fn, "REFERENCE_EPOCHS", 1)
    code, out, err = cli(capsys, "evaluate", run, "--sample-quality", "--json", "--n-samples", "60")
    assert code == 0, err
    first = json.loads(out)
    cached = list((tmp_path / "cache" / "features").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("digits-") and first["feature_net"] == str(cached[0])
    assert "training the reference classifier" in err

    def no_training(*a, **k):
        raise AssertionError("the cached reference classifier should have been reused")

    monkeypatch.setattr(fn, "train_feature_net", no_training)
    code, out, err = cli(capsys, "evaluate", run, "--sample-quality", "--json", "--n-samples", "60")
    assert code == 0, err
    second = json.loads(out)
    assert second["feature_net"] == first["feature_net"] and second["fd"] == pytest.approx(first["fd"])


def test_sample_quality_bad_input(run_and_net, capsys, tmp_path):
    run, net = run_and_net
    code, _, err = cli(capsys, "evaluate", run, "--sample-quality", "--feature-net", tmp_path / "nope", "--json")
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "evaluate", run, "--feature-net", net)
    assert code == 2 and "--sample-quality" in err
    code, _, err = cli(capsys, "evaluate", run, "--sample-quality", "--feature-net", net, "--n-samples", "1")
    assert code == 2 and "--n-samples must be at least 2" in err
