"""The VAE-GAN (Larsen et al. 2016): three players, no GAN gradient into the encoder, the
equilibrium rule, training, exact resume, and the command line (train, evaluate --ais,
--sample-quality, sample)."""

import json
import math

import numpy as np
import pytest
import torch

from cli_helpers import cli
from test_trainer import tiny_data
from resume_helpers import assert_same_training, interrupt_inside_an_epoch
from vaekit.config import TrainConfig
from vaekit.models import ModelConfig, build_model
from vaekit.models.vaegan import VAEGAN, equilibrium_rule
from vaekit.training.steps import player_optimizers
from vaekit.training.trainer import Trainer

PLAYERS = ("encoder", "decoder", "discriminator")


def model(arch="mlp", **kw):
    data = tiny_data()
    torch.manual_seed(0)
    kw.setdefault("critic_hidden", [16, 16] if arch == "mlp" else [8])
    return build_model(ModelConfig(model="vaegan", arch=arch, hidden=[32] if arch == "mlp" else None,
                                   latent_dim=4, **kw), data.spec), data


def trainer(run_dir=None, epochs=2, model_kw=None, **kw):
    m, data = model(**(model_kw or {}))
    return Trainer(m, data, TrainConfig(epochs=epochs, batch_size=32, seed=0, device="cpu", **kw), run_dir, progress=False)


def owner(name):
    return "encoder" if name.startswith("encoder.") else "discriminator" if name.startswith("discriminator.") else "decoder"


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_three_players_share_out_every_parameter_and_the_discriminator_gives_logit_and_features(arch):
    m, data = model(arch)
    assert isinstance(m, VAEGAN)
    opts = player_optimizers(m, 1e-3, 0.0)  # refuses a parameter in two players or in none
    assert set(opts) == set(PLAYERS)
    for name, opt in opts.items():
        assert opt.betas == (0.5, 0.999) and opt.lr == pytest.approx(1e-3 * VAEGAN.LR_SCALE[name])
    by_player = {n: {id(p) for p in o.params} for n, o in opts.items()}
    for n, p in m.named_parameters():
        assert id(p) in by_player[owner(n)], n
    logit, feats = m.discriminator(data.train.x[:5])
    assert logit.shape == (5,) and feats.shape[0] == 5
    assert feats.shape[1] == (16 if arch == "mlp" else 8 * 4 * 4)  # the last hidden layer / the last conv's map


@pytest.mark.parametrize("real, fake, want", [
    (0.7, 0.7, (True, True)),      # near equilibrium: both
    (0.2, 0.7, (False, True)),     # the discriminator is too good on the data: not updated
    (0.7, 0.2, (False, True)),     # ... or on the fakes
    (1.2, 0.7, (True, False)),     # the discriminator is losing: the decoder waits
    (0.7, 1.2, (True, False)),
    (0.2, 1.2, (True, True)),      # both rules fire: both are updated
])
def test_the_equilibrium_rule(real, fake, want):
    assert equilibrium_rule(real, fake, 0.68, 0.35) == want


def test_the_bounds_themselves_do_not_skip():
    assert equilibrium_rule(0.5, 1.0, 0.75, 0.25) == (True, True)  # exact in binary: 0.75 -/+ 0.25
    assert equilibrium_rule(0.5, 0.5, 0.75, 0.25) == (True, True)
    assert equilibrium_rule(0.4999, 0.6, 0.75, 0.25) == (False, True)
    assert equilibrium_rule(0.6, 1.0001, 0.75, 0.25) == (True, False)


def _grads(m, x, seed):
    """Each player's gradient at the batch's weights, from the losses ``train_step`` hands to
    ``update`` (nothing is stepped)."""
    got = {}

    def update(player, loss, retain_graph=False):
        params = [p for p in m.players()[player]["params"]]
        got[player] = [None if g is None else g.clone() for g in
                       torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)]
        return True

    torch.manual_seed(seed)
    out = m.train_step(x, update=update)
    return got, out


def test_no_gan_gradient_reaches_the_encoder():
    """Scaling the discriminator's logit layer changes the GAN losses but not the features of layer
    l: the encoder's gradient must not move, the decoder's and the discriminator's must."""
    m, data = model(margin=100.0)  # the rule never skips here
    x = data.train.x[:32]
    g1, out1 = _grads(m, x, 3)
    with torch.no_grad():
        m.discriminator.head.weight.mul_(5.0)
        m.discriminator.head.bias.add_(1.0)
    g2, out2 = _grads(m, x, 3)
    assert set(g1) == set(PLAYERS)
    assert out1["feature_recon"] == out2["feature_recon"] and out1["gan_loss"] != out2["gan_loss"]
    for a, b in zip(g1["encoder"], g2["encoder"]):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(g1["decoder"], g2["decoder"]) if a is not None)
    # and the encoder's gradient is that of beta * KL + L_llike alone
    torch.manual_seed(3)
    t = m.terms(x)
    want = torch.autograd.grad(t["encoder"], list(m.encoder.parameters()))
    for a, b in zip(g2["encoder"], want):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("player", PLAYERS)
def test_each_players_update_moves_only_its_parameters(player, fast):
    """On the hand-derived step (the MLP default) and on autograd's."""
    t = trainer(epochs=1, model_kw={"margin": 100.0}, fast_path=fast)
    if fast:
        assert t.fast is not None
        step = t.fast.step
        t.fast.step = lambda x, *, apply, **kw: step(x, apply=lambda p, *a: apply(p, *a) if p == player else False, **kw)
    else:
        assert t.fast is None
        step = t.model.train_step
        t.model.train_step = lambda x, *, update, **kw: step(
            x, update=lambda p, loss, **k: update(p, loss, **k) if p == player else False, **kw)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    for n, p in t.model.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == (owner(n) == player), n


@pytest.mark.parametrize("equilibrium, still, shares", [
    (100.0, "discriminator", (0.0, 1.0)),   # its loss is far below equilibrium - margin: never updated
    (-100.0, "decoder", (1.0, 0.0)),        # far above equilibrium + margin: the decoder never is
])
def test_the_rule_skips_updates_in_training(equilibrium, still, shares):
    t = trainer(epochs=1, model_kw={"equilibrium": equilibrium, "margin": 0.1})
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    rec = t.fit()[-1]
    assert (rec["train_dis_updated"], rec["train_gan_updated"]) == shares
    for n, p in t.model.named_parameters():
        assert torch.equal(before[n], p.detach()) == (owner(n) == still), n
    assert t.state["skipped_steps"] == 0  # skipped by the rule, not as non-finite


def test_training_runs_terms_are_finite_and_samples_change():
    t = trainer(epochs=3)
    torch.manual_seed(7)
    before = t.model.sample(16)
    hist = t.fit()
    for r in hist:
        for k in ("train_loss", "train_elbo", "train_feature_recon", "train_dis_loss", "train_gan_loss", "val_elbo",
                  "val_feature_recon"):
            assert math.isfinite(r[k]), k
        assert 0 <= r["train_critic_acc"] <= 1
        assert 0 <= r["train_dis_updated"] <= 1 and 0 <= r["train_gan_updated"] <= 1
    assert hist[-1]["best_epoch"] == 2  # selection "last": the last epoch is kept
    torch.manual_seed(7)
    after = t.eval_model.sample(16)
    assert after.shape == (16, 1, 8, 8) and (after - before).abs().max() > 1e-3
    assert float(after.min()) >= 0 and float(after.max()) <= 1


def test_invalid_options_are_refused_with_one_line(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--data", "digits", "--model", "vaegan", "--margin", "-1", "--out", tmp_path / "r")
    assert code == 2 and "--margin" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    code, _, err = cli(capsys, "train", "--data", "digits", "--gamma", "0.5", "--out", tmp_path / "r")
    assert code == 2 and "vaegan" in err and not (tmp_path / "r").exists()


def test_resume_inside_an_epoch_equals_uninterrupted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = trainer(tmp_path / "a", epochs=3)
    torch.manual_seed(1)
    ref.fit()
    t = trainer(tmp_path / "b", epochs=3, checkpoint_every=0)
    torch.manual_seed(1)
    interrupt_inside_an_epoch(t, save_at=10, kill_at=12)  # a checkpoint inside epoch 2, then killed
    r = trainer(tmp_path / "b", epochs=3)
    r.resume()
    assert r.state["epoch"] == 1 and r.state["epoch_pos"] > 0
    r.fit()
    assert_same_training(ref, r, PLAYERS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from vaekit.cli import main

    d = tmp_path_factory.mktemp("vaegan")
    for arch in ("mlp", "conv"):
        assert main(["train", "--data", "digits", "--model", "vaegan", "--arch", arch, "--epochs", "2", "--latent-dim", "4",
                     "--critic-hidden", "32", "--out", str(d / arch), "--quiet"]) == 0
    assert main(["features", "--data", "digits", "--epochs", "1", "--out", str(d / "net"), "--quiet"]) == 0
    return d


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_cli_train_evaluate_ais_sample_quality_and_sample(runs, arch, capsys, tmp_path):
    run = runs / arch
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["model"] == "vaegan" and cfg["model"]["critic_hidden"] == [32]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("train_dis_updated" in r and "train_feature_recon" in r for r in rows)
    code, out, err = cli(capsys, "evaluate", run, "--json")
    res = json.loads(out)
    assert code == 0, err
    assert math.isfinite(res["elbo"]) and "not trained" in res["elbo_note"]
    code, out, err = cli(capsys, "evaluate", run, "--ais", "--ais-steps", "10", "--ais-chains", "2", "--limit", "4", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert math.isfinite(res["ais_nll"]) and res["ais_nll"] > 0
    code, out, err = cli(capsys, "evaluate", run, "--sample-quality", "--feature-net", runs / "net", "--n-samples", "50",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["fd"] > 0 and 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1
    code, _, err = cli(capsys, "sample", run, "--n", "8", "--out", tmp_path / "s.npy")
    assert code == 0, err
    xs = np.load(tmp_path / "s.npy")
    assert xs.shape == (8, 1, 8, 8) and np.isfinite(xs).all()
