"""scikit-learn estimators: the estimator contract (sklearn's own checks), detection quality,
contamination, transformer round trips."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from vaekit.sklearn import VAEAnomalyDetector, VAETransformer, default_sizes

# Checks that cannot apply to a neural density model would be listed here with a reason; none is
# needed: every check passes (scoring uses the same noise for every row and float64 weights, so
# outputs are batch- and subset-invariant, and fits are seeded). sklearn itself skips the
# array-API checks (SCIPY_ARRAY_API unset) and the pandas ones when pandas is absent.
EXPECTED_FAILED: dict[str, str] = {}


def _small(est):
    # The contract checks fit dozens of times on tiny data, where the adaptive default runs the
    # maximum of 200 epochs; 15 epochs exercise the same code paths in a fraction of the time.
    # The device is fixed so that GPU machines give the same (CPU-deterministic) results.
    return est.set_params(device="cpu", epochs=15)


@parametrize_with_checks([_small(VAEAnomalyDetector(random_state=0)), _small(VAETransformer(random_state=0))],
                         expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_default_sizes_scale_with_the_data():
    small, mnist = default_sizes(30, 2), default_sizes(5400, 784)
    assert small["latent_dim"] == 1 and small["hidden"] == [32, 16] and small["batch_size"] == 8
    assert mnist == {"hidden": [512, 256], "latent_dim": 20, "batch_size": 128, "epochs": 56, "patience": 10}


def _digits():
    d = load_digits()
    return d.data / 16.0, d.target


def test_detector_separates_digits_from_other_digits():
    x, y = _digits()
    normal, other = x[y == 0], x[y == 1]
    det = VAEAnomalyDetector(random_state=0, device="cpu", epochs=40).fit(normal[:150])
    assert det.likelihood_ == "bernoulli"
    test = np.r_[normal[150:], other[:50]]
    lab = np.r_[np.zeros(len(normal) - 150), np.ones(50)]
    for score in ("excess", "elbo", "nll", "recon"):
        assert roc_auc_score(lab, det.anomaly_scores(test, score)) > 0.9, score
    assert roc_auc_score(lab, -det.score_samples(test)) > 0.9


def test_gaussian_tables_and_contamination():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) * [1, 2, 3, 4, 5] + 10
    det = VAEAnomalyDetector(contamination=0.05, random_state=0, device="cpu").fit(x)
    assert det.likelihood_ == "gaussian"
    assert abs((det.predict(x) == -1).mean() - 0.05) <= 0.005
    far = x[:20] + 40 * rng.choice([-1, 1], size=(20, 5))
    assert (det.predict(far) == -1).all()
    lab = np.r_[np.zeros(400), np.ones(20)]
    assert roc_auc_score(lab, -det.decision_function(np.r_[x, far])) > 0.99
    ll = det.log_likelihood(x)  # nats in the data's units: near the true Gaussian's
    true = -0.5 * (5 * np.log(2 * np.pi) + 2 * np.log([1, 2, 3, 4, 5]).sum() + 5)
    assert abs(ll.mean() - true) < 1.5 and abs(det.score(x) - ll.mean()) < 1e-9


def test_bernoulli_detector_refuses_values_outside_unit_interval():
    x, _ = _digits()
    det = VAEAnomalyDetector(random_state=0, device="cpu", epochs=2).fit(x[:100])
    with pytest.raises(ValueError, match="Bernoulli"):
        det.predict(x[:3] * 2)


def test_transformer_round_trip_and_determinism():
    x, y = _digits()
    tr = VAETransformer(n_components=4, random_state=0, device="cpu", epochs=30).fit(x[:600])
    z = tr.transform(x[600:700])
    assert z.shape == (100, 4) and tr.n_components_ == 4
    assert list(tr.get_feature_names_out()) == [f"vaetransformer{i}" for i in range(4)]
    back = tr.inverse_transform(z)
    assert back.shape == (100, 64) and back.min() >= 0 and back.max() <= 1
    # the reconstruction is closer to its input than the mean image is
    assert ((back - x[600:700]) ** 2).mean() < 0.8 * ((x[:600].mean(0) - x[600:700]) ** 2).mean()
    again = VAETransformer(n_components=4, random_state=0, device="cpu", epochs=30).fit(x[:600])
    np.testing.assert_allclose(again.transform(x[600:700]), z)
