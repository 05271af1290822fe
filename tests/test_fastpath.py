"""The hand-derived MLP training step against autograd: same loss, same gradients."""

import pytest
import torch

from vaekit.data.spec import DataSpec
from vaekit.models import ModelConfig, build_model
from vaekit.training.fastpath import FastStep, supports


@pytest.mark.parametrize(
    "cfg,kind",
    [
        (dict(hidden=[400], latent_dim=20), "8bit"),
        (dict(hidden=[32, 16], latent_dim=5, activation="tanh", beta=3.0), "binary"),
        (dict(hidden=[24], latent_dim=6, free_bits=0.4), "8bit"),
        (dict(hidden=[16, 16, 8], latent_dim=3, likelihood="gaussian-fixed"), "continuous"),
        (dict(hidden=[16, 8], latent_dim=3, activation="leaky_relu"), "8bit"),
    ],
)
@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
def test_fast_step_matches_autograd(cfg, kind, kl_weight):
    spec = DataSpec((1, 6, 7) if kind != "continuous" else (11,), kind)
    torch.manual_seed(0)
    m = build_model(ModelConfig(**cfg), spec).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(9, *spec.shape, generator=g, dtype=torch.float64)
    if kind == "binary":
        x = (x > 0.5).double()
    if kind == "continuous":
        x = torch.randn(9, *spec.shape, generator=g, dtype=torch.float64)
    assert supports(m)
    torch.manual_seed(5)
    ref = m.loss(x, kl_weight=kl_weight)
    ref["loss"].backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same reparameterisation noise
    got = FastStep(m).step(x, kl_weight=kl_weight)
    for k in ("loss", "elbo", "recon", "kl"):
        torch.testing.assert_close(got[k], ref[k].detach(), rtol=1e-10, atol=1e-9)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-8, atol=1e-10, msg=n)


def test_unsupported_models_fall_back():
    assert not supports(build_model(ModelConfig(arch="conv"), DataSpec((1, 8, 8), "8bit")))
    assert not supports(build_model(ModelConfig(activation="elu"), DataSpec((1, 8, 8), "8bit")))
    assert not supports(build_model(ModelConfig(likelihood="gaussian"), DataSpec((4,), "continuous")))
    with pytest.raises(ValueError):
        FastStep(build_model(ModelConfig(arch="conv"), DataSpec((1, 8, 8), "8bit")))


def test_grad_check_sees_a_non_finite_gradient():
    spec = DataSpec((10,), "unit")
    m = build_model(ModelConfig(hidden=[8], latent_dim=2), spec)
    x = torch.rand(4, 10)
    assert torch.isfinite(FastStep(m).step(x)["grad_check"])
    x[1, 3] = float("nan")
    out = FastStep(m).step(x)
    assert not torch.isfinite(out["grad_check"])
    assert not torch.isfinite(m.decoder.net[-1].weight.grad).all()


def test_bfloat16_matmuls_stay_close_to_fp32():
    spec = DataSpec((1, 6, 7), "8bit")
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[64, 32], latent_dim=4, activation="tanh"), spec)
    x = torch.rand(32, *spec.shape)
    torch.manual_seed(3)
    ref = FastStep(m).step(x)
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    torch.manual_seed(3)
    got = FastStep(m, matmul_dtype=torch.bfloat16).step(x)
    assert abs(float(got["loss"] - ref["loss"])) < 0.01 * abs(float(ref["loss"]))
    for n, p in m.named_parameters():
        assert p.grad.dtype == torch.float32
        rel = (p.grad - want[n]).norm() / want[n].norm()
        assert rel < 0.1, (n, float(rel))  # (the critic's first layer: real and fake rows nearly cancel)


@pytest.mark.parametrize("cfg", [dict(model="iwae", k=5), dict(latent_dim2=3), dict(model="iwae", latent_dim2=3)])
def test_models_with_their_own_loss_use_autograd(cfg):
    """The fast step computes the one-layer VAE's ELBO; the IWAE bound and the two-layer models
    override ``loss`` and must not be trained with it."""
    assert not supports(build_model(ModelConfig(hidden=[16], latent_dim=4, **cfg), DataSpec((1, 8, 8), "8bit")))


# -- the adversarial autoencoder's players, by hand -----------------------------------------------
def _player_updates(m, x, fast: bool, seed: int):
    """One train_step of ``m`` with a plain SGD update per player; returns [(player, loss, {name: grad})]."""
    names = {id(p): n for n, p in m.named_parameters()}
    params = {name: spec["params"] for name, spec in m.players().items()}
    seen = []

    def sgd(player, loss, grads):
        seen.append((player, float(loss.detach()), {names[id(p)]: g.clone() for p, g in zip(params[player], grads)}))
        with torch.no_grad():
            for p, g in zip(params[player], grads):
                p -= 0.05 * g
        return True

    torch.manual_seed(seed)
    if fast:
        from vaekit.training.fastpath import players_step

        out = players_step(m).step(x, apply=lambda player, loss, check: sgd(player, loss, [p.grad for p in params[player]]))
    else:
        def update(player, loss, retain_graph=False):
            return sgd(player, loss, torch.autograd.grad(loss, params[player], retain_graph=retain_graph, allow_unused=True))

        out = m.train_step(x, update=update)
    return seen, out


def _both_engines(kind, supports, **cfg):
    """Twin float64 models of ``cfg`` on one batch, one step each by autograd and by hand:
    (the hand-derived twin, autograd's updates, the hand-derived ones, autograd's terms, its terms)."""
    spec = DataSpec((1, 5, 6) if kind == "8bit" else (13,), kind)
    mc = ModelConfig(**cfg).resolved(spec)
    torch.manual_seed(0)
    ref = build_model(mc, spec).double()
    got = build_model(mc, spec).double()
    got.load_state_dict(ref.state_dict())
    assert supports(got)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(10, *spec.shape, generator=g, dtype=torch.float64)
    if kind == "continuous":
        x = torch.randn(10, *spec.shape, generator=g, dtype=torch.float64)
    want, out_ref = _player_updates(ref, x, fast=False, seed=7)
    have, out = _player_updates(got, x, fast=True, seed=7)
    for (n, p), q in zip(got.named_parameters(), ref.parameters()):  # the same weights after the updates
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=n)
    return got, want, have, out_ref, out


@pytest.mark.parametrize("phases", ["paper", "joint", "joint-weighted"])
@pytest.mark.parametrize("encoder,prior,lik", [("deterministic", "standard-normal", "bernoulli"),
                                               ("gaussian", "gmm-ring", "bernoulli"),
                                               ("gaussian", "standard-normal", "gaussian-fixed")])
def test_fast_aae_step_makes_the_updates_of_autograd(phases, encoder, prior, lik):
    from vaekit.training.fastpath import supports_aae

    kind = "continuous" if lik == "gaussian-fixed" else "8bit"
    weight = 7.5 if phases == "joint-weighted" else 1.0
    phases = phases.split("-")[0]
    got, want, have, out_ref, out = _both_engines(
        kind, supports_aae, model="aae", hidden=[24, 12], latent_dim=4, encoder=encoder, prior=prior, phases=phases,
        critic_hidden=[16, 8], likelihood=lik if lik != "bernoulli" else None, adversarial_weight=weight)
    assert [p for p, _, _ in have] == [p for p, _, _ in want] == (
        ["autoencoder", "discriminator"] if phases == "joint" else ["autoencoder", "discriminator", "generator"])
    for (player, loss_h, gh), (_, loss_w, gw) in zip(have, want):
        assert loss_h == pytest.approx(loss_w, rel=1e-10), player
        assert gh.keys() == gw.keys()
        for n in gw:
            assert gw[n] is not None and float(gw[n].abs().sum()) > 0, (player, n)
            torch.testing.assert_close(gh[n], gw[n], rtol=1e-8, atol=1e-11, msg=f"{player} {n}")
    for k in out_ref:
        torch.testing.assert_close(out[k], out_ref[k].detach(), rtol=1e-9, atol=1e-10, msg=k)


@pytest.mark.parametrize("cfg,kind,margin", [
    (dict(hidden=[24], latent_dim=3, critic_hidden=[20, 12]), "8bit", 100.0),  # every update made
    (dict(hidden=[24, 16], latent_dim=4, critic_hidden=[16], beta=2.0, free_bits=0.05, gamma=0.5), "8bit", 100.0),
    (dict(hidden=[16], latent_dim=2, critic_hidden=[12, 12], likelihood="gaussian-fixed"), "continuous", 100.0),
    (dict(hidden=[24], latent_dim=3, critic_hidden=[20, 12], equilibrium=5.0), "8bit", 0.0),  # the rule skips Dis
    (dict(hidden=[24], latent_dim=3, critic_hidden=[20, 12], equilibrium=-5.0), "8bit", 0.0),  # ... the decoder
])
def test_fast_vaegan_step_makes_the_updates_of_autograd(cfg, kind, margin):
    from vaekit.training.fastpath import supports_vaegan

    got, want, have, out_ref, out = _both_engines(kind, supports_vaegan, model="vaegan", margin=margin, **cfg)
    order = [p for p, _, _ in want]
    assert [p for p, _, _ in have] == order and order[0] == "encoder"
    assert (len(order) < 3) == (margin == 0.0), order
    for (player, loss_h, gh), (_, loss_w, gw) in zip(have, want):
        assert loss_h == pytest.approx(loss_w, rel=1e-10), player
        for n in gw:
            assert gw[n] is not None and float(gw[n].abs().sum()) > 0, (player, n)
            torch.testing.assert_close(gh[n], gw[n], rtol=1e-8, atol=1e-11, msg=f"{player} {n}")
    for k in out_ref:
        torch.testing.assert_close(out[k], out_ref[k].detach().to(out[k].dtype), rtol=1e-9, atol=1e-10, msg=k)


def test_the_conv_vaegan_and_unusual_networks_fall_back_to_autograd():
    from vaekit.training.fastpath import players_step, supports_vaegan

    img = DataSpec((1, 8, 8), "8bit")
    assert not supports_vaegan(build_model(ModelConfig(model="vaegan", arch="conv", latent_dim=3), img))
    assert not supports_vaegan(build_model(ModelConfig(model="vaegan", hidden=[8], latent_dim=3, prior="gmm-ring"), img))
    assert not supports_vaegan(build_model(ModelConfig(model="vaegan", hidden=[8], latent_dim=3, activation="elu"), img))
    assert players_step(build_model(ModelConfig(model="vae", hidden=[8], latent_dim=3), img)) is None


def test_the_aae_trains_on_the_hand_derived_players_step_and_falls_back_elsewhere():
    from test_trainer import make_trainer

    from vaekit.training.steps import HandDerivedPlayersStep, PlayersStep

    t = make_trainer(epochs=2, model_kw={"model": "aae", "critic_hidden": [16], "phases": "joint"})
    t.fit()
    assert type(t.step) is HandDerivedPlayersStep and t.history[-1]["skipped_steps"] == 0
    assert t.history[-1]["train_recon"] < t.history[0]["train_recon"] or len(t.history) == 1
    slow = make_trainer(epochs=1, fast_path=False, model_kw={"model": "aae", "critic_hidden": [16]})
    slow.fit()
    assert type(slow.step) is PlayersStep
    conv = make_trainer(epochs=1, model_kw={"model": "aae", "arch": "conv", "critic_hidden": [16]})
    assert conv.fast is None


@pytest.mark.parametrize("model", ["aae", "vaegan"])
def test_players_steps_with_bfloat16_matmuls_stay_close_to_fp32(model):
    from vaekit.training.fastpath import players_step

    spec = DataSpec((1, 6, 7), "8bit")
    extra = {"phases": "joint"} if model == "aae" else {"margin": 100.0}
    torch.manual_seed(0)
    m = build_model(ModelConfig(model=model, hidden=[64], latent_dim=4, critic_hidden=[48, 32], **extra), spec)
    x = torch.rand(32, *spec.shape)
    grads = {}
    for dtype in (None, torch.bfloat16):
        got = grads[dtype] = {}

        def apply(player, loss, check):
            assert torch.isfinite(check)
            got.update({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None
                        and any(p is q for q in m.players()[player]["params"])})
            return True
        torch.manual_seed(3)
        players_step(m, dtype).step(x, apply=apply)
    assert grads[None].keys() == grads[torch.bfloat16].keys() and len(grads[None]) == len(list(m.parameters()))
    for n, want in grads[None].items():
        assert grads[torch.bfloat16][n].dtype == torch.float32
        rel = (grads[torch.bfloat16][n] - want).norm() / want.norm()
        assert rel < 0.1, (n, float(rel))  # (the critic's first layer: real and fake rows nearly cancel)
