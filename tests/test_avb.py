"""Adversarial variational Bayes (``--model avb``): the implicit encoder matches a known
non-Gaussian posterior better than a Gaussian one, the adversary learns log q - log p, the two
players, exact resume, and the command line (train, evaluate --ais / --sample-quality, sample)."""

import json
import math

import pytest
import torch

import avb_toy
from cli_helpers import cli
from test_trainer import tiny_data
from resume_helpers import assert_same_training, interrupt_inside_an_epoch
from vaekit.config import TrainConfig
from vaekit.errors import UsageError
from vaekit.models import ModelConfig, build_model
from vaekit.models.avb import AVB
from vaekit.training.trainer import Trainer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread is several times faster than two fighting over shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the toy posterior -------------------------------------------------------------------------------
def test_the_toy_posterior_is_bimodal_and_its_moments_are_right():
    mean, var = avb_toy.posterior_moments(2.0)
    assert abs(mean) < 1e-9 and 3.0 < var < 4.0  # modes near +-1.8: mean 0, variance about x^2
    # a single mode (z > 0) has the moments of a near-Gaussian bump: variance about SIGMA^2
    z = torch.linspace(0, 6, 20001, dtype=torch.float64)
    w = torch.softmax(-0.5 * z**2 - 0.5 * ((2.0 - z) / avb_toy.SIGMA) ** 2, 0)
    m1 = float((w * z).sum())
    assert float((w * (z - m1) ** 2).sum()) < 0.1 and abs(var - (m1**2 + float((w * (z - m1) ** 2).sum()))) < 1e-6


def test_avb_matches_the_posterior_moments_better_than_a_gaussian_encoder():
    gauss = avb_toy.moment_errors(avb_toy.train_toy("vae", steps=1500))
    avb = avb_toy.moment_errors(avb_toy.train_toy("avb", steps=1500, adaptive_contrast=True))
    # the Gaussian encoder sits on one mode: its mean is off by about x, its variance by about x^2
    assert gauss["mean_err"] > 0.8 and gauss["var_err"] > 1.0
    assert avb["mean_err"] < 0.6 * gauss["mean_err"], (avb, gauss)
    assert avb["var_err"] < 0.6 * gauss["var_err"], (avb, gauss)


def test_the_toy_decoder_is_known_and_frozen():
    m = avb_toy.build("avb")
    z = torch.linspace(-3, 3, 13)[:, None]
    assert torch.allclose(m.decode_mean(z), z.abs())
    assert all(not p.requires_grad for p in m.decoder.parameters())


def _adversary_only(model, steps, draw_q, batch=256, lr=3e-3, seed=0):
    """Train T alone against a q(z|x) we know (``draw_q``), through the model's own train_step."""
    gen = torch.Generator().manual_seed(seed)
    model.draw = draw_q
    opt = torch.optim.Adam(model.adversary.parameters(), lr=lr)
    params = list(model.adversary.parameters())

    def update(player, loss):
        if player == "adversary":
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            opt.step()
        return True

    for _ in range(steps):
        model.train_step(avb_toy.draw_x(batch, gen), update=update)
    return model


def _gaussian_q(x, n, graph=None):  # q(z|x) = N(0.8 x, 0.5^2)
    return 0.8 * x[None] + 0.5 * torch.randn(n, *x.shape)


def test_the_adversary_learns_log_q_minus_log_p():
    m = _adversary_only(avb_toy.build("avb", adaptive_contrast=False), 1500, _gaussian_q)
    x = avb_toy.draw_x(2000, torch.Generator().manual_seed(5))
    with torch.no_grad():
        z = _gaussian_q(x, 1)[0]
        t = m.adversary(x, z)
        truth = (-0.5 * ((z - 0.8 * x) / 0.5) ** 2 - math.log(0.5) + 0.5 * z**2).squeeze(-1)
    err = (t - truth).abs()
    assert float(err.median()) < 0.2 and torch.corrcoef(torch.stack([t, truth]))[0, 1] > 0.95
    assert abs(float(t.mean() - truth.mean())) < 0.15  # the KL estimate: E_q[T] against the exact KL


def test_with_adaptive_contrast_a_gaussian_q_leaves_t_near_zero_and_the_kl_exact():
    m = _adversary_only(avb_toy.build("avb", adaptive_contrast=True), 800, _gaussian_q)
    x = avb_toy.draw_x(2000, torch.Generator().manual_seed(5))
    with torch.no_grad():
        kl = m.elbo_terms(x)["kl"]
        t = m.adversary(x, m._codes(x)["t_in"])
    exact = (0.5 * ((0.8 * x) ** 2 + 0.25 - 1) - math.log(0.5)).squeeze(-1)  # KL(N(0.8x, 0.25) || N(0, 1))
    assert float(t.abs().mean()) < 0.15
    assert abs(float(kl.mean() - exact.mean())) < 0.15


# -- the model's contract ----------------------------------------------------------------------------
def _model(**kw):
    data = tiny_data()
    torch.manual_seed(0)
    return build_model(ModelConfig(model="avb", hidden=[32], latent_dim=4, critic_hidden=[16], **kw), data.spec), data


def test_the_encoder_is_implicit_and_has_no_density():
    m, data = _model()
    x = data.train.x[:1]
    with torch.no_grad():
        z = m.draw(x.expand(50, *x.shape[1:]), 1)[0]
    assert z.shape == (50, 4) and float(z.std(0).min()) > 1e-3  # the same x, different codes
    mu, logvar = m.encode(data.train.x[:8])
    assert mu.shape == logvar.shape == (8, 4) and torch.isfinite(logvar).all()
    with pytest.raises(UsageError, match="--ais"):
        m.log_weights(data.train.x[:4], 5)
    with pytest.raises(UsageError, match="no Gaussian q"):  # callers that expect (mu, logvar) are told
        m.encoder(data.train.x[:4])
    t = m.elbo_terms(data.train.x[:8])
    assert t["kl_dims"].shape == (8, 4) and torch.allclose(t["kl_dims"].sum(-1), t["kl"])
    assert isinstance(m, AVB) and m.selection_metric == "last" and "--ais" in m.elbo_note


@pytest.mark.parametrize("act", ["relu", "tanh", "elu"])
def test_draws_without_a_graph_match_the_full_graph(act):
    # adaptive contrast's moment draws run without a graph (graph=i keeps only draw i's): the same
    # noise, the same values, and the same gradients for the one draw that is scored
    data = tiny_data()
    torch.manual_seed(0)
    m = build_model(ModelConfig(model="avb", hidden=[32, 24], latent_dim=4, critic_hidden=[16], activation=act),
                    data.spec)
    x = data.train.x[:8]
    params = list(m.encoder.parameters())
    torch.manual_seed(3)
    full = m.draw(x, 9)
    g_full = torch.autograd.grad((full[5] ** 2).sum(), params)
    torch.manual_seed(3)
    split = m.draw(x, 9, graph=5)
    g_split = torch.autograd.grad((split[5] ** 2).sum(), params, retain_graph=True)
    torch.testing.assert_close(split, full.detach())
    for a, b in zip(g_split, g_full):
        torch.testing.assert_close(a, b)
    assert not torch.autograd.grad(split[:5].sum(), params, allow_unused=True, materialize_grads=True)[0].any()
    torch.manual_seed(3)
    with torch.no_grad():
        torch.testing.assert_close(m.draw(x, 9), full.detach())


def test_options_it_cannot_honour_are_refused():
    data = tiny_data()
    with pytest.raises(UsageError, match="--free-bits"):
        build_model(ModelConfig(model="avb", hidden=[8], latent_dim=2, free_bits=0.5), data.spec)
    with pytest.raises(UsageError, match="--adaptive-contrast"):
        build_model(ModelConfig(model="vae", hidden=[8], latent_dim=2, adaptive_contrast=False), data.spec)


def make(run_dir=None, epochs=2, **kw):
    data = tiny_data()
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="avb", hidden=[32], latent_dim=4, critic_hidden=[16],
                                    adaptive_contrast=kw.pop("adaptive_contrast", True)), data.spec)
    cfg = TrainConfig(epochs=epochs, batch_size=32, seed=0, device="cpu", **kw)
    return Trainer(model, data, cfg, run_dir, progress=False)


@pytest.mark.parametrize("only", ["adversary", "vae"])
def test_an_update_moves_only_its_players_parameters(only):
    t = make(epochs=1)
    step = t.model.train_step
    t.model.train_step = lambda x, update, **kw: step(x, update=lambda p, loss: update(p, loss) if p == only else False, **kw)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    for n, p in t.model.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == (n.startswith("adversary.") == (only == "adversary")), n


@pytest.mark.parametrize("ac", [True, False])
def test_both_players_train_and_the_terms_are_logged(ac):
    t = make(epochs=3, adaptive_contrast=ac)
    assert set(t.opts) == {"adversary", "vae"}
    h = t.fit()
    for r in h:
        assert all(math.isfinite(r[k]) for k in ("train_elbo", "train_kl", "train_adversary_loss", "val_elbo"))
        assert 0 <= r["train_critic_acc"] <= 1
    assert h[-1]["val_recon"] < h[0]["val_recon"]


def test_resume_inside_an_epoch_equals_uninterrupted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = make(tmp_path / "a", epochs=2)
    ref.fit()
    t = make(tmp_path / "b", epochs=2, checkpoint_every=0)
    interrupt_inside_an_epoch(t, save_at=9, kill_at=11)  # a checkpoint inside epoch 2, then killed
    r = make(tmp_path / "b", epochs=2)
    r.resume()
    assert r.state["epoch"] == 1 and r.state["epoch_pos"] > 0
    r.fit()
    assert_same_training(ref, r)


# -- the command line -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def avb_run(tmp_path_factory):
    from vaekit.cli import main

    d = tmp_path_factory.mktemp("avb")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data", "digits", "--model", "avb", "--epochs", "2", "--hidden", "64",
                     "--latent-dim", "4", "--critic-hidden", "64", "--out", str(d / "run"), "--quiet"]) == 0
        assert main(["features", "--data", "digits", "--epochs", "1", "--out", str(d / "net"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(n)
    return d


def test_cli_evaluate_ais_sample_quality_and_sample(avb_run, capsys):
    run = avb_run / "run"
    code, out, err = cli(capsys, "evaluate", run, "--ais", "--ais-steps", "10", "--ais-chains", "2", "--limit", "4", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert math.isfinite(res["ais_nll"]) and res["ais_nll"] > 0 and "--ais" in res["elbo_note"]
    code, out, err = cli(capsys, "evaluate", run, "--sample-quality", "--feature-net", avb_run / "net",
                         "--n-samples", "60", "--json")
    assert code == 0, err
    assert json.loads(out)["fd"] > 0
    code, _, err = cli(capsys, "sample", run, "--n", "8", "--out", avb_run / "s.npy")
    assert code == 0, err and (avb_run / "s.npy").exists()


def test_cli_refuses_what_needs_a_density(avb_run, capsys):
    run = avb_run / "run"
    code, _, err = cli(capsys, "evaluate", run, "--iw-samples", "10", "--json")
    assert code == 2 and "--ais" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "detect", run, "--out", avb_run / "scores.csv")  # default score: excess
    assert code == 2 and "--score elbo" in err and not (avb_run / "scores.csv").exists()
    code, _, err = cli(capsys, "detect", run, "--score", "elbo", "--out", avb_run / "scores.csv")
    assert code == 0, err
    # asked of train, refused before any training (it used to fail only at the final evaluation)
    out = avb_run / "iw"
    code, _, err = cli(capsys, "train", "--data", "digits", "--model", "avb", "--iw-samples", "10", "--epochs", "1",
                       "--out", out)
    assert code == 2 and "--iw-samples" in err and "--ais" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_cli_adaptive_contrast_off_and_refused_for_a_vae(tmp_path, capsys):
    code, out, err = cli(capsys, "train", "--data", "digits", "--model", "avb", "--adaptive-contrast", "off",
                         "--epochs", "1", "--hidden", "32", "--latent-dim", "2", "--out", tmp_path / "off", "--json", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "off" / "config.json").read_text())["model"]["adaptive_contrast"] is False
    code, _, err = cli(capsys, "train", "--data", "digits", "--model", "vae", "--adaptive-contrast", "off",
                       "--epochs", "1", "--out", tmp_path / "vae")
    assert code == 2 and "--adaptive-contrast" in err and not (tmp_path / "vae").exists()


def test_critic_steps_update_the_adversary_k_times_per_vae_update():
    data = tiny_data()
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="avb", hidden=[32], latent_dim=4, critic_hidden=[16], critic_steps=3),
                        data.spec)
    calls, t_before = [], [p.detach().clone() for p in model.adversary.parameters()]

    def update(player, loss):
        calls.append(player)
        assert loss.requires_grad and torch.isfinite(loss)
        if player == "adversary":  # what the trainer would do: move T, so the next step sees the new T
            grads = torch.autograd.grad(loss, list(model.adversary.parameters()))
            with torch.no_grad():
                for p, g in zip(model.adversary.parameters(), grads):
                    p -= 0.1 * g
        return True

    out = model.train_step(data.train.x[:16], update=update)
    assert calls == ["adversary"] * 3 + ["vae"]
    assert all(not torch.equal(a, b) for a, b in zip(t_before, model.adversary.parameters()))
    assert math.isfinite(float(out["loss"])) and 0 <= float(out["critic_acc"]) <= 1


def test_cli_critic_steps(tmp_path, capsys):
    base = ["train", "--data", "digits", "--epochs", "1", "--hidden", "32", "--latent-dim", "2", "--quiet"]
    code, out, err = cli(capsys, *base, "--model", "avb", "--critic-steps", "2", "--out", tmp_path / "k2", "--json")
    assert code == 0, err
    assert json.loads((tmp_path / "k2" / "config.json").read_text())["model"]["critic_steps"] == 2
    for bad, needle in ((["--model", "avb", "--critic-steps", "0"], "at least 1"),
                        (["--model", "vae", "--critic-steps", "2"], "--critic-steps is an option of --model avb")):
        code, _, err = cli(capsys, *base, *bad, "--out", tmp_path / "bad")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()
