"""Annealed importance sampling of log p(x): exact on a linear-Gaussian model, in agreement with the
importance-sampled NLL of a trained VAE and below its -ELBO, and ``vaekit evaluate --ais`` from the
command line (bad step counts: exit 2, one line)."""

import json
import math

import pytest
import torch

import vaekit
from cli_helpers import cli
from vaekit.ais import ais_log_px, check_ais, evaluate_ais
from vaekit.apps.common import open_run
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.functional import ais_temperatures, log_mean_exp, log_mean_exp_std_err
from vaekit.functional.hmc import adapt_step_size, hmc_step, log_prob_and_grad
from vaekit.metrics import per_example_scores
from vaekit.models.base import BaseModel, ModelConfig
from vaekit.run import load_run_data


# -- the pure parts ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sigmoid", "linear"])
def test_temperatures_run_from_zero_to_one_increasing(kind):
    b = ais_temperatures(50, kind)
    assert b.dtype == torch.float64 and b.shape == (51,)
    assert b[0] == 0.0 and b[-1] == 1.0 and bool((b.diff() > 0).all())
    if kind == "sigmoid":  # small steps at both ends, large in the middle
        d = b.diff()
        assert d[0] < d[25] / 5 and d[-1] < d[25] / 5 and torch.allclose(d, d.flip(0))
    with pytest.raises(ValueError):
        ais_temperatures(0)
    with pytest.raises(ValueError):
        ais_temperatures(10, "cosine")


def test_log_mean_exp_std_err_matches_the_spread_of_repeated_estimates():
    g = torch.Generator().manual_seed(0)
    t = 0.5 * torch.randn(2000, 64, generator=g, dtype=torch.float64)  # 2000 repeats of a 64-weight estimate
    est = log_mean_exp(t, dim=1)
    se = log_mean_exp_std_err(t, dim=1)
    assert abs(float(se.mean()) / float(est.std()) - 1) < 0.1
    assert torch.equal(log_mean_exp_std_err(t[:, :1], dim=1), torch.zeros(2000, dtype=torch.float64))


def test_hmc_step_samples_a_gaussian():
    """Many chains of HMC on N(2, 0.5^2) in 2-d, with the step size adapted toward 0.65 acceptance."""
    mean, sd = torch.tensor([2.0, -1.0]), 0.5
    target = lambda s: log_prob_and_grad(lambda v: (-0.5 * ((v - mean) / sd).pow(2).sum(-1), None), s)  # noqa: E731
    torch.manual_seed(0)
    state = torch.randn(4000, 2)
    lp, g, _ = target(state)
    eps = torch.full((4000, 1), 0.1)
    for _ in range(60):
        state, lp, g, _, rate = hmc_step(target, state, lp, g, None, eps, 5)
        eps = adapt_step_size(eps, rate, 0.65)
    assert torch.allclose(state.mean(0), mean, atol=0.05)
    assert torch.allclose(state.std(0), torch.full((2,), sd), atol=0.05)
    assert 0.5 < float(rate.mean()) < 0.8


# -- exact: a linear-Gaussian model ------------------------------------------------------------------
class LinearGaussian(BaseModel):
    """p(z) = N(0, I_d), p(x|z) = N(Wz + b, s^2 I_n): log p(x) = log N(x; b, W W^T + s^2 I) exactly."""

    def __init__(self, d: int = 2, n: int = 5, s: float = 0.5, seed: int = 0) -> None:
        super().__init__(ModelConfig(model="linear-gaussian", latent_dim=d), DataSpec(shape=(n,), kind="continuous"))
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(n, d, generator=g))
        self.b = torch.nn.Parameter(torch.randn(n, generator=g))
        self.s = s

    def prior_sample(self, n):
        return torch.randn(n, self.W.shape[1], dtype=self.W.dtype)

    def log_prior(self, z):
        return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)

    def log_likelihood(self, x, z):
        return torch.distributions.Normal(z @ self.W.T + self.b, self.s).log_prob(x).sum(-1)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(len(self.b))
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def draw(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.W.shape[1], generator=g)
        return z @ self.W.T + self.b + self.s * torch.randn(n, len(self.b), generator=g)


def test_ais_matches_the_exact_likelihood_of_a_linear_gaussian_model():
    model = LinearGaussian()
    with torch.no_grad():
        x = model.draw(60)
        exact = model.exact_log_px(x).double()
    state = torch.random.get_rng_state()
    r = ais_log_px(model, x, steps=150, chains=64, leapfrog=5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone
    diff = r["log_px"] - exact  # (60,)
    # the mean over examples within 0.05 nats (its Monte Carlo error here: ~0.015; chains that tuned
    # their own step sizes were 0.15-0.2 nats above the truth)
    assert abs(float(diff.mean())) < 0.05
    # per example, within the reported Monte Carlo error (which must not be tiny or huge)
    assert 0.03 < float(r["mc_std_err"].mean()) < 0.3
    assert float((diff.abs() < 4 * r["mc_std_err"] + 0.05).double().mean()) >= 0.95
    assert 0.5 < float(r["accept"].mean()) < 0.8  # the step size found the target acceptance rate
    again = ais_log_px(model, x[:10], steps=20, chains=4, leapfrog=2, seed=3)["log_px"]
    assert torch.equal(again, ais_log_px(model, x[:10], steps=20, chains=4, leapfrog=2, seed=3)["log_px"])


def test_settings_and_models_ais_cannot_score_are_refused():
    model = LinearGaussian()
    for kw, says in (({"steps": 0}, "--ais-steps"), ({"steps": -3}, "--ais-steps"), ({"steps": 2.5}, "--ais-steps"),
                     ({"steps": 10, "chains": 0}, "--ais-chains"), ({"steps": 10, "schedule": "cosine"}, "schedule")):
        with pytest.raises(UsageError, match=says):
            check_ais(model, **kw)

    class NoDecoder(BaseModel):
        pass

    m = NoDecoder(ModelConfig(model="encoder-only"), DataSpec(shape=(3,), kind="continuous"))
    m.w = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(UsageError, match="'encoder-only' does not score log p"):
        evaluate_ais(m, torch.zeros(2, 3), steps=5)


# -- a trained VAE, and the command line -------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_vae(tmp_path_factory):
    out = tmp_path_factory.mktemp("ais") / "vae"
    vaekit.train("digits", epochs=15, out=out, progress=False, evaluate_test=False, figures=False,
                 hidden=[64], latent_dim=8)
    return out


def test_ais_agrees_with_importance_sampling_and_is_below_the_elbo(digits_vae):
    run = open_run(digits_vae, device="cpu")
    x = load_run_data(run.config).test[:100]
    iw = per_example_scores(run.model, x, kind="nll", iw_samples=5000, seed=1).double()
    with torch.no_grad():  # -ELBO averaged over 2000 draws from q(z|x), so its own noise is negligible
        torch.manual_seed(1)
        neg_elbo = -run.model.log_weights(x.x, 2000).double().mean(0)
    ais = -ais_log_px(run.model, x, steps=300, chains=16, leapfrog=5, seed=2)["log_px"]
    se = lambda d: float(d.std() / math.sqrt(len(d)))  # noqa: E731  paired: the examples' own spread cancels
    d = ais - iw
    assert abs(float(d.mean())) < 4 * se(d) + 0.02, (float(ais.mean()), float(iw.mean()))
    assert se(d) < 0.05  # both estimates are precise enough for the comparison to mean something
    d = ais - neg_elbo
    assert float(d.mean()) < 3 * se(d)  # -ELBO is an upper bound on -log p(x); AIS is tighter
    assert float((neg_elbo - iw).mean()) > 5 * se(d)  # ... and measurably so here


def test_cli_evaluate_ais_json_and_text(digits_vae, capsys):
    code, out, err = cli(capsys, "evaluate", digits_vae, "--ais", "--ais-steps", "50", "--limit", "20", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 20 and res["ais_steps"] == 50 and res["ais_chains"] == 16 and res["ais_limit"] == 20
    for k in ("ais_nll", "ais_nll_std_err", "ais_nll_mc_std_err", "ais_bits_per_dim", "ais_accept_rate", "elbo"):
        assert isinstance(res[k], float), k
    assert 0 < res["ais_nll_mc_std_err"] < res["ais_nll_std_err"]  # the spread of examples dominates at n = 20
    assert abs(res["ais_nll"] + res["elbo"]) < 2.0  # near -ELBO, a few tenths of a nat below it
    assert res["ais_bits_per_dim"] == pytest.approx(res["ais_nll"] / (64 * math.log(2)))
    code, out, _ = cli(capsys, "evaluate", digits_vae, "--ais", "--ais-steps", "10", "--ais-chains", "2", "--limit", "3")
    assert code == 0 and "ais_nll" in out and "ais_chains: 2" in out


@pytest.mark.parametrize("argv, says", [
    (["--ais", "--ais-steps", "0"], "--ais-steps"), (["--ais", "--ais-steps", "-5"], "--ais-steps"),
    (["--ais", "--ais-steps", "2.5"], "--ais-steps"), (["--ais", "--ais-steps", "many"], "--ais-steps"),
    (["--ais", "--ais-chains", "0"], "--ais-chains"), (["--ais-steps", "50"], "add --ais"),
])
def test_cli_bad_ais_settings_exit_2_with_one_line(digits_vae, capsys, argv, says):
    try:
        code, out, err = cli(capsys, "evaluate", digits_vae, *argv)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code, (out, err) = e.code, capsys.readouterr()
    assert code == 2 and out == "" and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_ais_on_a_model_without_a_decoder_prior_pair(tmp_path, capsys):
    out = tmp_path / "m2"
    vaekit.train("digits", model="m2", labels_per_class=10, epochs=1, out=out, progress=False, evaluate_test=False,
                 figures=False, hidden=[32], latent_dim=4)
    code, stdout, err = cli(capsys, "evaluate", out, "--ais", "--ais-steps", "5", "--json")
    assert code == 2 and stdout == "" and "'m2' does not score log p" in err and len(err.strip().splitlines()) == 1
