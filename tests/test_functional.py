"""Layer-1 math against oracles: Monte Carlo, torch.distributions and scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vaekit.functional import gaussian_log_prob, gaussian_log_prob_at_eps, iwae_bound, kl_normal_std_normal, kl_weight_at, log_mean_exp
from vaekit.functional.discretized import discretized_logistic_log_prob


def test_kl_matches_torch_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    kl = kl_normal_std_normal(mu, logvar)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(0.0, 1.0)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, p), rtol=1e-5, atol=1e-6)
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(mc, kl, atol=0.03 + 0.02 * kl.abs().max().item())
    assert (kl >= 0).all()


def test_gaussian_log_prob_matches_scipy():
    x, mu, logvar = np.array([0.3, -2.0]), np.array([0.1, 1.0]), np.array([-1.0, 0.5])
    got = gaussian_log_prob(torch.tensor(x), torch.tensor(mu), torch.tensor(logvar)).numpy()
    want = stats.norm.logpdf(x, mu, np.exp(0.5 * logvar))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    eps = (x - mu) / np.exp(0.5 * logvar)  # the same points as reparameterised samples
    got = gaussian_log_prob_at_eps(torch.tensor(eps), torch.tensor(logvar)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_gaussian_log_prob_at_the_mean_with_underflowed_sigma():
    # An AAE's Gaussian encoder (no KL in its objective) drove logvar to -238 on MNIST: sigma
    # underflows float32, its samples equal mu exactly, and (z - mu) / sigma was 0 / 0 = NaN.
    mu = torch.tensor([0.3, 0.3, -1.2], requires_grad=True)
    logvar = torch.tensor([-238.0, -1.0, -90.0], requires_grad=True)
    z = mu.detach() + torch.randn(3) * torch.exp(0.5 * logvar.detach())
    assert z[0] == mu[0] and z[2] == mu[2]  # the noise is lost below float32's range
    lp = gaussian_log_prob(z, mu, logvar)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp[[0, 2]], -0.5 * (math.log(2 * math.pi) + logvar[[0, 2]].detach()))
    lp.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()
    torch.testing.assert_close(logvar.grad[[0, 2]], torch.tensor([-0.5, -0.5]))
    # away from the mean a vanishing sigma gives density 0 (log -inf), not NaN
    assert gaussian_log_prob(torch.tensor(0.5), torch.tensor(0.3), torch.tensor(-238.0)) == -math.inf


def test_log_mean_exp_and_iwae_bound():
    lw = torch.randn(7, 5, dtype=torch.float64) * 30  # large spread: naive exp would overflow/underflow
    want = torch.log(torch.exp(lw - lw.max(0).values).mean(0)) + lw.max(0).values
    torch.testing.assert_close(log_mean_exp(lw), want)
    torch.testing.assert_close(iwae_bound(lw[:1]), lw[0])  # K = 1 is the ELBO sample itself
    # Jensen: the bound is at least the mean log weight
    assert (iwae_bound(lw) >= lw.mean(0) - 1e-9).all()


@pytest.mark.parametrize("loc,log_scale", [(0.5, -3.0), (0.1, -5.0), (0.9, -1.0), (0.0, -7.0), (1.3, -2.0)])
def test_discretized_logistic_against_scipy_cdf(loc, log_scale):
    k = np.arange(256)
    x = torch.tensor(k / 255.0, dtype=torch.float64)
    got = discretized_logistic_log_prob(x, torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64))
    s = math.exp(log_scale)
    upper = np.where(k == 255, np.inf, (k + 0.5) / 255.0)
    lower = np.where(k == 0, -np.inf, (k - 0.5) / 255.0)
    p = stats.logistic.cdf(upper, loc, s) - stats.logistic.cdf(lower, loc, s)
    mask = p > 1e-12  # where scipy itself still has precision
    np.testing.assert_allclose(got.numpy()[mask], np.log(p[mask]), rtol=1e-4, atol=1e-6)
    assert math.isclose(float(torch.logsumexp(got, 0)), 0.0, abs_tol=1e-6)  # a distribution over 256 bins
    assert torch.isfinite(got).all()


def test_discretized_logistic_float32_finite_gradients():
    x = torch.tensor([0.0, 0.5, 1.0, 0.2])
    loc = torch.tensor([0.9, -3.0, 0.0, 0.2], requires_grad=True)
    ls = torch.tensor([-7.0, -7.0, -7.0, -7.0], requires_grad=True)
    lp = discretized_logistic_log_prob(x, loc, ls)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(loc.grad).all() and torch.isfinite(ls.grad).all()


def test_kl_weight_schedules():
    assert kl_weight_at(5.0, 0) == 1.0
    assert kl_weight_at(0.0, 10) == 0.0 and kl_weight_at(5.0, 10) == 0.5 and kl_weight_at(12.0, 10) == 1.0
    # cyclical: cycle of 2 * warmup epochs, ramp then hold
    assert kl_weight_at(2.0, 4, "cyclical") == 0.5
    assert kl_weight_at(6.0, 4, "cyclical") == 1.0
    assert kl_weight_at(8.0, 4, "cyclical") == 0.0 and kl_weight_at(9.0, 4, "cyclical") == 0.25
    with pytest.raises(ValueError):
        kl_weight_at(1.0, 1.0, "bogus")


def test_bernoulli_log_prob_matches_torch_with_gradients():
    from vaekit.functional.bernoulli import bernoulli_log_prob

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 1, 4, 3, generator=g, dtype=torch.float64) * 5).requires_grad_(True)
    x = torch.rand(5, 1, 4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    want = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    got = bernoulli_log_prob(logits, x)
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(bernoulli_log_prob, (logits, x))
