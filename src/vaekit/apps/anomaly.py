"""Anomaly scores from a trained VAE, a threshold, flags and (with labels) AUROC / average precision.

Every score here is in nats per example and HIGHER = MORE ANOMALOUS.

- ``"elbo"``: -ELBO (one z ~ q(z|x)); ``"nll"``: importance-sampled -log p(x); ``"recon"``:
  E_q[-log p(x|z)]. These reuse :func:`vaekit.metrics.per_example_scores`.
- ``"excess"`` (the default): a likelihood score corrected for how simple an input is. Raw
  likelihoods rank simple inputs (few bright pixels, e.g. a "1" for a model of "8"s) as more
  normal than the normal data itself (Nalisnick et al. 2019; Serra et al. 2020). Two corrections,
  both defined by the likelihood alone, not by the data set:

  1. The part of -log p(x|z) no model can remove: for a Bernoulli likelihood on grey levels it
     is the entropy ``H(x) = sum_j h(x_j)`` (the loss of a perfect reconstruction). It is 0 for
     binary data and for other likelihoods.
  2. Complexity (Serra et al. 2020, who divide by a compressor's code length; Ren et al. 2019
     use a background model): ``C(x)``, the code length of x under the simplest background
     model -- every value i.i.d. Bernoulli with the training data's overall mean -- minus
     ``H(x)``. The score is ``(-ELBO - H) / C``, the share of the input's information the VAE
     fails to explain, times the mean C of the normal data (so it reads in nats for a typical
     input). No constant is tuned. bench/bench_anomaly_mnist.py compares it with the others:
     on one-class MNIST it lifts the mean AUROC from about 0.93 (-ELBO) to 0.97.

  The complexity ratio is used only when the Bernoulli code length measures content, i.e. the
  values are mostly binary events (ink / no ink): on the fit data the irreducible entropy H is
  at most half of the background code length (mean H / mean background NLL <= 1/2; one-class
  MNIST digits: 0.12-0.16). Tables that merely lie in [0, 1] (min-max scaled columns: ODDS wbc,
  thyroid, annthyroid: 0.70-0.87) fail this test: there -log p(x) under a Bernoulli is mostly
  the values' own entropy, C = background - H is a small difference of two large numbers, and
  the Bernoulli loss is monotone in each value instead of growing with the distance from the
  reconstruction. For them "excess" is a calibrated residual score instead (3.).
  3. Residual score: -log N(x; decoder mean at the posterior mean, diag(s^2)), s_j^2 the mean
     squared residual of column j on held-out normal rows (the validation split), floored at
     1e-2 x the column's variance. It reads the decoder as a regression and asks how unusual a
     row's residuals are for rows the model was not fitted on.

  For Gaussian likelihoods (standardised tables) no correction applies: the decoder's variance
  is already a (learned) residual model, distance from the data is what flags a row, and a
  radius-based background would remove exactly that; "excess" is then the -ELBO.

All scores for the scikit-learn estimators come from :func:`crn_terms`, which uses the same
noise for every example, so a row's score never depends on which other rows share its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.batch import Batch
from ..errors import DataError, UsageError
from ..metrics import per_example_scores

SCORES = ("excess", "elbo", "nll", "recon")
DEFAULT_SCORE = "excess"


# -- deterministic per-example terms (common random numbers) ------------------------------------------
@torch.no_grad()
def crn_terms(model: Any, x: torch.Tensor, *, samples: int = 8, seed: int = 0,
              batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """Per-example terms with the SAME K noise vectors eps_k for every example: each value is a
    function of its own row only (batch-, order- and subset-invariant).

    x: (N, *model.spec.shape) in model units. Returns float64 (N,) tensors on the CPU, nats:
    "recon" = mean_k -log p(x | mu + sigma eps_k), "kl" = analytic KL(q(z|x) || p(z)),
    "elbo" = recon + kl (the negative ELBO), "nll" = -log mean_k w_k (importance sampled,
    K = ``samples``), "entropy" = H(x) for a Bernoulli likelihood (else 0).
    """
    p = next(model.parameters())
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(samples, model.latent_dim, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("recon", "kl", "nll", "entropy")}
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[i:i + batch_size]).to(p.device, p.dtype)
            if getattr(model.config, "latent_dim2", 0):  # two stochastic layers: no analytic KL, no
                _mc_terms(model, xb, samples, seed + i, out)  # shared-eps shortcut; seeded per batch
                continue
            mu, logvar = model.encoder(xb)
            std = torch.exp(0.5 * logvar)
            z = (mu.unsqueeze(0) + std.unsqueeze(0) * eps[:, None, :]).reshape(-1, mu.shape[-1])  # (K*B, D)
            xk = xb.unsqueeze(0).expand(samples, *xb.shape).reshape(-1, *xb.shape[1:])
            log_px = model.likelihood.log_prob(model.decoder(z), xk).view(samples, -1)  # (K, B)
            log_q = (-0.5 * eps[:, None, :] ** 2 - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_w = log_px + model.prior.log_prob(z).view(samples, -1) - log_q
            out["recon"].append(-log_px.mean(0))
            if model.prior.analytic_kl:
                out["kl"].append(model.prior.kl(mu, logvar, None).sum(-1))
            else:  # a mixture prior: the KL averaged over the same K draws
                out["kl"].append((log_q - model.prior.log_prob(z).view(samples, -1)).mean(0))
            out["nll"].append(-(torch.logsumexp(log_w, 0) - math.log(samples)))
            out["entropy"].append(bernoulli_entropy(xb) if _is_bernoulli(model) else torch.zeros(len(xb)))
    finally:
        model.train(was_training)
    res = {k: torch.cat([v.detach().to("cpu", torch.float64) for v in vs]) if vs else torch.zeros(0, dtype=torch.float64)
           for k, vs in out.items()}
    res["elbo"] = res["recon"] + res["kl"]
    return res


def _mc_terms(model: Any, xb: torch.Tensor, samples: int, seed: int, out: dict[str, list[torch.Tensor]]) -> None:
    """``crn_terms`` for models with a second stochastic layer, from the model's own importance
    weights (k, B) under a seeded RNG: recon = mean_k -log p(x|z1_k), KL the Monte Carlo
    mean_k log q(z1, z2|x) - log p(z1, z2), nll = -log mean_k w_k."""
    with torch.random.fork_rng(devices=[xb.device] if xb.device.type == "cuda" else []):
        torch.manual_seed(seed)
        log_px, log_p, log_q = model.log_weight_terms(xb, samples)
    log_w = log_px + log_p - log_q
    out["recon"].append(-log_px.mean(0))
    out["kl"].append((log_q - log_p).mean(0))
    out["nll"].append(-(torch.logsumexp(log_w, 0) - math.log(samples)))
    out["entropy"].append(bernoulli_entropy(xb) if _is_bernoulli(model) else torch.zeros(len(xb), device=xb.device))


def _is_bernoulli(model: Any) -> bool:
    return getattr(model.config, "likelihood", None) == "bernoulli"


def bernoulli_entropy(x: torch.Tensor) -> torch.Tensor:
    """sum_j h(x_j), h(p) = -p log p - (1-p) log(1-p): the Bernoulli loss of a perfect
    reconstruction of grey levels x in [0, 1], (B,) nats (0 for binary x)."""
    flat = x.reshape(len(x), -1).double()
    q = flat.clamp(1e-12, 1 - 1e-12)
    return -(flat * q.log() + (1 - flat) * (1 - q).log()).sum(1)


def background_nll(x: torch.Tensor, rate: float) -> torch.Tensor:
    """-log p(x) under i.i.d. Bernoulli(``rate``) for every value: (B,) nats. The simplest
    background model; it sees only how much "ink" an input has."""
    flat = x.reshape(len(x), -1).double()
    r = min(max(float(rate), 1e-4), 1 - 1e-4)
    return -(flat * math.log(r) + (1 - flat) * math.log(1 - r)).sum(1)


# -- the complexity-corrected score ------------------------------------------------------------------
@dataclass
class Correction:
    """What "excess" learns from the normal (fit) data. Complexity mode (``rate`` set): the
    background model's rate (the mean value) and the mean complexity C over the normal data
    (nats), which puts the ratio back in nats. Residual mode (``var`` set, (n_features,)): the
    per-column residual variance from held-out normal rows. Neither set (Gaussian models): no
    correction, the -ELBO."""

    rate: float | None = None
    scale: float = 1.0
    var: np.ndarray | None = None

    @property
    def mode(self) -> str:
        return "residual" if self.var is not None else "complexity" if self.rate is not None else "none"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "rate": self.rate, "scale": self.scale,
                "var": None if self.var is None else [float(v) for v in np.ravel(self.var)]}


MAX_ENTROPY_SHARE = 0.5


def complexity(x: torch.Tensor, terms: dict[str, torch.Tensor], rate: float) -> torch.Tensor:
    """C(x) = -log p_background(x) - H(x) >= 0, (N,) nats: the information in x under the
    simplest background model, beyond what no model can remove."""
    # on the CPU, where ``crn_terms`` returns the terms (x may be on the model's device)
    return (background_nll(torch.as_tensor(x).cpu(), rate) - terms["entropy"]).clamp_min(1e-6)


def entropy_share(x: torch.Tensor, terms: dict[str, torch.Tensor], rate: float) -> float:
    """mean H(x) / mean background NLL over x: the share of the Bernoulli code length that no
    model can remove. Near 0 for mostly binary data (images), near 1 for fractions."""
    bg = float(background_nll(torch.as_tensor(x).cpu(), rate).mean())
    return float(terms["entropy"].mean()) / bg if bg > 0 else 1.0


@torch.no_grad()
def _residuals(model: Any, x: torch.Tensor) -> torch.Tensor:
    """x - decoder mean at the posterior mean, (N, n_values) float64 on the CPU (row-wise)."""
    p = next(model.parameters())
    xb = torch.as_tensor(x).to(p.device, p.dtype)
    mu, _ = model.encoder(xb)
    return (xb - model.decode_mean(mu)).reshape(len(xb), -1).to("cpu", torch.float64)


def fit_correction(model: Any, x: torch.Tensor, terms: dict[str, torch.Tensor],
                   heldout: Any = None) -> Correction:
    """Learn the "excess" correction from normal data ``x`` (N, *shape) and its ``crn_terms``.
    ``heldout``: indices of rows of x the model was not trained on (residual variances come from
    them; None = all rows)."""
    if not _is_bernoulli(model) or len(x) == 0:
        return Correction()
    x = torch.as_tensor(x).cpu()  # statistics on the CPU (x may be on the model's device); _residuals moves it back
    rate = float(x.double().mean())
    if entropy_share(x, terms, rate) <= MAX_ENTROPY_SHARE:
        return Correction(rate, float(complexity(x, terms, rate).mean()))
    rows = x if heldout is None or len(heldout) == 0 else x[torch.as_tensor(np.asarray(heldout), dtype=torch.long)]
    r2 = (_residuals(model, rows) ** 2).mean(0).numpy()
    col_var = x.reshape(len(x), -1).double().var(0, unbiased=False).numpy()
    return Correction(var=np.maximum(r2, np.maximum(1e-2 * col_var, 1e-12)))


def residual_score(model: Any, x: torch.Tensor, var: np.ndarray) -> torch.Tensor:
    """-log N(x; decoder mean at E[z|x], diag(var)), (N,) float64 nats."""
    v = torch.as_tensor(np.asarray(var), dtype=torch.float64)
    r = _residuals(model, x)
    return 0.5 * ((r * r / v).sum(1) + torch.log(2 * math.pi * v).sum())


def excess_score(x: torch.Tensor, terms: dict[str, torch.Tensor], corr: Correction, model: Any = None) -> torch.Tensor:
    """The "excess" score (N,) float64, nats: complexity mode (-ELBO - H(x)) / C(x) * mean normal
    C, i.e. the share of the input's information the model fails to explain, scaled to a typical
    normal input; residual mode the calibrated residual score (needs ``model``); the plain -ELBO
    without a correction (Gaussian models)."""
    if corr.var is not None:
        if model is None:
            raise UsageError("the residual form of the 'excess' score needs the model")
        return residual_score(model, x, corr.var)
    if corr.rate is None:
        return terms["elbo"]
    return (terms["elbo"] - terms["entropy"]) / complexity(x, terms, corr.rate) * corr.scale


# -- scores for a loaded run --------------------------------------------------------------------------
def anomaly_scores(model: Any, x: torch.Tensor, *, score: str = DEFAULT_SCORE, reference: torch.Tensor | None = None,
                   iw_samples: int = 100, samples: int = 8, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
    """One score per example, (N,) float64 on the CPU, nats; higher = more anomalous.

    x: (N, *model.spec.shape) in model units. "elbo", "recon", "nll" (``iw_samples`` importance
    samples) come from :func:`vaekit.metrics.per_example_scores`; "excess" fits its correction on
    ``reference`` (normal data, e.g. the training split; required for Bernoulli models).
    """
    if score not in SCORES:
        raise UsageError(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
    x = _inputs(x)
    if score == "excess" and isinstance(x, Batch):
        if getattr(model, "batch_fields", ()):
            raise UsageError("the 'excess' score is for unconditional models; use elbo, nll or recon")
        x = x.x
    if score != "excess":
        return per_example_scores(model, x, kind=score, iw_samples=iw_samples, batch_size=batch_size,
                                  seed=seed).double()
    corr = Correction()
    if _is_bernoulli(model):
        if reference is None:
            raise UsageError("the 'excess' score needs reference (normal) data to learn its correction")
        corr = fit_correction(model, reference, crn_terms(model, reference, samples=samples, seed=seed,
                                                          batch_size=batch_size))
    return excess_score(x, crn_terms(model, x, samples=samples, seed=seed, batch_size=batch_size), corr, model)


def _inputs(x: Any) -> Any:
    """Examples as a tensor, or a Batch as it is (a conditional model reads its labels or conditions)."""
    return x if isinstance(x, Batch) else torch.as_tensor(x)


@dataclass
class Detection:
    """Result of :func:`detect`. scores/flags: (N,); threshold in the scores' units (nats);
    auroc / average_precision only when labels were given (None otherwise)."""

    scores: np.ndarray
    flags: np.ndarray
    threshold: float
    contamination: float
    score: str
    threshold_from: str
    auroc: float | None = None
    average_precision: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def check_contamination(contamination: float) -> float:
    c = float(contamination)
    if not (0.0 < c <= 0.5) or not math.isfinite(c):
        raise UsageError(f"--contamination must be in (0, 0.5], got {contamination}")
    return c


def threshold_for(reference_scores: np.ndarray, contamination: float) -> float:
    """The (1 - contamination) quantile of ``reference_scores``: that fraction of them lie above."""
    ref = np.asarray(reference_scores, dtype=np.float64)
    if ref.size == 0:
        raise DataError("no reference scores to set the threshold from")
    return float(np.quantile(ref, 1.0 - check_contamination(contamination)))


def detect(model: Any, x: torch.Tensor, *, labels: Any = None, reference: torch.Tensor | None = None,
           score: str = DEFAULT_SCORE, contamination: float = 0.05, iw_samples: int = 100,
           seed: int = 0, batch_size: int = 1000) -> Detection:
    """Score ``x`` (N, *shape), flag the anomalous ones and, with ``labels``, measure AUROC and AP.

    The threshold is the (1 - contamination) quantile of the scores of ``reference`` -- normal
    data the model was trained or validated on (the run's validation split in the CLI) -- so a
    fraction ``contamination`` of NORMAL data is flagged (a false-positive rate), whatever the
    share of anomalies in ``x``. Without ``reference`` it falls back to the quantile of x's own
    scores (x then is assumed to hold that fraction of anomalies). labels: (N,), nonzero / True =
    anomaly. Raises UsageError for a bad score name or contamination.
    """
    check_contamination(contamination)
    x = _inputs(x)
    if len(x) == 0:
        raise DataError("no examples to score")
    s = anomaly_scores(model, x, score=score, reference=reference, iw_samples=iw_samples, seed=seed,
                       batch_size=batch_size).numpy()
    if reference is not None:
        ref = anomaly_scores(model, reference, score=score, reference=reference, iw_samples=iw_samples,
                             seed=seed, batch_size=batch_size).numpy()
        src = "reference"
    else:
        ref, src = s, "inputs"
    thr = threshold_for(ref, contamination)
    det = Detection(s, s > thr, thr, float(contamination), score, src)
    if labels is not None:
        y = np.asarray(labels).astype(bool).reshape(-1)
        if len(y) != len(s):
            raise DataError(f"{len(y)} labels for {len(s)} examples")
        if y.any() and not y.all():
            from sklearn.metrics import average_precision_score, roc_auc_score

            det.auroc = float(roc_auc_score(y, s))
            det.average_precision = float(average_precision_score(y, s))
    return det
