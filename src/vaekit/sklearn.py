"""scikit-learn estimators on vaekit's VAEs: ``VAEAnomalyDetector``, ``VAETransformer`` and the
semi-supervised ``VAEClassifier`` (M2).

All take any numeric 2-D array X (n_samples, n_features): flattened images or a table. They are
built from vaekit's own pieces (``build_model``, ``DataSpec``, ``Trainer``), so training is the
same loop as ``vaekit train``. Defaults need no tuning:

- likelihood "auto": Bernoulli when every training value lies in [0, 1] (images, rates),
  otherwise a Gaussian with learned variance on columns standardised with the training mean/std
  (its standard deviation floored at ``GAUSSIAN_MIN_STD`` = 0.1 standardised units);
- sizes from the data (:func:`default_sizes`): two hidden layers, a latent dimension that grows
  like sqrt(n_features), batch size and epoch count from n_samples (small data, few steps);
- early stopping on a validation split (``validation_fraction``), keeping the best weights;
- ``random_state`` seeds the split, the initialisation and every training draw (the caller's
  torch RNG state is left untouched).

After ``fit`` the model runs in float64 so that a row's output does not depend on the rows
batched with it. Nothing here writes files; persistence is scikit-learn's own (pickle) protocol.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, OutlierMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils import check_array
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from .apps.anomaly import SCORES, Correction, crn_terms, excess_score, fit_correction
from .config import TrainConfig
from .data.datasets import Data, Split
from .data.spec import DataSpec
from .models import ModelConfig, build_model
from .numerics import fork_rng
from .training.trainer import Trainer, resolve_device

__all__ = ["VAEAnomalyDetector", "VAEClassifier", "VAETransformer", "default_sizes"]

LIKELIHOOD_CHOICES = ("auto", "bernoulli", "gaussian", "gaussian-fixed")
# Floor of the learned Gaussian standard deviation, in standardised units (a tenth of a column's
# spread): the model may not claim to predict a column more precisely than that, so columns that are
# near-deterministic given the others (quantised or categorical ones) cannot dominate the likelihood.
# bench_odds, 12 Gaussian ODDS tables, sum of AUROCs: 9.38 at the library's 0.01, 9.53 / 9.55 / 9.58
# / 9.52 at 0.05 / 0.1 / 0.2 / 0.3 (a broad plateau; 0.1 is its round middle, not its peak).
GAUSSIAN_MIN_STD = 0.1


def default_sizes(n_samples: int, n_features: int) -> dict[str, Any]:
    """Network and schedule sizes for data of this size (n_samples = training rows).

    hidden [h, h/2] with h = the power of two >= 2 * n_features, clipped to [32, 512];
    latent_dim = round(sqrt(n_features)) in [1, 20] (and <= n_features); batch_size = n/10 in
    [8, 128]; epochs = 3e5 / n in [20, 200] (about 3e5 example visits, fewer for tiny data);
    patience = max(10, epochs / 10) epochs without a better validation ELBO.
    """
    p, n = max(1, int(n_features)), max(1, int(n_samples))
    h = int(min(512, max(32, 2 ** math.ceil(math.log2(2 * p)))))
    epochs = int(min(200, max(20, round(3e5 / n))))
    return {"hidden": [h, max(16, h // 2)], "latent_dim": int(min(p, max(1, min(20, round(math.sqrt(p)))))),
            "batch_size": int(min(128, max(8, n // 10))), "epochs": epochs, "patience": max(10, epochs // 10)}


class _VAEBase(BaseEstimator):
    """Shared fitting: data checks, likelihood choice, standardisation, sizes, training."""

    _parameter_constraints: dict = {
        "likelihood": [StrOptions(set(LIKELIHOOD_CHOICES))],
        "latent_dim": [Interval(Integral, 1, None, closed="left"), None],
        "hidden": ["array-like", None],
        "epochs": [Interval(Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "device": [StrOptions({"auto", "cpu", "cuda"})],
        "random_state": ["random_state"],
        "verbose": ["boolean"],
    }

    def _fit_vae(self, X: Any, latent_dim: int | None, labels: np.ndarray | None = None,
                 model_options: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Validate X, pick likelihood and sizes, train; returns X (n, p) as float64 model units and
        the indices of the validation rows (held out from training; empty without a split).
        labels: int64 (n,) class indices, -1 where unknown (for a model that reads labels), or None;
        model_options: further ``ModelConfig`` fields (e.g. the model's name)."""
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        Xf = np.asarray(X, dtype=np.float64)
        lik = self.likelihood
        in_unit = bool(Xf.min() >= 0.0 and Xf.max() <= 1.0)
        if lik == "auto":
            lik = "bernoulli" if in_unit else "gaussian"
        if lik == "bernoulli" and not in_unit:
            raise ValueError("likelihood='bernoulli' needs every value in [0, 1]; use 'gaussian' for other data")
        self.likelihood_ = lik
        if lik == "bernoulli":
            self.mean_, self.scale_ = np.zeros(Xf.shape[1]), np.ones(Xf.shape[1])
            kind = "binary" if np.isin(Xf, (0.0, 1.0)).all() else "unit"
        else:
            self.mean_ = Xf.mean(0)
            sd = Xf.std(0)
            self.scale_ = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(self.mean_)), sd, 1.0)
            kind = "continuous"
        Z = (Xf - self.mean_) / self.scale_
        rs = check_random_state(self.random_state)
        seed = int(rs.randint(0, 2**31 - 1))
        n = len(Z)
        n_val = int(round(self.validation_fraction * n)) if self.validation_fraction > 0 else 0
        n_val = min(max(n_val, 1 if self.validation_fraction > 0 else 0), n - 1)
        perm = rs.permutation(n)
        sizes = default_sizes(n - n_val, Z.shape[1])
        if latent_dim is not None:
            sizes["latent_dim"] = int(latent_dim)
        hidden = [int(h) for h in self.hidden] if self.hidden is not None else sizes["hidden"]
        self.sizes_ = {**sizes, "hidden": hidden, "epochs": self.epochs or sizes["epochs"],
                       "batch_size": self.batch_size or sizes["batch_size"]}
        k = None if labels is None else int(labels.max()) + 1
        spec = DataSpec((Z.shape[1],), kind, k)
        t = torch.from_numpy(Z.astype(np.float32))
        lab = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))

        def part(rows: np.ndarray) -> Split:
            index = torch.from_numpy(rows)
            return Split(t[index], None if lab is None else lab[index])
        cfg = TrainConfig(epochs=self.sizes_["epochs"], batch_size=self.sizes_["batch_size"], lr=float(self.learning_rate),
                          patience=sizes["patience"] if n_val else 0, seed=seed, device=self.device,
                          # raw weights: averaging them gave no gain on the ODDS tables (0.8056 vs 0.8074
                          # mean AUROC, within seed noise) and the defaults were chosen without it
                          weight_average=0.0)
        best: dict[str, Any] = {}

        def keep_best(trainer: Trainer, rec: dict[str, Any]) -> None:
            if rec["best_epoch"] == rec["epoch"]:
                best["state"] = {k: v.detach().clone() for k, v in trainer.eval_model.state_dict().items()}

        with fork_rng(resolve_device(self.device)):
            torch.manual_seed(seed)
            extra = {"likelihood_args": {"min_std": GAUSSIAN_MIN_STD}} if lik == "gaussian" else {}
            model = build_model(ModelConfig(hidden=hidden, latent_dim=self.sizes_["latent_dim"], likelihood=lik,
                                            extra=extra, **(model_options or {})), spec)
            data = Data(spec, part(perm[n_val:]), part(perm[:n_val]), Split(t[:0]))
            trainer = Trainer(model, data, cfg, progress=bool(self.verbose), callbacks=[keep_best])
            self.history_ = trainer.fit()
        if "state" in best:
            model.load_state_dict(best["state"])
        self.n_epochs_ = len(self.history_)
        self.model_ = model.to(torch.float64).eval()
        return Z, perm[:n_val]

    def _model_units(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        Xf = np.asarray(X, dtype=np.float64)
        if self.likelihood_ == "bernoulli" and Xf.size and (Xf.min() < 0.0 or Xf.max() > 1.0):
            raise ValueError(f"this {type(self).__name__} was fitted with a Bernoulli likelihood on values in "
                             f"[0, 1]; got values in [{Xf.min():.4g}, {Xf.max():.4g}]")
        return torch.from_numpy((Xf - self.mean_) / self.scale_).to(self.model_.device)

    def _log_det(self) -> float:
        """log |d(model units)/d(data units)| per row: turns densities on standardised columns
        into densities in the data's own units (nats)."""
        return -float(np.log(self.scale_).sum())

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class VAEAnomalyDetector(OutlierMixin, _VAEBase):
    """Unsupervised anomaly detection with a VAE (scikit-learn API).

    anomaly_score: "excess" (default; the -ELBO, corrected for input complexity on mostly binary
    [0, 1] data such as images, a residual score calibrated on the validation rows for other
    [0, 1] data, see :mod:`vaekit.apps.anomaly`), "elbo", "nll" (importance sampled, ``n_samples`` draws) or
    "recon". ``score_samples(X)`` is MINUS that score (higher = more normal, as in scikit-learn),
    ``offset_`` is its ``contamination`` quantile on the training data, so ``predict`` flags that
    fraction of the training rows (-1) and ``decision_function = score_samples - offset_``.
    ``log_likelihood(X)``: importance-sampled log p(x) in nats in the data's own units.
    X: (n_samples, n_features) numeric. Other parameters: see :class:`_VAEBase` / :func:`default_sizes`
    (None = chosen from the data).
    """

    _parameter_constraints: dict = {
        **_VAEBase._parameter_constraints,
        "contamination": [Interval(Real, 0, 0.5, closed="right")],
        "anomaly_score": [StrOptions(set(SCORES))],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, contamination: float = 0.1, *, anomaly_score: str = "excess", likelihood: str = "auto",
                 latent_dim: int | None = None, hidden: list[int] | None = None, epochs: int | None = None,
                 batch_size: int | None = None, learning_rate: float = 1e-3, validation_fraction: float = 0.1,
                 n_samples: int = 8, device: str = "auto", random_state: Any = None, verbose: bool = False) -> None:
        self.contamination = contamination
        self.anomaly_score = anomaly_score
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.n_samples = n_samples
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X: Any, y: Any = None) -> "VAEAnomalyDetector":
        """Train on X (n_samples, n_features); set ``offset_`` from the training scores. y is ignored."""
        Z, heldout = self._fit_vae(X, self.latent_dim)
        Z = torch.from_numpy(Z).to(self.model_.device)
        terms = self._terms(Z)
        self.correction_ = (fit_correction(self.model_, Z, terms, heldout) if self.anomaly_score == "excess"
                            else Correction())
        self.offset_ = float(np.percentile(self._score_from(Z, terms), 100.0 * self.contamination))
        return self

    def _terms(self, Z: torch.Tensor) -> dict[str, torch.Tensor]:
        return crn_terms(self.model_, Z, samples=self.n_samples, seed=0)

    def _score_from(self, Z: torch.Tensor, terms: dict[str, torch.Tensor]) -> np.ndarray:
        s = excess_score(Z, terms, self.correction_, self.model_) if self.anomaly_score == "excess" else terms[self.anomaly_score]
        return -s.numpy()

    def anomaly_scores(self, X: Any, score: str | None = None) -> np.ndarray:
        """Anomaly scores (n_samples,) in nats, HIGHER = MORE ANOMALOUS, for ``score`` (default: the
        estimator's). -ELBO / NLL / recon are on the model's units (standardised columns)."""
        check_is_fitted(self, "model_")
        kind = score or self.anomaly_score
        if kind not in SCORES:
            raise ValueError(f"unknown score {kind!r}; valid: {', '.join(SCORES)}")
        Z = self._model_units(X)
        terms = self._terms(Z)
        if kind == "excess":
            corr = self.correction_ if self.anomaly_score == "excess" else Correction()
            return excess_score(Z, terms, corr, self.model_).numpy()
        return terms[kind].numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        """Normality (n_samples,): minus the anomaly score; higher = more normal."""
        Z = self._model_units(X)
        return self._score_from(Z, self._terms(Z))

    def decision_function(self, X: Any) -> np.ndarray:
        """score_samples(X) - offset_ (n_samples,): negative for predicted outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for inliers, -1 for outliers (n_samples,) int."""
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def log_likelihood(self, X: Any) -> np.ndarray:
        """Importance-sampled log p(x) (``n_samples`` draws, a lower bound in expectation), nats per
        row in the data's own units (the standardisation's Jacobian included): (n_samples,)."""
        Z = self._model_units(X)
        return -self._terms(Z)["nll"].numpy() + self._log_det()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row (nats), as for scikit-learn density estimators."""
        return float(np.mean(self.log_likelihood(X)))


class VAETransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, _VAEBase):
    """A VAE as a scikit-learn transformer: ``transform`` gives posterior means (n_samples,
    n_components); ``inverse_transform`` decodes latents (n, n_components) to decoder means in
    the data's units (n, n_features). n_components None picks the latent size from the data."""

    _parameter_constraints: dict = {
        **_VAEBase._parameter_constraints,
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, n_components: int | None = None, *, likelihood: str = "auto", hidden: list[int] | None = None,
                 epochs: int | None = None, batch_size: int | None = None, learning_rate: float = 1e-3,
                 validation_fraction: float = 0.1, device: str = "auto", random_state: Any = None,
                 verbose: bool = False) -> None:
        self.n_components = n_components
        self.likelihood = likelihood
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X: Any, y: Any = None) -> "VAETransformer":
        """Train on X (n_samples, n_features). y is ignored."""
        self._fit_vae(X, self.n_components)
        self.n_components_ = int(self.model_.latent_dim)
        self._n_features_out = self.n_components_
        return self

    @torch.no_grad()
    def transform(self, X: Any) -> np.ndarray:
        """Posterior means E[z|x], (n_samples, n_components) float64."""
        mu, _ = self.model_.encoder(self._model_units(X))
        return mu.cpu().numpy()

    @torch.no_grad()
    def inverse_transform(self, X: Any) -> np.ndarray:
        """Decoder means for latents X (n, n_components), in the data's units: (n, n_features)."""
        check_is_fitted(self, "model_")
        Zl = check_array(X, dtype=np.float64)
        if Zl.ndim != 2 or Zl.shape[1] != self.n_components_:
            raise ValueError(f"expected latents of shape (n, {self.n_components_}), got {Zl.shape}")
        mean = self.model_.decode_mean(torch.from_numpy(Zl).to(self.model_.device)).cpu().numpy()
        return mean * self.scale_ + self.mean_


def unlabelled_mask(y: np.ndarray) -> np.ndarray:
    """Boolean (n,): where ``y`` marks an unlabelled example. scikit-learn's semi-supervised
    convention (``LabelSpreading``, ``SelfTrainingClassifier``): the number -1, in a numeric or an
    object array; string arrays (dtype U/S) have no unlabelled entries."""
    if y.dtype.kind in "US":
        return np.zeros(len(y), dtype=bool)
    if y.dtype.kind == "O":
        return np.array([isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and v == -1 for v in y],
                        dtype=bool)
    return y == -1


class VAEClassifier(ClassifierMixin, _VAEBase):
    """The semi-supervised VAE M2 (Kingma et al. 2014) as a scikit-learn classifier.

    ``fit(X, y)`` learns from every row of X (n_samples, n_features); y holds class labels, -1
    where the label is unknown (scikit-learn's semi-supervised convention, as in
    ``LabelSpreading``: a number -1 in a numeric or object array). Labels may be any values
    (numbers, strings); ``classes_`` holds them sorted. ``predict_proba`` is q(y|x) (n_samples,
    n_classes), ``predict`` its most likely class, ``score`` the accuracy. ``alpha``: weight of
    the classification term (see :mod:`vaekit.models.m2`); the validation rows (drawn from all rows,
    labelled or not) pick the epoch with the best accuracy on their labelled part. Other
    parameters: see :class:`VAEAnomalyDetector` / :func:`default_sizes` (None = chosen from the data).
    """

    _parameter_constraints: dict = {
        **_VAEBase._parameter_constraints,
        "alpha": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, *, alpha: float = 1.0, likelihood: str = "auto", latent_dim: int | None = None,
                 hidden: list[int] | None = None, epochs: int | None = None, batch_size: int | None = None,
                 learning_rate: float = 1e-3, validation_fraction: float = 0.1, device: str = "auto",
                 random_state: Any = None, verbose: bool = False) -> None:
        self.alpha = alpha
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X: Any, y: Any) -> "VAEClassifier":
        """Train on X (n_samples, n_features) with labels y (n_samples,), -1 = unlabelled."""
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], ensure_min_samples=2)
        unl = unlabelled_mask(y)
        check_classification_targets(y[~unl] if (~unl).any() else y)
        self.classes_ = np.unique(y[~unl])
        if len(self.classes_) < 2:
            raise ValueError(f"VAEClassifier needs labelled examples of at least 2 classes, got "
                             f"{len(self.classes_)} class(es) among {int((~unl).sum())} labelled rows")
        index = np.full(len(y), -1, dtype=np.int64)
        index[~unl] = np.searchsorted(self.classes_, y[~unl])
        self._fit_vae(X, self.latent_dim, labels=index, model_options={"model": "m2", "alpha": float(self.alpha)})
        return self

    @torch.no_grad()
    def predict_proba(self, X: Any) -> np.ndarray:
        """q(y|x): (n_samples, n_classes) float64, rows sum to 1, columns in ``classes_`` order."""
        Z = self._model_units(X)  # checks that the estimator is fitted first
        return self.model_.classify(Z).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most likely class of each row (n_samples,), values from ``classes_``."""
        proba = self.predict_proba(X)  # checks that the estimator is fitted first
        return self.classes_[np.argmax(proba, axis=1)]
