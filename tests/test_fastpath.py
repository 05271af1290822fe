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
        assert rel < 0.05, (n, float(rel))


@pytest.mark.parametrize("cfg", [dict(model="iwae", k=5), dict(latent_dim2=3), dict(model="iwae", latent_dim2=3)])
def test_models_with_their_own_loss_use_autograd(cfg):
    """The fast step computes the one-layer VAE's ELBO; the IWAE bound and the two-layer models
    override ``loss`` and must not be trained with it."""
    assert not supports(build_model(ModelConfig(hidden=[16], latent_dim=4, **cfg), DataSpec((1, 8, 8), "8bit")))
