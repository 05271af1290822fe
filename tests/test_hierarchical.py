"""Two stochastic layers: densities against torch.distributions, the bounds' ordering, k = 1
IWAE = VAE, the CLI and config, save/load and exact resume."""

import json
import math

import pytest
import torch
from torch.distributions import Normal

import vaekit
from vaekit.config import RunConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.functional import iwae_bound
from vaekit.metrics import evaluate
from vaekit.models import ModelConfig, TwoLayerIWAE, TwoLayerVAE, build_model

SPEC = DataSpec((1, 8, 8), "8bit")


def model(name="vae", k=5, **kw):
    torch.manual_seed(0)
    cfg = dict(model=name, hidden=[32, 24], latent_dim=6, latent_dim2=3, hidden2=[12, 10], activation="tanh", k=k)
    return build_model(ModelConfig(**{**cfg, **kw}), SPEC)


def data(n=5, seed=0):
    return torch.rand(n, *SPEC.shape, generator=torch.Generator().manual_seed(seed))


def test_builds_the_papers_architecture():
    m = build_model(ModelConfig(model="iwae", hidden=[200, 200], latent_dim=100, latent_dim2=50,
                                activation="tanh"), DataSpec((1, 28, 28), "binary"))
    assert isinstance(m, TwoLayerIWAE) and m.config.hidden2 == [100, 100]  # default: half of --hidden
    widths = lambda net: [(l.in_features, l.out_features) for l in net if isinstance(l, torch.nn.Linear)]
    assert widths(m.encoder.net) == [(784, 200), (200, 200), (200, 200)]  # last: [mu1, logvar1]
    assert widths(m.encoder2.net) == [(100, 100), (100, 100), (100, 100)]  # q(z2|z1): [mu2, logvar2]
    assert widths(m.decoder2.net) == [(50, 100), (100, 100), (100, 200)]  # p(z1|z2)
    assert widths(m.decoder.net) == [(100, 200), (200, 200), (200, 784)]
    assert m.latent_dim == 100 and m.latent_dim2 == 50


def test_log_weights_match_torch_distributions():
    m = model(k=4)
    x = data()
    torch.manual_seed(7)
    log_px, log_p, log_q = m.log_weight_terms(x, 4)
    torch.manual_seed(7)  # the same draws, in the same order, scored independently
    mu1, lv1 = m.encoder(x)
    q1 = Normal(mu1, torch.exp(0.5 * lv1))
    z1 = q1.rsample((4,))  # (k, B, D1)
    mu2, lv2 = m.encoder2(z1.reshape(-1, 6))
    q2 = Normal(mu2, torch.exp(0.5 * lv2))
    z2 = q2.rsample()
    pm1, plv1 = m.decoder2(z2)
    want_q = q1.log_prob(z1).sum(-1) + q2.log_prob(z2).sum(-1).view(4, 5)
    want_p = Normal(pm1, torch.exp(0.5 * plv1)).log_prob(z1.reshape(-1, 6)).sum(-1).view(4, 5) \
        + Normal(0.0, 1.0).log_prob(z2).sum(-1).view(4, 5)
    want_px = m.decode(z1.reshape(-1, 6)).log_prob(x.repeat(4, 1, 1, 1)).view(4, 5)
    torch.testing.assert_close(log_q, want_q)
    torch.testing.assert_close(log_p, want_p)
    torch.testing.assert_close(log_px, want_px)


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_iwae_with_k1_is_the_vae_elbo(kl_weight):
    vae, iwae = model("vae"), model("iwae", k=1)
    assert type(vae) is TwoLayerVAE and type(iwae) is TwoLayerIWAE
    iwae.load_state_dict(vae.state_dict())
    x = data(8)
    outs, grads = [], []
    for m in (vae, iwae):
        torch.manual_seed(3)
        out = m.loss(x, kl_weight=kl_weight)
        out["loss"].backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for key in ("loss", "elbo", "recon", "kl"):
        torch.testing.assert_close(outs[1][key], outs[0][key])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)


def test_importance_sampled_bound_is_above_the_elbo():
    m = model("iwae", k=10)
    x = data(40)
    lw = m.log_weights(x, 50).detach()
    assert (iwae_bound(lw) >= lw.mean(0) - 1e-5).all()  # Jensen: holds for every draw
    res = evaluate(m, x, iw_samples=200, seed=0)
    assert res["nll"] < -res["elbo"]  # -log p(x) estimate below -ELBO
    assert len(res["kl_per_dim"]) == len(res["posterior_mean_var"]) == 6 + 3
    assert math.isclose(sum(res["kl_per_dim"]), res["kl"], rel_tol=1e-6, abs_tol=1e-6)


def test_iwae_loss_is_one_batched_pass_and_tightens_with_k():
    m = model("iwae", k=7)
    calls = []
    m.decoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    m.loss(data(5))
    assert calls == [7 * 5]
    x = data(64, seed=1)
    vals = []
    for k in (1, 10, 100):
        m.config.k = k
        torch.manual_seed(1)
        with torch.no_grad():
            vals.append(float(m.loss(x)["iwae"]))
    assert vals[0] < vals[1] < vals[2]


def test_sample_encode_reconstruct_shapes():
    m = model()
    x = data()
    mu, logvar = m.encode(x)  # the z1 posterior: the model's latent space
    assert mu.shape == logvar.shape == (5, 6)
    assert m.decode_mean(mu).shape == x.shape == m.reconstruct(x).shape
    torch.manual_seed(0)
    s = m.sample(7, temperature=0.5)
    assert s.shape == (7, *SPEC.shape) and ((s >= 0) & (s <= 1)).all()


def test_bad_second_layer_settings():
    with pytest.raises(UsageError, match="latent-dim2"):
        model(latent_dim2=-1)
    with pytest.raises(UsageError, match="hidden2"):
        model(hidden2=[0])
    with pytest.raises(UsageError, match="latent-dim2 is 0"):
        model(latent_dim2=0, hidden2=[12])


def test_old_config_without_second_layer_fields_loads():
    cfg = RunConfig().to_dict()
    for key in ("latent_dim2", "hidden2"):
        del cfg["model"][key]
    again = RunConfig.from_dict(cfg)
    assert again.model.latent_dim2 == 0 and again.model.hidden2 is None
    assert type(build_model(again.model, SPEC)).__name__ == "VAE"


ARGS = ["--data", "digits", "--model", "iwae", "--k", "3", "--hidden", "24", "--latent-dim", "5",
        "--latent-dim2", "2", "--hidden2", "8", "--batch-size", "200", "--quiet", "--json"]


def test_cli_trains_saves_loads_and_resumes_exactly(tmp_path, capsys):
    from vaekit.cli import main

    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *ARGS, "--epochs", "2", "--out", str(full)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test"]["elbo"] < 0 and len(res["test"]["kl_per_dim"]) == 5 + 2
    cfg = json.loads((full / "config.json").read_text())["model"]
    assert cfg["latent_dim2"] == 2 and cfg["hidden2"] == [8] and cfg["model"] == "iwae"
    # interrupted after epoch 1, then resumed: the same weights as the uninterrupted run
    assert main(["train", *ARGS, "--epochs", "1", "--out", str(part)]) == 0
    assert main(["train", "--out", str(part), "--resume", "--epochs", "2", "--quiet", "--json"]) == 0
    a, b = vaekit.load(full, which="last"), vaekit.load(part, which="last")
    assert isinstance(a, TwoLayerIWAE)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # the loaded best model scores exactly as the one in memory did (same weights, same noise)
    x = torch.rand(4, *a.spec.shape)
    best = vaekit.load(full)
    torch.manual_seed(0)
    lw1 = best.log_weights(x, 6)
    again = vaekit.load(full)
    torch.manual_seed(0)
    torch.testing.assert_close(again.log_weights(x, 6), lw1, rtol=0, atol=0)
    # the application verbs work in z1, the model's latent space (traverse picks z1 dimensions)
    for verb in (["traverse", str(full), "--out", str(tmp_path / "t.npy")],
                 ["interpolate", str(full), "--from", "0", "--to", "3", "--out", str(tmp_path / "i.npy")],
                 ["embed", str(full), "--out", str(tmp_path / "e.npy")],
                 ["sample", str(full), "--n", "4", "--out", str(tmp_path / "s.npy")]):
        assert main([*verb, "--json"]) == 0, verb
        capsys.readouterr()


def test_keep_freed_memory_is_idempotent():
    from vaekit.training.memory import keep_freed_memory

    first = keep_freed_memory()
    assert isinstance(first, bool) and keep_freed_memory() == first
