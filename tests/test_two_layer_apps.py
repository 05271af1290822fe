"""Applications on a model with two stochastic layers: scores use the model's own (Monte Carlo)
terms, HMC imputation runs on (z1, z2) jointly, and imputation methods that need p(z) in closed form
refuse clearly."""

import numpy as np
import pytest
import torch

import vaekit
from vaekit.apps.anomaly import crn_terms
from vaekit.apps.impute import impute
from vaekit.errors import UsageError
from vaekit.metrics import per_example_scores


@pytest.fixture(scope="module")
def two_layer(tmp_path_factory):
    out = tmp_path_factory.mktemp("h2") / "run"
    run = vaekit.train("digits", out=out, epochs=4, hidden=[32], latent_dim=6, latent_dim2=3, progress=False,
                       figures=False)
    return run.model.cpu().eval(), run.data.test.x[:60]


def test_crn_terms_match_the_models_own_elbo(two_layer):
    model, x = two_layer
    t = crn_terms(model, x, samples=64, seed=0)
    ref = per_example_scores(model, x, kind="elbo").double()
    # both are Monte Carlo estimates of the same -ELBO; the 64-sample one is tight
    assert abs(t["elbo"].mean() - ref.mean()) < 0.05 * ref.mean()
    assert (t["nll"] <= t["elbo"] + 1e-9).all()  # -log mean_k w <= -mean_k log w (Jensen), same draws
    torch.testing.assert_close(t["elbo"], t["recon"] + t["kl"])


def test_imputation_needs_a_closed_form_prior(two_layer):
    model, x = two_layer
    xm = x[:5].clone()
    xm.view(5, -1)[:, 32:] = float("nan")
    with pytest.raises(UsageError, match="hmc or pseudo-gibbs"):
        impute(model, xm, method="mwg", iters=4)
    for method in ("pseudo-gibbs", "hmc"):
        filled = impute(model, xm, method=method, iters=4, chains=2)
        assert not torch.isnan(filled).any()
        np.testing.assert_array_equal(filled.view(5, -1)[:, :32].numpy(), x[:5].view(5, -1)[:, :32].numpy())


def test_hmc_two_layer_state_and_target(two_layer):
    """The HMC state is [z1, z2] and its log target is log p(z2) + log p(z1|z2) + log p(x_obs|z1)."""
    from vaekit.apps.impute import _hmc_start, _log_joint

    model, x = two_layer
    obs = torch.ones_like(x[:4], dtype=torch.bool)
    state = _hmc_start(model, x[:4])
    assert state.shape == (4, 6 + 3)
    lp, _ = _log_joint(model, state, x[:4], obs)
    z1, z2 = state[:, :6], state[:, 6:]
    pm, plv = model.decoder2(z2)
    ref = (torch.distributions.Normal(0, 1).log_prob(z2).sum(-1)
           + torch.distributions.Normal(pm, torch.exp(0.5 * plv)).log_prob(z1).sum(-1)
           + model.likelihood.log_prob(model.decoder(z1), x[:4]))
    torch.testing.assert_close(lp, ref, rtol=1e-4, atol=1e-3)
