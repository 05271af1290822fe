"""IWAE: the k-sample bound, batched in one decoder pass, stable, and tighter than the ELBO."""

import math

import pytest
import torch

from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.functional import iwae_bound
from vaekit.models import ModelConfig, build_model

SPEC = DataSpec((1, 8, 8), "8bit")


def model(k=20, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(model="iwae", hidden=[32], latent_dim=3, k=k, **kw), SPEC)


def test_bound_is_logmeanexp_of_the_log_weights_in_one_decoder_pass():
    m = model(k=7)
    calls = []
    m.decoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    x = torch.rand(5, 1, 8, 8)
    torch.manual_seed(3)
    out = m.loss(x)
    assert calls == [7 * 5]  # all samples of all examples in a single batch
    torch.manual_seed(3)
    lw = m.log_weights(x, 7)
    torch.testing.assert_close(out["loss"], -iwae_bound(lw).mean())
    torch.testing.assert_close(out["elbo"], lw.mean())
    torch.testing.assert_close(out["iwae"], iwae_bound(lw).mean())


def test_bound_tightens_with_k():
    x = torch.rand(64, 1, 8, 8)
    vals = {}
    for k in (1, 10, 200):
        m = model(k=k)
        torch.manual_seed(1)
        with torch.no_grad():
            vals[k] = float(m.loss(x)["iwae"])
    assert vals[1] < vals[10] < vals[200]


def test_stable_with_huge_log_weights():
    m = model(k=50)
    with torch.no_grad():
        m.decoder.net[-1].weight.mul_(300.0)  # log p(x|z) of order -1e3 nats
    x = torch.rand(4, 1, 8, 8)
    out = m.loss(x)
    assert out["loss"] > 500 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_kl_weight_scales_prior_and_posterior_terms():
    m = model(k=4)
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(2)
    out = m.loss(x, kl_weight=0.0)
    torch.manual_seed(2)
    log_px, _, _ = m.log_weight_terms(x, 4)
    want = -(torch.logsumexp(log_px, 0) - math.log(4)).mean()
    torch.testing.assert_close(out["loss"], want)


def test_bad_k():
    with pytest.raises(UsageError, match="--k"):
        model(k=0)


def test_iwae_trains_from_the_cli(tmp_path, capsys):
    import json

    from vaekit.cli import main

    out = tmp_path / "iw"
    assert main(["train", "--data", "digits", "--model", "iwae", "--k", "5", "--epochs", "2", "--hidden", "32",
                 "--latent-dim", "4", "--out", str(out), "--quiet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test"]["elbo"] < 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"] or rows[-1]["train_loss"] < rows[0]["train_loss"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["model"] == "iwae" and cfg["model"]["k"] == 5


@pytest.mark.parametrize("lik,kind", [("bernoulli", "8bit"), ("gaussian", "continuous"),
                                      ("gaussian-fixed", "continuous"), ("discretized-logistic", "8bit")])
def test_k_sample_log_prob_broadcasts_x_like_an_expanded_copy(lik, kind):
    """log_prob_k scores x (B, ...) against k parameter sets (k * B rows) without copying x k
    times; values and gradients equal scoring the k-fold expanded x."""
    from vaekit.modules.likelihoods import LIKELIHOODS

    like = LIKELIHOODS.get(lik)()
    k, b, shape = 4, 3, (1, 5, 6)
    g = torch.Generator().manual_seed(0)
    params = torch.randn(k * b, like.num_params, *shape, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.rand(b, *shape, generator=g, dtype=torch.float64)
    if kind == "8bit":
        x = torch.round(x * 255) / 255
    x.requires_grad_(lik == "bernoulli")
    got = like.log_prob_k(params, x)
    xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *shape)
    want = like.log_prob(params, xk).view(k, b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)
    w = torch.randn(k, b, generator=g, dtype=torch.float64)
    inputs = (params, x) if x.requires_grad else (params,)
    g_got = torch.autograd.grad((got * w).sum(), inputs)
    g_want = torch.autograd.grad((want * w).sum(), inputs)
    for a, c in zip(g_got, g_want):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-10)


def _grads(estimator, two_layers, c, seed, b):
    """Gradients of the loss of one binary 4x4 image repeated b times (so the batch mean is a
    b-draw Monte Carlo average), float64, with the noise seeded by ``seed``."""
    torch.manual_seed(0)
    kw = dict(latent_dim=3, latent_dim2=2, hidden2=[5]) if two_layers else dict(latent_dim=3)
    m = build_model(ModelConfig(model="iwae", hidden=[6], k=4, activation="tanh", gradient_estimator=estimator, **kw),
                    DataSpec((1, 4, 4), "binary")).double()
    x = (torch.rand(1, 1, 4, 4) < 0.5).double().expand(b, 1, 4, 4)
    torch.manual_seed(seed)
    out = m.loss(x, kl_weight=c)
    out["loss"].backward()
    return {n: p.grad.clone() for n, p in m.named_parameters()}, out


def _rel(u, v, names):
    return float(sum((u[n] - v[n]).pow(2).sum() for n in names).sqrt() / sum(v[n].pow(2).sum() for n in names).sqrt())


@pytest.mark.parametrize("two_layers", [False, True])
@pytest.mark.parametrize("c", [1.0, 0.5])
def test_dreg_is_unbiased_with_lower_encoder_variance(two_layers, c):
    """Doubly reparameterised gradients (Tucker et al. 2019): same loss value and, from the same
    samples, exactly the plain decoder gradients; the encoder gradients have the plain
    estimator's expectation (200,000 draws agree to ~1%, where the biased "sticking the
    landing" IWAE estimator is off by 50-230%) and far less noise. c is the KL warm-up weight."""
    plain, out_p = _grads("reparam", two_layers, c, 1, 200_000)
    dreg, out_d = _grads("dreg", two_layers, c, 1, 200_000)
    torch.testing.assert_close(out_d["loss"], out_p["loss"])
    assert float(out_d["iwae"]) == pytest.approx(float(out_p["iwae"]))
    enc = [n for n in plain if n.startswith("encoder")]  # q(z1|x), and q(z2|z1) with two layers
    for n in plain:
        if n not in enc:
            torch.testing.assert_close(dreg[n], plain[n], rtol=1e-9, atol=1e-12)
    assert _rel(dreg, plain, enc) < 0.05
    # noise: two seeds of 20,000 draws each
    noise = {e: _rel(_grads(e, two_layers, c, 2, 20_000)[0], _grads(e, two_layers, c, 3, 20_000)[0], enc)
             for e in ("reparam", "dreg")}
    assert noise["dreg"] < 0.6 * noise["reparam"]


def test_dreg_without_gradients_is_the_plain_bound():
    """Under no_grad (validation, evaluation) the dreg model computes the same bound as plain."""
    x = torch.rand(5, 1, 8, 8)
    outs = []
    for est in ("reparam", "dreg"):
        m = model(k=6, gradient_estimator=est)
        torch.manual_seed(4)
        with torch.no_grad():
            outs.append(m.loss(x))
    for key in ("loss", "iwae", "elbo", "recon", "kl"):
        torch.testing.assert_close(outs[0][key], outs[1][key])


def test_gradient_estimator_choices_and_errors(tmp_path, capsys):
    import json

    from vaekit.cli import main

    base = ["train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "3", "--quiet"]
    assert main(base + ["--model", "iwae", "--k", "3", "--gradient-estimator", "dreg", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "model.safetensors").exists()
    # the estimator may change when a run is resumed (same objective, same weights)
    assert main(["train", "--out", str(tmp_path / "d"), "--resume", "--epochs", "2", "--quiet",
                 "--gradient-estimator", "reparam"]) == 0
    assert json.loads((tmp_path / "d" / "config.json").read_text())["model"]["gradient_estimator"] == "reparam"
    assert len((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    for extra, msg in ((["--model", "iwae", "--gradient-estimator", "rws"], "--gradient-estimator must be one of"),
                       (["--gradient-estimator", "dreg"], "is for --model iwae")):
        out = tmp_path / "bad"
        assert main(base + extra + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
