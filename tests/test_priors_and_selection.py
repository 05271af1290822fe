"""The ring mixture prior, shared players, "last" model selection and models without an ELBO
(the pieces the adversarial models stand on)."""

import math

import pytest
import torch
import torch.nn as nn

from cli_helpers import cli
from vaekit.config import TrainConfig
from vaekit.metrics import evaluate, per_example_scores
from vaekit.errors import UsageError
from vaekit.models import ModelConfig, build_model
from vaekit.models.vae import VAE
from vaekit.modules.priors import PRIORS
from vaekit.training.steps import player_optimizers
from vaekit.training.trainer import Trainer

from test_trainer import tiny_data


def test_ring_prior_is_a_normalised_ring_of_ten_components():
    p = PRIORS.get("gmm-ring")(2)
    g = torch.linspace(-3.5, 3.5, 701, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    assert float(p.log_prob(pts).exp().sum() * (g[1] - g[0]) ** 2) == pytest.approx(1.0, abs=2e-3)
    torch.manual_seed(0)
    z = p.sample(50000)
    assert float(z.norm(dim=-1).mean()) == pytest.approx(1.4, abs=0.05)
    angle = torch.atan2(z[:, 1], z[:, 0]) % (2 * math.pi)
    sector = torch.round(angle / (2 * math.pi / 10)).long() % 10
    counts = torch.bincount(sector, minlength=10).float() / len(z)
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.01)  # ten equally likely petals
    # the samples' log density beats that of the same points rotated half-way between petals
    rot = torch.tensor([[math.cos(math.pi / 10), -math.sin(math.pi / 10)], [math.sin(math.pi / 10), math.cos(math.pi / 10)]])
    assert float(p.log_prob(z).mean()) > float(p.log_prob(z @ rot.T).mean()) + 2


@pytest.mark.parametrize("d", [3, 4])
def test_ring_prior_in_more_dimensions_shares_the_component_and_kl_is_monte_carlo(d):
    p = PRIORS.get("gmm-ring")(d)
    torch.manual_seed(0)
    z = p.sample(20000)
    assert z.shape == (20000, d)
    pair_angles = [torch.atan2(z[:, 2 * i + 1], z[:, 2 * i]) for i in range(d // 2)]
    if d == 4:  # same petal in both pairs
        diff = (pair_angles[0] - pair_angles[1] + math.pi) % (2 * math.pi) - math.pi
        assert float(diff.abs().median()) < 0.2
    if d == 3:
        assert float(z[:, 2].std()) == pytest.approx(1.0, abs=0.05)
    mu, logvar = torch.zeros(5, d), torch.zeros(5, d)
    zq = torch.randn(5, d)
    kl = p.kl(mu, logvar, zq)
    log_q = (-0.5 * zq**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(kl.sum(-1), log_q - p.log_prob(zq), atol=1e-5)
    with pytest.raises(ValueError, match="sample z"):
        p.kl(mu, logvar)


def test_a_vae_trains_and_scores_under_the_ring_prior():
    data = tiny_data()
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[32], latent_dim=2, prior="gmm-ring"), data.spec)
    t = Trainer(model, data, TrainConfig(epochs=3, batch_size=32, seed=0, device="cpu"), None, progress=False)
    assert t.fast is None  # the hand-derived step is for the standard normal prior only
    h = t.fit()
    assert h[-1]["val_elbo"] > h[0]["val_elbo"]
    ev = evaluate(t.model, data.test.x, iw_samples=20)
    assert ev["nll"] <= -ev["elbo"] + 0.5 and len(ev["kl_per_dim"]) == 2
    from vaekit.apps.anomaly import crn_terms

    terms = crn_terms(t.model, data.test.x, samples=64)  # the KL averaged over the same draws
    assert torch.isfinite(terms["kl"]).all() and float(terms["kl"].mean()) == pytest.approx(ev["kl"], rel=0.25)


class _NoKL(VAE):
    """A VAE whose evaluation cannot see q(z|x) (like a deterministic encoder)."""

    has_elbo = False
    selection_metric = "last"

    def elbo_terms(self, x):
        mu, _ = self.encoder(x)
        return {"recon": -self.likelihood.log_prob(self.decoder(mu), x), "mu": mu}


def test_evaluation_of_a_model_without_an_elbo_reports_what_it_can():
    data = tiny_data()
    torch.manual_seed(0)
    m = _NoKL(ModelConfig(hidden=[32], latent_dim=4).resolved(data.spec), data.spec)
    ev = evaluate(m, data.test.x)
    assert "elbo" not in ev and "kl" not in ev and "kl_per_dim" not in ev and "bits_per_dim" not in ev
    assert math.isfinite(ev["recon"]) and len(ev["posterior_mean_var"]) == 4
    with pytest.raises(UsageError, match="--score recon"):
        per_example_scores(m, data.test.x, kind="elbo")
    assert per_example_scores(m, data.test.x, kind="recon").shape == (len(data.test.x),)


def test_selection_by_last_keeps_every_epoch(tmp_path):
    data = tiny_data()
    torch.manual_seed(0)
    m = _NoKL(ModelConfig(hidden=[32], latent_dim=4).resolved(data.spec), data.spec)
    t = Trainer(m, data, TrainConfig(epochs=3, batch_size=32, seed=0, device="cpu", lr=1e-1), tmp_path, progress=False)
    h = t.fit()
    assert [r["best_epoch"] for r in h] == [0, 1, 2]
    assert t.state["best_metric"] == "last"


class _Shared(VAE):
    def players(self):
        enc = list(self.encoder.parameters())
        ids = {id(p) for p in enc}
        return {"autoencoder": {"params": list(self.parameters())},
                "generator": {"params": enc, "shared": True, "lr_scale": 2.0}}


class _BadShared(_Shared):
    def players(self):
        return {"autoencoder": {"params": list(self.encoder.parameters())},
                "generator": {"params": list(self.decoder.parameters()), "shared": True}}


def test_a_shared_player_has_its_own_adam_over_another_players_parameters():
    data = tiny_data()
    m = _Shared(ModelConfig(hidden=[32], latent_dim=4).resolved(data.spec), data.spec)
    opts = player_optimizers(m, 1e-3, 0.0)
    assert opts["generator"].lr == pytest.approx(2e-3)
    assert {id(p) for p in opts["generator"].params} <= {id(p) for p in opts["autoencoder"].params}
    bad = _BadShared(ModelConfig(hidden=[32], latent_dim=4).resolved(data.spec), data.spec)
    with pytest.raises(ValueError, match="no other player owns"):
        player_optimizers(bad, 1e-3, 0.0)


@pytest.mark.parametrize("argv,match", [
    (["--prior", "ring"], "unknown prior 'ring'.*did you mean 'gmm-ring'"),
    (["--encoder", "deterministic"], "--encoder is an option of --model"),
    (["--encoder", "implicit", "--model", "vae"], "--encoder must be one of gaussian, deterministic"),
    (["--critic-hidden", "0"], "positive integers"),
])
def test_bad_model_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, match):
    try:
        code, out, err = cli(capsys, "train", "--data", "digits", "--epochs", "1", "--out", tmp_path / "r", *argv)
    except SystemExit as e:  # argparse's own checks
        code, (out, err) = e.code, capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "r").exists()
