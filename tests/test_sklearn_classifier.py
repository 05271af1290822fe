"""VAEClassifier (M2 through scikit-learn): the estimator contract, -1 as unlabelled, any label values."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.utils.estimator_checks import parametrize_with_checks

from vaekit.sklearn import VAEClassifier, unlabelled_mask

# scikit-learn's semi-supervised convention marks unlabelled examples with -1, and one of its
# contract checks uses -1 as an ordinary class label (binary labels [-1, 1]); sklearn itself
# exempts its own semi-supervised estimators from that by name (LabelSpreading, LabelPropagation,
# SelfTrainingClassifier in estimator_checks._choose_check_classifiers_labels).
EXPECTED_FAILED = {
    "check_classifiers_classes": "-1 marks unlabelled examples (scikit-learn's semi-supervised convention), "
                                 "and this check uses -1 as a class label",
}


def _small(est):
    # Few epochs keep the dozens of contract fits fast; the CPU keeps results deterministic.
    return est.set_params(device="cpu", epochs=15)


@parametrize_with_checks([_small(VAEClassifier(random_state=0))], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _digits_with_few_labels(per_class=10, seed=0):
    d = load_digits()
    x, y = d.data / 16.0, d.target
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), bool)
    for k in range(10):
        keep[rng.choice(np.flatnonzero(y[:1500] == k), per_class, replace=False)] = True
    return x, y, np.where(keep, y, -1)


def test_learns_from_few_labels_and_string_classes():
    x, y, partial = _digits_with_few_labels()
    clf = VAEClassifier(random_state=0, device="cpu", alpha=1.0, epochs=40).fit(x[:1500], partial[:1500])
    assert list(clf.classes_) == list(range(10))
    p = clf.predict_proba(x[1500:])
    assert p.shape == (297, 10) and np.allclose(p.sum(1), 1)
    acc = clf.score(x[1500:], y[1500:])
    assert acc > 0.6, acc  # 100 labels; chance is 0.1
    names = np.array(list("abcdefghij"), dtype=object)[y]
    names[partial == -1] = -1  # an object array: the number -1 marks the unlabelled rows
    clf2 = VAEClassifier(random_state=0, device="cpu", alpha=1.0, epochs=40).fit(x[:1500], names[:1500])
    assert list(clf2.classes_) == list("abcdefghij")
    np.testing.assert_array_equal(clf2.predict(x[1500:]), np.array(list("abcdefghij"))[clf.predict(x[1500:])])


def test_unlabelled_mask_and_bad_labels():
    assert unlabelled_mask(np.array([0, -1, 2])).tolist() == [False, True, False]
    assert unlabelled_mask(np.array(["a", "-1"])).tolist() == [False, False]  # strings: all labelled
    assert unlabelled_mask(np.array(["a", -1, True], dtype=object)).tolist() == [False, True, False]
    x, _, _ = _digits_with_few_labels()
    with pytest.raises(ValueError, match="at least 2 classes"):
        VAEClassifier(device="cpu", epochs=1).fit(x[:50], np.r_[np.zeros(5), -np.ones(45)])
    with pytest.raises(ValueError, match="Unknown label type"):
        VAEClassifier(device="cpu", epochs=1).fit(x[:50], np.linspace(0, 1, 50))
