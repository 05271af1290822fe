"""Every registered likelihood against torch.distributions, and its contract."""

import pytest
import torch

from vaekit.modules.likelihoods import LIKELIHOODS, default_likelihood

SHAPES = [(7,), (1, 4, 5), (3, 4, 4)]


def _data(kind_ok, shape, g):
    x = torch.rand(4, *shape, generator=g)
    if "continuous" in kind_ok and "binary" not in kind_ok:
        return torch.randn(4, *shape, generator=g)
    return torch.round(x * 255) / 255


@pytest.mark.parametrize("name", LIKELIHOODS.names())
@pytest.mark.parametrize("shape", SHAPES)
def test_likelihood_contract(name, shape):
    g = torch.Generator().manual_seed(1)
    lik = LIKELIHOODS.get(name)()
    params = torch.randn(4, lik.num_params, *shape, generator=g)
    x = _data(lik.kinds, shape, g)
    lp = lik.log_prob(params, x)
    assert lp.shape == (4,) and torch.isfinite(lp).all()
    d = lik.dist(params)
    assert tuple(d.event_shape) == shape and tuple(d.batch_shape) == (4,)
    torch.testing.assert_close(d.log_prob(x), lp, rtol=1e-5, atol=1e-4)
    assert lik.mean(params).shape == (4, *shape)
    assert lik.sample(params).shape == (4, *shape)
    # gradients flow to the decoder output
    params.requires_grad_(True)
    lik.log_prob(params, x).sum().backward()
    assert torch.isfinite(params.grad).all() and params.grad.abs().sum() > 0


def test_bernoulli_matches_torch_on_binary_data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 10, generator=g)
    x = (torch.rand(3, 10, generator=g) > 0.5).float()
    want = torch.distributions.Bernoulli(logits=logits[:, 0]).log_prob(x).sum(-1)
    torch.testing.assert_close(LIKELIHOODS.get("bernoulli")().log_prob(logits, x), want)


def test_gaussians_match_torch_normal():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(3, 2, 6, generator=g)
    x = torch.randn(3, 6, generator=g)
    lik = LIKELIHOODS.get("gaussian")()
    std = 1e-2 + torch.nn.functional.softplus(params[:, 1])
    torch.testing.assert_close(lik.log_prob(params, x), torch.distributions.Normal(params[:, 0], std).log_prob(x).sum(-1))
    fixed = LIKELIHOODS.get("gaussian-fixed")(sigma=0.5)
    want = torch.distributions.Normal(params[:, 0], 0.5).log_prob(x).sum(-1)
    torch.testing.assert_close(fixed.log_prob(params[:, :1], x), want)


def test_discretized_logistic_sums_to_one_over_levels():
    lik = LIKELIHOODS.get("discretized-logistic")()
    params = torch.tensor([[[0.1], [-3.0]]]).double()  # one value: loc 0.6, log-scale -3
    levels = torch.arange(256, dtype=torch.float64).view(256, 1) / 255
    lp = torch.stack([lik.log_prob(params, v.view(1, 1)) for v in levels])
    assert abs(torch.logsumexp(lp.flatten(), 0).item()) < 1e-6


def test_default_likelihood_by_kind():
    assert default_likelihood("binary") == "bernoulli"
    assert default_likelihood("8bit") == "bernoulli"
    assert default_likelihood("continuous") == "gaussian"


def test_unknown_likelihood_suggests():
    from vaekit.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'bernoulli'"):
        LIKELIHOODS.get("bernouli")
