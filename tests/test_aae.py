"""The adversarial autoencoder (--model aae) and the MMD between its codes and the prior
(functional.mmd, evaluate --prior-mmd)."""

import json
import math

import pytest
import torch

from resume_helpers import assert_same_training, interrupt_inside_an_epoch
from vaekit.config import TrainConfig
from vaekit.data.datasets import Data, Split
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.functional.mmd import median_distance, mmd2_unbiased
from vaekit.metrics import evaluate, per_example_scores
from vaekit.models import ModelConfig, build_model
from vaekit.models.aae import AAE
from vaekit.report import prior_code_mmd
from vaekit.training.trainer import Trainer

from cli_helpers import cli
from test_trainer import tiny_data


# -- the MMD -------------------------------------------------------------------------------------------
def _brute_mmd2(x, y, bandwidths):
    """The U-statistic written out pair by pair."""
    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (2 * s * s)) for s in bandwidths)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_is_the_u_statistic_of_a_sum_of_gaussian_kernels():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64) + 0.5
    bw = [0.5, 1.0, 3.0]
    assert float(mmd2_unbiased(x, y, bw, chunk=2)) == pytest.approx(_brute_mmd2(x, y, bw), rel=1e-10)
    med = median_distance(x, y)
    pooled = torch.cat([x, y])
    d = torch.cdist(pooled, pooled)
    assert med == pytest.approx(float(d[torch.triu(torch.ones_like(d), 1) > 0].median()), rel=1e-9)
    assert float(mmd2_unbiased(x, y)) == pytest.approx(_brute_mmd2(x, y, [s * med for s in (0.25, 0.5, 1, 2, 4)]),
                                                       rel=1e-10)


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    same = float(mmd2_unbiased(a, b))
    shifted = float(mmd2_unbiased(a, b + torch.tensor([1.0, 0.0])))
    assert abs(same) < 0.02 and shifted > 0.2 and shifted > 20 * abs(same)
    assert float(mmd2_unbiased(a, 2 * b)) > 0.15  # a change of scale too


def test_mmd_is_unbiased_where_the_biased_estimate_is_not():
    """Over many pairs of small samples of one distribution the U-statistic averages to 0 (within its
    standard error); the V-statistic (keeping i = j) averages to a clearly positive value."""
    g = torch.Generator().manual_seed(2)
    u, v = [], []
    for _ in range(300):
        x, y = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)
        u.append(float(mmd2_unbiased(x, y, [1.0])))
        k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / 2).mean()  # noqa: E731
        v.append(float(k(x, x) + k(y, y) - 2 * k(x, y)))
    u_t, v_t = torch.tensor(u), torch.tensor(v)
    se = float(u_t.std() / math.sqrt(len(u)))
    assert abs(float(u_t.mean())) < 3 * se
    assert float(v_t.mean()) > 10 * se
    assert (u_t < 0).float().mean() > 0.2  # the unbiased estimate is not clipped at 0


def test_mmd_bad_input():
    with pytest.raises(ValueError, match="at least 2 points"):
        mmd2_unbiased(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="one dimension"):
        mmd2_unbiased(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="positive"):
        mmd2_unbiased(torch.zeros(3, 2), torch.ones(3, 2), bandwidths=[0.0])


# -- the model -----------------------------------------------------------------------------------------
def blobs(n=800, seed=0):
    """8x8 images of one Gaussian blob at a random position: a 2-D manifold a 2-D code can hold."""
    g = torch.Generator().manual_seed(seed)
    ab = 1 + 5 * torch.rand(n, 2, generator=g)
    i = torch.arange(8.0)
    x = torch.exp(-((i[None, :, None] - ab[:, 0, None, None]) ** 2 + (i[None, None, :] - ab[:, 1, None, None]) ** 2) / 4)
    a, b = int(0.7 * n), int(0.8 * n)
    x = x[:, None]
    return Data(spec=DataSpec((1, 8, 8), "unit", 0), train=Split(x[:a]), val=Split(x[a:b]), test=Split(x[b:]),
                source={"source": "blobs"})


def aae(data, **kw):
    kw = {"hidden": [32], "latent_dim": 4, "critic_hidden": [32, 32], **kw}
    return build_model(ModelConfig(model="aae", **kw), data.spec)


def trainer(model, data, run_dir=None, **kw):
    kw = {"epochs": 2, "batch_size": 32, "seed": 0, "device": "cpu", **kw}
    if "train_step" in vars(model):  # patched by only_players: the autograd engine, which calls it
        kw["fast_path"] = False
    return Trainer(model, data, TrainConfig(**kw), run_dir, progress=False)


def only_players(model, allowed, calls=None):
    """Patch ``model.train_step`` so only the ``allowed`` players' updates are applied."""
    step = model.train_step

    def patched(x, *, update, **kw):
        def gated(player, loss, **k):
            if calls is not None:
                calls.append(player)
            return update(player, loss, **k) if player in allowed else True
        return step(x, update=gated, **kw)

    model.train_step = patched


def test_players_and_their_optimizers():
    data = tiny_data()
    torch.manual_seed(0)
    m = aae(data)
    t = trainer(m, data)
    assert set(t.opts) == {"autoencoder", "discriminator", "generator"}
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(t.opts["generator"].params) == ids(m.encoder.parameters())
    assert ids(t.opts["autoencoder"].params) == ids(m.encoder.parameters()) | ids(m.decoder.parameters())
    assert ids(t.opts["discriminator"].params) == ids(m.discriminator.parameters())
    assert t.opts["discriminator"].betas == (0.5, 0.9) and t.opts["generator"].betas == (0.5, 0.9)
    assert t.opts["autoencoder"].betas == (0.9, 0.999)
    default = build_model(ModelConfig(model="aae", hidden=[32], latent_dim=4), data.spec)
    assert [l.out_features for l in default.discriminator if isinstance(l, torch.nn.Linear)] == [1000, 1000, 1]


@pytest.mark.parametrize("phase,moves", [
    ("autoencoder", {"encoder", "decoder"}),
    ("discriminator", {"discriminator"}),
    ("generator", {"encoder"}),
])
def test_each_phase_moves_only_its_players_parameters(phase, moves):
    data = tiny_data()
    torch.manual_seed(0)
    m = aae(data)
    calls = []
    only_players(m, {phase}, calls)
    t = trainer(m, data, epochs=1, weight_average=0)  # (sets the decoder's output bias from the data)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    t.fit()
    assert calls[:6] == ["autoencoder", "discriminator", "generator"] * 2  # the paper's order, every batch
    for n, p in m.named_parameters():
        assert (not torch.equal(before[n], p.detach())) == (n.split(".")[0] in moves), n


def test_joint_phases_make_two_updates_with_the_generator_loss_in_the_autoencoders():
    """--phases joint: players autoencoder and discriminator only; per batch the autoencoder's update
    (which must carry the generator loss: scaling the discriminator's logit layer changes it) then
    the discriminator's; and the codes still come to match the prior."""
    data = tiny_data()
    torch.manual_seed(0)
    m = aae(data, phases="joint")
    calls = []
    only_players(m, {"autoencoder", "discriminator"}, calls)
    t = trainer(m, data, epochs=1, weight_average=0)
    assert set(t.opts) == {"autoencoder", "discriminator"}
    t.fit()
    assert calls[:4] == ["autoencoder", "discriminator"] * 2

    def encoder_step(scale):
        torch.manual_seed(1)
        m = aae(data, phases="joint")
        with torch.no_grad():
            m.discriminator[-1].weight.mul_(scale)
        grads = {}

        def update(player, loss, **k):
            if player == "autoencoder":
                grads["enc"] = torch.autograd.grad(loss, list(m.encoder.parameters()), retain_graph=True)
            return True
        torch.manual_seed(2)
        m.train_step(data.train.x[:16], update=update)
        return grads["enc"]
    assert any(not torch.allclose(a, b) for a, b in zip(encoder_step(1.0), encoder_step(5.0)))
    with pytest.raises(UsageError, match="--phases must be one of"):
        aae(data, phases="together")
    with pytest.raises(UsageError, match="--phases is an option of --model aae"):
        build_model(ModelConfig(model="vae", hidden=[32], latent_dim=4, phases="joint"), data.spec)

    blob = blobs()
    torch.manual_seed(0)
    m = aae(blob, hidden=[64], latent_dim=2, critic_hidden=[64, 64], prior="gmm-ring", phases="joint")
    untrained = prior_code_mmd(m, blob.test, seed=0)["prior_mmd"]
    t = trainer(m, blob, epochs=20, batch_size=64, lr=2e-3)
    t.fit()
    got = prior_code_mmd(t.eval_model, blob.test, seed=0)["prior_mmd"]
    assert got < 0.1 and got < 0.2 * untrained, (got, untrained)


def test_adversarial_weight_scales_the_generator_term_of_the_joint_update():
    """--adversarial-weight w: the autoencoder's gradient is reconstruction's + w x the generator
    loss's (checked term by term against autograd on each part); refused where it means nothing."""
    data = tiny_data()

    def encoder_grads(weight, part):
        torch.manual_seed(1)
        m = aae(data, phases="joint", adversarial_weight=weight)
        params = list(m.encoder.parameters())
        x = data.train.x[:16]
        if part is not None:  # one term alone, from the same draw of z
            torch.manual_seed(2)
            mu, logvar = m.encoder(x)
            z = m._code(mu, logvar)
            loss = (-m.likelihood.log_prob(m.decoder(z), x).mean() if part == "recon" else m._generator_loss(z))
            return torch.autograd.grad(loss, params)
        grads = {}

        def update(player, loss, **k):
            if player == "autoencoder":
                grads["enc"] = torch.autograd.grad(loss, params, retain_graph=True)
            return True
        torch.manual_seed(2)
        m.train_step(x, update=update)
        return grads["enc"]
    recon, gen = encoder_grads(1.0, "recon"), encoder_grads(1.0, "gen")
    for w in (1.0, 20.0):
        for got, r, g in zip(encoder_grads(w, None), recon, gen):
            torch.testing.assert_close(got, r + w * g, rtol=1e-5, atol=1e-7)
    with pytest.raises(UsageError, match="--adversarial-weight .*--phases joint"):
        aae(data, adversarial_weight=5.0)  # the paper's phases
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UsageError, match="--adversarial-weight must be a positive number"):
            aae(data, phases="joint", adversarial_weight=bad)
    with pytest.raises(UsageError, match="--adversarial-weight is an option of --model aae"):
        build_model(ModelConfig(model="vae", hidden=[32], latent_dim=4, adversarial_weight=2.0), data.spec)


def test_training_logs_the_adversarial_terms_and_keeps_the_last_epoch():
    data = tiny_data()
    torch.manual_seed(0)
    m = aae(data, encoder="gaussian")
    h = trainer(m, data, epochs=2).fit()
    for key in ("train_disc_loss", "train_gen_loss", "val_disc_loss", "val_recon", "val_elbo", "val_kl"):
        assert math.isfinite(h[-1][key]), key
    assert 0 <= h[-1]["train_critic_acc"] <= 1
    assert [r["best_epoch"] for r in h] == [0, 1]
    det = aae(data, encoder="deterministic")
    hd = trainer(det, data, epochs=1).fit()
    assert not {"val_elbo", "train_elbo", "train_kl"} & set(hd[-1])  # left out, not NaN
    assert math.isfinite(hd[-1]["val_recon"])


@pytest.mark.parametrize("prior,encoder", [("standard-normal", "deterministic"), ("gmm-ring", "deterministic"),
                                           ("gmm-ring", "gaussian")])
def test_the_codes_come_to_match_the_prior(prior, encoder):
    """With a 2-D code, the regularisation phase brings the codes' MMD to the prior far below that of
    the same autoencoder trained without it (and below the untrained one's)."""
    data = blobs()
    got = {}
    for kind in ("ae", "aae"):
        torch.manual_seed(0)
        m = aae(data, hidden=[64], latent_dim=2, critic_hidden=[64, 64], prior=prior, encoder=encoder)
        untrained = prior_code_mmd(m, data.test, seed=0)["prior_mmd"]
        if kind == "ae":
            only_players(m, {"autoencoder"})
        t = trainer(m, data, epochs=20, batch_size=64, lr=2e-3)
        h = t.fit()
        got[kind] = prior_code_mmd(t.eval_model, data.test, seed=0)["prior_mmd"]
        assert h[-1]["val_recon"] < h[0]["val_recon"] - 1  # both learn to reconstruct
    assert got["aae"] < 0.25 * got["ae"], got
    assert got["aae"] < 0.1 and (encoder == "gaussian" or got["aae"] < 0.2 * untrained), (got, untrained)


def test_resume_inside_an_epoch_equals_uninterrupted(tmp_path):
    data = tiny_data()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    def make(d, **kw):
        torch.manual_seed(0)
        return trainer(aae(data, encoder="gaussian"), data, d, epochs=3, **kw)

    ref = make(tmp_path / "a")
    torch.manual_seed(1)
    ref.fit()
    t = make(tmp_path / "b", checkpoint_every=0)
    torch.manual_seed(1)
    interrupt_inside_an_epoch(t, save_at=10, kill_at=12)  # a checkpoint inside epoch 2, then killed
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "b" / "last.safetensors"))
    assert all(any(k.startswith(f"optim.{p}.") for k in saved) for p in ("autoencoder", "discriminator", "generator"))
    r = make(tmp_path / "b")
    r.resume()
    assert r.state["epoch"] == 1 and r.state["epoch_pos"] > 0
    r.fit()
    assert_same_training(ref, r, ("autoencoder", "discriminator", "generator"))


def test_evaluation_of_the_two_encoders():
    data = tiny_data()
    torch.manual_seed(0)
    det, gau = aae(data, encoder="deterministic"), aae(data, encoder="gaussian")
    assert det.has_elbo is False and gau.has_elbo is True and AAE.has_elbo is True
    ev = evaluate(det, data.test.x)
    assert "elbo" not in ev and "kl" not in ev and math.isfinite(ev["recon"]) and len(ev["posterior_mean_var"]) == 4
    with pytest.raises(UsageError, match="--ais"):
        det.log_weights(data.test.x[:4], 3)
    with pytest.raises(UsageError, match="--score recon"):
        per_example_scores(det, data.test.x, kind="elbo")
    x = data.test.x[:5]
    assert torch.equal(det.codes(x), det.encode(x)[0])  # deterministic: the codes are the means
    evg = evaluate(gau, data.test.x, iw_samples=10)
    assert evg["elbo"] == pytest.approx(-(evg["recon"] + evg["kl"])) and math.isfinite(evg["nll"])
    ring = aae(data, encoder="gaussian", prior="gmm-ring", latent_dim=2)
    assert math.isfinite(evaluate(ring, data.test.x)["kl"])  # Monte Carlo KL under the mixture


def test_prior_mmd_is_seeded_and_refuses_models_without_a_fixed_prior():
    data = tiny_data()
    torch.manual_seed(0)
    gau = aae(data, encoder="gaussian")
    rng = torch.random.get_rng_state()
    a, b = prior_code_mmd(gau, data.test, seed=3), prior_code_mmd(gau, data.test, seed=3)
    assert a == b and a["prior_mmd_n"] == len(data.test.x) and torch.equal(rng, torch.random.get_rng_state())
    assert prior_code_mmd(gau, data.test, seed=4) != a
    vae = build_model(ModelConfig(hidden=[32], latent_dim=4), data.spec)
    assert math.isfinite(prior_code_mmd(vae, data.test)["prior_mmd"])
    two = build_model(ModelConfig(hidden=[32], latent_dim=4, latent_dim2=2), data.spec)
    with pytest.raises(UsageError, match="second stochastic layer"):
        prior_code_mmd(two, data.test)


def test_kl_weights_are_refused():
    data = tiny_data()
    with pytest.raises(UsageError, match="--beta .*drop --beta"):
        aae(data, beta=4.0)


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from vaekit.cli import main

    d = tmp_path_factory.mktemp("aae")
    common = ["--data", "digits", "--epochs", "2", "--hidden", "32", "--quiet"]
    adv = ["--model", "aae", "--critic-hidden", "32,32"]
    assert main(["train", *common, *adv, "--encoder", "deterministic", "--out", str(d / "det")]) == 0
    assert main(["train", *common, *adv, "--latent-dim", "2", "--prior", "gmm-ring", "--out", str(d / "ring")]) == 0
    assert main(["train", *common, "--latent-dim", "2", "--prior", "gmm-ring", "--out", str(d / "vae")]) == 0
    return d


def test_cli_train_writes_a_run_and_its_report(runs):
    for name in ("det", "ring"):
        assert (runs / name / "report.html").exists() and (runs / name / "samples.png").exists()
        cfg = json.loads((runs / name / "config.json").read_text())
        assert cfg["model"]["model"] == "aae"
    ev = json.loads((runs / "det" / "evaluation.json").read_text())
    assert "elbo" not in ev and "recon" in ev
    assert "elbo" in json.loads((runs / "ring" / "evaluation.json").read_text())


def test_cli_evaluate_prior_mmd_and_ais(runs, capsys):
    got = {}
    for name in ("det", "ring", "vae"):
        code, out, err = cli(capsys, "evaluate", runs / name, "--prior-mmd", "--json")
        assert code == 0, err
        res = json.loads(out)
        assert res["prior_mmd_n"] == res["n"] and math.isfinite(res["prior_mmd"])
        got[name] = res["prior_mmd"]
    code, out, err = cli(capsys, "evaluate", runs / "det", "--ais", "--ais-steps", "5", "--ais-chains", "2",
                         "--limit", "4", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert math.isfinite(res["ais_nll"]) and res["ais_limit"] == 4


def test_cli_sample_quality_on_an_aae_run(runs, capsys, tmp_path):
    from vaekit.cli import main

    assert main(["features", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "net"), "--quiet"]) == 0
    capsys.readouterr()
    code, out, err = cli(capsys, "evaluate", runs / "det", "--sample-quality", "--feature-net", tmp_path / "net",
                         "--n-samples", "100", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert math.isfinite(res["fd"]) and 0 <= res["precision"] <= 1


def test_cli_verbs_on_a_deterministic_run(runs, capsys, tmp_path):
    run = runs / "det"
    for argv in (["sample", run, "--n", "8", "--out", tmp_path / "s.png"],
                 ["reconstruct", run, "--n", "4", "--out", tmp_path / "r.png"],
                 ["interpolate", run, "--from", "0", "--to", "1", "--steps", "4", "--out", tmp_path / "i.png"],
                 ["traverse", run, "--steps", "3", "--out", tmp_path / "t.png"],
                 ["detect", run, "--score", "recon", "--out", tmp_path / "d.csv"]):
        code, _, err = cli(capsys, *argv)
        assert code == 0, (argv[0], err)
    for argv in (["evaluate", run, "--iw-samples", "5"], ["detect", run, "--score", "nll", "--out", tmp_path / "n.csv"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--ais" in err, err
    assert not (tmp_path / "n.csv").exists()
    code, _, err = cli(capsys, "detect", run, "--score", "excess", "--out", tmp_path / "e.csv")
    assert code == 2 and "--score recon" in err and not (tmp_path / "e.csv").exists()
    code, out, err = cli(capsys, "detect", run, "--out", tmp_path / "default.csv", "--json")  # default: recon
    assert code == 0, err
    assert json.loads(out)["score"] == "recon"


@pytest.mark.parametrize("argv,match", [
    (["--prior", "nope"], "unknown prior 'nope'"),
    (["--beta", "2"], "--model aae has none"),
    (["--adaptive-contrast", "off"], "--adaptive-contrast is an option of --model"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, match):
    code, out, err = cli(capsys, "train", "--data", "digits", "--model", "aae", "--epochs", "1",
                         "--out", tmp_path / "r", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    assert not (tmp_path / "r").exists()


def test_cli_prior_mmd_refuses_a_run_without_a_fixed_prior(tmp_path, capsys):
    from vaekit.cli import main

    assert main(["train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim2", "2",
                 "--out", str(tmp_path / "two"), "--quiet"]) == 0
    capsys.readouterr()
    code, _, err = cli(capsys, "evaluate", tmp_path / "two", "--prior-mmd")
    assert code == 2 and "second stochastic layer" in err and len(err.strip().splitlines()) == 1
