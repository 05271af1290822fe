"""Likelihoods p(x | z): turn the decoder's raw parameters into a distribution over the data.

A decoder emits a tensor of shape (B, P, *data_shape) where P = ``likelihood.num_params``.
``log_prob(params, x)`` is the fast path used in training (nats per example, shape (B,));
``dist(params)`` gives a ``torch.distributions.Distribution`` whose event shape is the data shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal, constraints

from ..functional.amp import wrap_methods
from ..functional.bernoulli import bernoulli_log_prob, bernoulli_log_prob_k
from ..functional.discretized import discretized_logistic_log_prob
from ..registry import Registry

LIKELIHOODS: Registry = Registry("likelihood")


class Likelihood(nn.Module):
    """Base class. Subclasses set ``num_params`` and implement ``log_prob`` and ``dist``."""

    num_params: int = 1
    #: data kinds this likelihood is valid for
    kinds: tuple[str, ...] = ("binary", "8bit", "unit", "continuous")

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Under mixed precision (torch.autocast) every likelihood scores in float32: a sum of
        # hundreds of per-value log-probabilities is not kept in 16 bits (functional/amp.py).
        super().__init_subclass__(**kwargs)
        wrap_methods(cls, ("log_prob", "log_prob_k", "log_prob_elements"))

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | params) summed over the data dims: (B,) in nats."""
        raise NotImplementedError

    def dist(self, params: torch.Tensor) -> Distribution:
        """The distribution p(x | params); batch shape (B,), event shape = data shape."""
        raise NotImplementedError

    def log_prob_k(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x_b | params) for k parameter sets per example, nats: (k, B).

        params: (k * B, P, *data_shape), sample-major (row i * B + b is sample i of example b);
        x: (B, *data_shape). This default scores a k-fold expanded copy of x; likelihoods that
        can broadcast x instead override it.
        """
        b = x.shape[0]
        k = params.shape[0] // b
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        return self.log_prob(params, xk).view(k, b)

    def log_prob_elements(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | params) of every value, not summed: (B, *data_shape) nats (sequence models
        mask some of them out). Subclasses may compute it without building a distribution."""
        return self.dist(params).base_dist.log_prob(x)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | params], shape (B, *data_shape)."""
        return self.dist(params).mean

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return self.dist(params).sample()

    def init_params(self, x: torch.Tensor) -> torch.Tensor:
        """Raw parameters (P, *data_shape) that fit the data's marginal: the decoder's starting
        output bias, so training begins from the mean image instead of from noise."""
        out = torch.zeros(self.num_params, *x.shape[1:], dtype=x.dtype, device=x.device)
        out[0] = x.mean(0)
        return out


def _sum_data_dims(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """Bernoulli with logits; for binary data, and the usual choice for grey levels in [0, 1]."""

    num_params = 1
    kinds = ("binary", "8bit", "unit")

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(params, x)

    def log_prob_k(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return bernoulli_log_prob_k(params.view(-1, b, *params.shape[1:]), x)

    def dist(self, params: torch.Tensor) -> Distribution:
        logits = params[:, 0]
        # validate_args=False: grey levels in [0, 1] are scored with the same formula as {0, 1}.
        return Independent(Bernoulli(logits=logits, validate_args=False), logits.dim() - 1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params[:, 0])

    def init_params(self, x: torch.Tensor) -> torch.Tensor:
        p = x.mean(0).clamp(1e-3, 1 - 1e-3)  # marginal log-odds, as in Burda et al.'s code
        return torch.log(p / (1 - p)).unsqueeze(0)


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(Likelihood):
    """Gaussian with a learned variance per value, decoded from z (heteroscedastic).

    The standard deviation is ``min_std + softplus(raw)`` so it cannot collapse to zero on
    near-constant values.
    """

    num_params = 2
    kinds = ("8bit", "unit", "continuous")

    def __init__(self, min_std: float = 1e-2) -> None:
        super().__init__()
        self.min_std = float(min_std)

    def _mu_std(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[:, 0], self.min_std + F.softplus(params[:, 1])

    def log_prob_elements(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu, std = self._mu_std(params)
        z = (x - mu) / std
        return -0.5 * z * z - torch.log(std) - 0.5 * math.log(2 * math.pi)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _sum_data_dims(self.log_prob_elements(params, x))

    def dist(self, params: torch.Tensor) -> Distribution:
        mu, std = self._mu_std(params)
        return Independent(Normal(mu, std), mu.dim() - 1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[:, 0]


@LIKELIHOODS.register("gaussian-fixed")
class FixedGaussianLikelihood(Likelihood):
    """Gaussian with a fixed standard deviation ``sigma`` (sigma = 1: squared error / 2 + const)."""

    num_params = 1
    kinds = ("8bit", "unit", "continuous")

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"gaussian-fixed sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu = params.reshape(x.shape)
        lp = -0.5 * ((x - mu) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        return _sum_data_dims(lp)

    def dist(self, params: torch.Tensor) -> Distribution:
        mu = params[:, 0]
        return Independent(Normal(mu, torch.full_like(mu, self.sigma)), mu.dim() - 1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[:, 0]


class DiscretizedLogistic(Distribution):
    """Per-value discretized logistic over the 256 levels k/255 in [0, 1] (elementwise)."""

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, bins: int = 256) -> None:
        self.loc, self.log_scale, self.bins = loc, log_scale, bins
        super().__init__(batch_shape=loc.shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.clamp(0.0, 1.0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return discretized_logistic_log_prob(value, self.loc, self.log_scale, self.bins)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
        x = self.loc + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
        return torch.round(x.clamp(0.0, 1.0) * (self.bins - 1)) / (self.bins - 1)


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """8-bit likelihood: a discretized logistic per value (PixelCNN++/IAF style), in nats.

    The decoder's mean is offset by 0.5 so an untrained net predicts mid-grey; the log-scale is
    clamped below at -7 (a bin is 1/255 ~ e^-5.5 wide) for stable gradients.
    """

    num_params = 2
    kinds = ("8bit", "binary")

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[:, 0] + 0.5, params[:, 1].clamp(min=-7.0)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc, log_scale = self._split(params)
        return _sum_data_dims(discretized_logistic_log_prob(x, loc, log_scale))

    def init_params(self, x: torch.Tensor) -> torch.Tensor:
        out = super().init_params(x)
        out[0] -= 0.5  # the mean is decoded with a +0.5 offset
        return out

    def dist(self, params: torch.Tensor) -> Distribution:
        loc, log_scale = self._split(params)
        return Independent(DiscretizedLogistic(loc, log_scale), loc.dim() - 1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._split(params)[0].clamp(0.0, 1.0)


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(Likelihood):
    """One of ``categories`` tokens per value (sentences): params are logits (B, V, *data_shape), x
    holds token ids (as floats). The "mean" is the most likely token (what generation feeds back)."""

    kinds = ("tokens",)

    def __init__(self, categories: int = 2) -> None:
        super().__init__()
        if categories < 2:
            raise ValueError(f"a categorical likelihood needs at least 2 categories, got {categories}")
        self.num_params = int(categories)

    def dist(self, params: torch.Tensor) -> Distribution:
        logits = params.movedim(1, -1)  # (B, *data_shape, V)
        return Independent(Categorical(logits=logits, validate_args=False), logits.dim() - 2)

    def log_prob_elements(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(params, x.long(), reduction="none")  # fused log-softmax and pick: (B, *shape)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _sum_data_dims(self.log_prob_elements(params, x))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params.argmax(1).to(params.dtype)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return self.dist(params).sample().to(params.dtype)

    def init_params(self, x: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(x.long().flatten(), minlength=self.num_params)[: self.num_params].to(torch.float64)
        logp = torch.log((counts + 1) / (counts.sum() + self.num_params)).to(x.dtype)
        return logp.view(-1, *([1] * (x.dim() - 1))).expand(self.num_params, *x.shape[1:]).clone()


def default_likelihood(kind: str) -> str:
    """The likelihood used when the user names none: Bernoulli for data in [0, 1], categorical for
    tokens, else Gaussian."""
    if kind == "tokens":
        return "categorical"
    return "bernoulli" if kind in ("binary", "8bit", "unit") else "gaussian"
