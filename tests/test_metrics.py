"""Tests of vaekit.metrics: exact chunked IW accumulation, a numerical-integration oracle for
log p(x), statistical properties of the IW estimates, active units, determinism, side effects."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.datasets import load_digits

from vaekit.data.spec import DataSpec
from vaekit.functional import iwae_bound
from vaekit.metrics import _iw_plan, chunked_log_mean_exp, evaluate, iw_chunk_rows, per_example_scores
from vaekit.models import ModelConfig, build_model

SPEC = DataSpec((1, 8, 8), "8bit")


def _digits() -> torch.Tensor:
    return torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)


@pytest.fixture(scope="module")
def trained():
    """A small VAE trained briefly on 8x8 digits, so q(z|x) differs from p(z|x) and the IW bound
    has a real gap to close (an untrained model's posterior is nearly the prior)."""
    torch.manual_seed(0)
    x = _digits()
    m = build_model(ModelConfig(hidden=[64], latent_dim=4), SPEC)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for step in range(60):
        idx = torch.randint(0, 1400, (128,))
        loss = m.loss(x[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    return m, x[1400:]


# -- exact pieces --------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 3, 64, 999, 1000, 5000])
def test_chunked_log_mean_exp_equals_direct(chunk):
    g = torch.Generator().manual_seed(1)
    lw = torch.randn(1000, 7, generator=g, dtype=torch.float64) * 30 - 500  # wide range, far from 0
    lw[5, 2] = 400.0  # one dominant weight in the middle of a chunk
    pos = [0]

    def draw(c):
        out = lw[pos[0] : pos[0] + c]
        pos[0] += c
        return out

    got = chunked_log_mean_exp(draw, 1000, chunk)
    assert pos[0] == 1000  # every weight drawn exactly once
    torch.testing.assert_close(got, iwae_bound(lw), rtol=0, atol=1e-9)


def test_chunked_log_mean_exp_rejects_bad_args():
    with pytest.raises(ValueError):
        chunked_log_mean_exp(lambda c: torch.zeros(c, 1), 0, 1)


@pytest.mark.parametrize("n,k,rows", [(1000, 5000, 2675), (1000, 50, 4096), (7, 3, 100), (5, 100000, 4096), (1, 1, 1)])
def test_iw_plan_covers_k_within_rows(n, k, rows):
    per_ex, per_call = _iw_plan(n, k, rows)
    assert 1 <= per_ex <= n and 1 <= per_call <= k
    assert per_ex * per_call <= max(rows, 1)
    assert per_call * math.ceil(k / per_call) - k < math.ceil(k / per_call)  # near-equal chunks


def test_iw_chunk_rows_is_memory_bounded():
    m = build_model(ModelConfig(hidden=[400], latent_dim=20), DataSpec((1, 28, 28), "binary"))
    rows = iw_chunk_rows(m)
    assert 256 <= rows and rows * 784 * 4 <= 8 * 2**20  # logits of one call under the 8 MiB cap
    assert iw_chunk_rows(m, tensor_bytes=1e12, max_bytes=300e6) * (2 * 400 + 5 * 784) * 4 <= 300e6
    assert iw_chunk_rows(m, tensor_bytes=1, max_bytes=1) == 1


def test_log_weights_calls_respect_the_chunk_size(monkeypatch):
    m = build_model(ModelConfig(hidden=[32], latent_dim=4), SPEC)
    calls = []
    real = m.log_weights

    def spy(x, k):
        calls.append((len(x), k))
        return real(x, k)

    monkeypatch.setattr(m, "log_weights", spy)
    monkeypatch.setattr("vaekit.metrics.iw_chunk_rows", lambda model: 64)
    evaluate(m, torch.rand(30, 1, 8, 8), iw_samples=200, batch_size=20)
    assert max(b * c for b, c in calls) <= 64
    assert sum(b * c for b, c in calls) == 30 * 200  # K samples for each example, no more
    assert len({c for _, c in calls}) == 1  # equal chunks (4 x 50), no tiny remainder call


# -- the oracle: numerical integration over a 1-D latent ----------------------------------------
def _grid_log_px(m, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log ∫ p(x|z) p(z) dz by the trapezoid rule on a fine grid, in log space."""
    z = torch.linspace(-10, 10, 8001, dtype=torch.float64).unsqueeze(1)
    w = torch.full((len(z),), math.log(float(z[1] - z[0])), dtype=torch.float64)
    w[[0, -1]] -= math.log(2.0)
    with torch.no_grad():
        dist = m.decode(z.float())
        log_prior = m.prior.log_prob(z).double()
        out = []
        for xi in x:
            log_lik = dist.log_prob(xi.expand(len(z), *xi.shape)).double()
            out.append(torch.logsumexp(log_lik + log_prior + w, 0))
    return torch.stack(out)


@pytest.mark.parametrize("kind,likelihood,shape", [("binary", "bernoulli", (6,)), ("continuous", "gaussian-fixed", (3,))])
def test_importance_sampled_nll_matches_numerical_integration(kind, likelihood, shape):
    torch.manual_seed(3)
    spec = DataSpec(shape, kind)
    m = build_model(ModelConfig(hidden=[16], latent_dim=1, likelihood=likelihood, activation="tanh"), spec)
    with torch.no_grad():  # a decoder that depends strongly on z, so p(z|x) is far from q and p(z)
        m.decoder.net[0].weight.mul_(4.0)
    x = (torch.rand(8, *shape) < 0.5).float() if kind == "binary" else torch.randn(8, *shape) * 2
    truth = -_grid_log_px(m, x)
    nll = per_example_scores(m, x, kind="nll", iw_samples=20000).double()
    elbo = per_example_scores(m, x, kind="elbo").double()
    assert (elbo.mean() - truth.mean()) > 0.05  # the bound has a real gap here...
    torch.testing.assert_close(nll, truth, rtol=0, atol=0.03)  # ...which 20k IW samples close
    res = evaluate(m, x, iw_samples=20000)
    assert res["nll"] == pytest.approx(float(truth.mean()), abs=0.02)


# -- statistical properties on a trained model -----------------------------------------------------
def test_one_sample_iw_estimate_is_the_elbo(trained):
    m, x = trained
    nll1 = per_example_scores(m, x, kind="nll", iw_samples=1, seed=5).double()
    neg_elbo = per_example_scores(m, x, kind="elbo", seed=6).double()
    d = nll1 - neg_elbo  # same expectation (K = 1 is the ELBO with a Monte Carlo KL)
    assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(len(d))


def test_iw_estimate_tightens_and_converges(trained):
    m, x = trained
    x = x[:200]
    r = {k: evaluate(m, x, iw_samples=k, seed=7)["nll"] for k in (1, 50, 500, 1000)}
    gap = r[1] - r[1000]  # ~0.2 nats for this model
    assert gap > 0.1  # more samples give a tighter bound on -log p(x) ...
    assert r[1] > r[50] > r[1000] - 0.02
    assert abs(r[500] - r[1000]) < 0.05 * gap  # ... and it has converged by K = 500
    e = evaluate(m, x, seed=7)  # ELBO <= log p(x), up to the one-sample ELBO's noise
    assert e["elbo"] <= -r[1000] + 4 * e["elbo_std_err"]


def test_scores_rank_noise_as_anomalous(trained):
    m, x = trained
    noise = torch.rand(100, 1, 8, 8)
    for kind in ("elbo", "nll", "recon"):
        s_in = per_example_scores(m, x[:100], kind=kind, iw_samples=20)
        s_out = per_example_scores(m, noise, kind=kind, iw_samples=20)
        assert s_in.shape == (100,) and s_in.dtype == torch.float32
        assert s_out.mean() > s_in.mean() + 5.0


def test_scores_agree_with_evaluate(trained):
    m, x = trained
    res = evaluate(m, x, iw_samples=30, batch_size=64, seed=2)
    kw = dict(iw_samples=30, batch_size=64, seed=2)
    assert float(per_example_scores(m, x, kind="nll", **kw).mean()) == pytest.approx(res["nll"], abs=1e-4)
    assert float(per_example_scores(m, x, kind="elbo", **kw).mean()) == pytest.approx(-res["elbo"], abs=1e-4)
    assert float(per_example_scores(m, x, kind="recon", **kw).mean()) == pytest.approx(res["recon"], abs=1e-4)
    with pytest.raises(ValueError):
        per_example_scores(m, x, kind="bogus")


# -- active units --------------------------------------------------------------------------------------
def test_constant_posterior_mean_is_an_inactive_unit():
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[32], latent_dim=4), SPEC)
    head = m.encoder.net[-1]  # rows 0..D-1 give mu, D..2D-1 give logvar
    with torch.no_grad():
        head.weight[:4].mul_(20.0)  # make every mean vary a lot across x ...
        head.weight[1].zero_()  # ... except dim 1: mu_1 = bias, the same for every x
    res = evaluate(m, torch.rand(200, 1, 8, 8))
    assert res["posterior_mean_var"][1] < 1e-12
    assert min(v for i, v in enumerate(res["posterior_mean_var"]) if i != 1) > 0.01
    assert res["active_units"] == 3


def test_posterior_mean_variance_pools_batches_exactly():
    m = build_model(ModelConfig(hidden=[32], latent_dim=4), SPEC)
    x = torch.rand(101, 1, 8, 8)
    with torch.no_grad():
        want = m.encode(x)[0].double().var(0, unbiased=False)
    got = torch.tensor(evaluate(m, x, batch_size=17)["posterior_mean_var"], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


# -- output format, determinism and side effects ---------------------------------------------------
def test_result_is_json_and_consistent(trained):
    m, x = trained
    res = evaluate(m, x, iw_samples=10, batch_size=33)
    back = json.loads(json.dumps(res))
    assert back == res
    assert res["n"] == len(x) and res["iw_samples"] == 10
    assert len(res["kl_per_dim"]) == 4 and sum(res["kl_per_dim"]) == pytest.approx(res["kl"], rel=1e-6)
    assert res["elbo"] == pytest.approx(-(res["recon"] + res["kl"]), rel=1e-9)
    assert res["bits_per_dim"] == pytest.approx(res["nll"] / (64 * math.log(2)))
    assert res["elbo_std_err"] > 0 and res["nll_std_err"] > 0
    no_iw = evaluate(m, x)
    assert "nll" not in no_iw and no_iw["iw_samples"] is None
    assert no_iw["bits_per_dim"] == pytest.approx(-no_iw["elbo"] / (64 * math.log(2)))


def test_deterministic_and_leaves_caller_rng_alone(trained):
    m, x = trained
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = evaluate(m, x, iw_samples=5, seed=4)
    assert torch.equal(torch.rand(3), expected_next)
    assert evaluate(m, x, iw_samples=5, seed=4) == a
    assert evaluate(m, x, iw_samples=5, seed=5)["nll"] != a["nll"]


def test_eval_mode_during_and_modes_restored_after():
    m = build_model(ModelConfig(hidden=[32], latent_dim=4), SPEC)
    seen = []
    m.decoder.register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    m.train()
    m.encoder.eval()  # a mixed state must come back exactly
    precision = torch.get_float32_matmul_precision()
    evaluate(m, torch.rand(10, 1, 8, 8), iw_samples=3, matmul_precision="medium")
    assert seen and not any(seen)
    assert m.training and m.decoder.training and not m.encoder.training
    assert torch.get_float32_matmul_precision() == precision

    def boom(x, k):
        raise RuntimeError("boom")

    m.log_weights = boom
    with pytest.raises(RuntimeError):
        evaluate(m, torch.rand(10, 1, 8, 8), iw_samples=3)
    assert m.training and not m.encoder.training


def test_bad_arguments():
    m = build_model(ModelConfig(hidden=[32], latent_dim=4), SPEC)
    with pytest.raises(ValueError):
        evaluate(m, torch.rand(0, 1, 8, 8))
    with pytest.raises(ValueError):
        evaluate(m, torch.rand(4, 1, 8, 8), iw_samples=0)
    with pytest.raises(ValueError):
        evaluate(m, torch.rand(4, 1, 8, 8), batch_size=0)
    assert per_example_scores(m, torch.rand(0, 1, 8, 8)).shape == (0,)


def test_fork_rng_restores_the_callers_stream():
    """numerics.fork_rng (used by evaluation, the report's figures and the scikit-learn fit):
    seeding inside leaves the caller's CPU random stream where it was."""
    from vaekit.numerics import fork_rng

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with fork_rng("cpu"):
        torch.manual_seed(0)
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), inside)
