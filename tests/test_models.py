"""Contract tests over every registered model, architecture and likelihood."""

import math

import pytest
import torch

from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.models import MODELS, ModelConfig, build_model
from vaekit.models.base import TWO_LAYER, BaseModel
from vaekit.modules.blocks import ENCODERS
from vaekit.modules.likelihoods import LIKELIHOODS

# Three classes, so that models conditioned on labels (batch_fields ("y",)) can be built too.
CASES = [
    ("mlp", DataSpec((1, 8, 8), "unit", 3)),
    ("mlp", DataSpec((5,), "continuous", 3)),
    ("conv", DataSpec((1, 28, 28), "8bit", 3)),
    ("conv", DataSpec((3, 13, 9), "8bit", 3)),
    ("conv", DataSpec((1, 8, 8), "binary", 3)),
]


def _batch(spec, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    if spec.kind == "continuous":
        return torch.randn(n, *spec.shape, generator=g)
    x = torch.rand(n, *spec.shape, generator=g)
    return (x > 0.5).float() if spec.kind == "binary" else torch.round(x * 255) / 255


def _fields(m, n):
    """The keyword arguments a model reads from a batch of n (labels 0, 1, 2, 0, ...)."""
    return {"y": torch.arange(n) % 3} if "y" in m.batch_fields else {}


def _cases():
    for model in MODELS.names():
        # several-player models (aae, avb, vaegan) train by train_step, not by loss alone: their
        # contract (players, phases, terms, resume) is tested in their own files
        if MODELS.get(model).players is not BaseModel.players:
            continue
        # latent_dim2 > 0: the two-stochastic-layer variant, for the models that offer one
        for latent_dim2 in (0, 2) if model in TWO_LAYER else (0,):
            for arch, spec in CASES:
                for lik in LIKELIHOODS.names():
                    if spec.kind in LIKELIHOODS.get(lik).kinds:
                        yield model, arch, spec, lik, latent_dim2


@pytest.mark.parametrize("model,arch,spec,lik,latent_dim2", list(_cases()))
def test_model_contract(model, arch, spec, lik, latent_dim2):
    torch.manual_seed(0)
    m = build_model(ModelConfig(model=model, arch=arch, hidden=[16, 8] if arch == "mlp" else None, latent_dim=3,
                                likelihood=lik, latent_dim2=latent_dim2, k=4), spec)
    x = _batch(spec)
    f, f4 = _fields(m, 6), _fields(m, 4)
    out = m.loss(x, kl_weight=0.5, **f)
    assert {"loss", "elbo", "recon", "kl"} <= set(out)
    assert out["loss"].dim() == 0 and all(out[k].dim() == 0 for k in ("elbo", "recon", "kl"))
    assert not out["elbo"].requires_grad and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["elbo"], -(out["recon"] + out["kl"]))
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
    mu, logvar = m.encode(x, **f)
    assert mu.shape == logvar.shape == (6, 3)
    d = m.decode(mu, **f)
    assert tuple(d.event_shape) == spec.shape and d.log_prob(x).shape == (6,)
    assert m.sample(4, **f4).shape == (4, *spec.shape)
    assert m.reconstruct(x, **f).shape == x.shape
    lw = m.log_weights(x, 5, **f)
    assert lw.shape == (5, 6) and torch.isfinite(lw).all()
    t = m.elbo_terms(x, **f)
    n_dims = 3 + latent_dim2  # per-dimension KL and posterior means cover every stochastic layer
    assert t["recon"].shape == t["kl"].shape == (6,)
    assert t["kl_dims"].shape == t["mu"].shape == (6, n_dims)
    # "kl_extra": KL of latents that are not continuous dimensions (M2's class y), if any
    torch.testing.assert_close(t["kl_dims"].sum(-1) + t.get("kl_extra", 0.0), t["kl"])


def test_loss_is_negative_elbo_with_beta_and_free_bits():
    spec = DataSpec((10,), "continuous")
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[8], latent_dim=4, beta=4.0), spec)
    x = _batch(spec)
    torch.manual_seed(1)
    out = m.loss(x, kl_weight=0.5)
    torch.testing.assert_close(out["loss"], out["recon"] + 2.0 * out["kl"])
    m.config.free_bits = 100.0  # every dimension below the floor: the KL term is the constant 4 * 100
    torch.manual_seed(1)
    out = m.loss(x, kl_weight=1.0)
    torch.testing.assert_close(out["loss"], out["recon"] + 4.0 * 400.0)


def test_log_weights_average_to_elbo():
    spec = DataSpec((1, 8, 8), "unit")
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[32], latent_dim=2), spec)
    x = _batch(spec, n=3)
    lw = m.log_weights(x, 20000)
    mu, logvar = m.encode(x)
    # E_q[log w] = ELBO = E_q[log p(x|z)] - KL: compare the mean log weight with a many-sample ELBO
    torch.manual_seed(2)
    recon = torch.stack([m.elbo_terms(x)["recon"] for _ in range(2000)]).mean(0)
    kl = m.prior.kl(mu, logvar).sum(-1)
    torch.testing.assert_close(lw.mean(0), -(recon + kl), atol=0.3, rtol=0.01)


def test_conv_decoder_restores_odd_sizes():
    for h, w in [(8, 8), (28, 28), (13, 9), (64, 48), (33, 17)]:
        spec = DataSpec((3, h, w), "8bit")
        m = build_model(ModelConfig(arch="conv", latent_dim=2), spec)
        assert m.decoder(torch.zeros(2, 2)).shape == (2, 1, 3, h, w)


def test_bad_model_configs():
    spec = DataSpec((5,), "continuous")
    with pytest.raises(UsageError, match="does not fit continuous"):
        build_model(ModelConfig(likelihood="bernoulli"), spec)
    with pytest.raises(UsageError, match="needs image data"):
        build_model(ModelConfig(arch="conv"), spec)
    with pytest.raises(UsageError, match="at least 8x8"):
        build_model(ModelConfig(arch="conv"), DataSpec((1, 4, 4), "8bit"))
    with pytest.raises(UsageError, match="valid: conv, mlp"):
        build_model(ModelConfig(arch="transformer"), spec)
    with pytest.raises(UsageError, match="unknown model"):
        build_model(ModelConfig(model="vea"), spec)
    with pytest.raises(UsageError, match="activation"):
        build_model(ModelConfig(activation="swish2"), spec)
    with pytest.raises(UsageError, match="latent-dim"):
        build_model(ModelConfig(latent_dim=0), spec)


def test_every_architecture_registered_both_ways():
    from vaekit.modules.blocks import DECODERS

    assert ENCODERS.names() == DECODERS.names()
    assert math.prod((1, 2)) == 2


@pytest.mark.parametrize("arch,lik", [("mlp", "bernoulli"), ("mlp", "gaussian"), ("conv", "bernoulli"),
                                      ("mlp", "discretized-logistic")])
def test_data_init_starts_decoder_at_the_mean(arch, lik):
    spec = DataSpec((1, 8, 8), "8bit")
    m = build_model(ModelConfig(arch=arch, hidden=[16] if arch == "mlp" else None, latent_dim=2, likelihood=lik), spec)
    x = torch.rand(50, 1, 8, 8) * 0.8 + 0.1
    m.init_from_data(x)
    last = m.decoder.net[-1] if arch == "mlp" else m.decoder.out
    with torch.no_grad():
        last.weight.zero_()  # silence the hidden layers: the output is the bias alone
    mean = m.decode_mean(torch.zeros(1, 2))[0]
    want = x.mean(0) if arch == "mlp" else x.mean().expand_as(mean)
    torch.testing.assert_close(mean, want, atol=2e-3, rtol=0)


@pytest.mark.parametrize("latent_dim2", [0, 3])
def test_sample_follows_the_model_dtype(latent_dim2):
    """A float64 model samples in float64 (the prior's draw used to be float32 always, which a
    float64 decoder rejects)."""
    extra = dict(latent_dim2=latent_dim2, hidden2=[8]) if latent_dim2 else {}
    m = build_model(ModelConfig(hidden=[16], latent_dim=4, likelihood="bernoulli", **extra), DataSpec((10,), "binary"))
    assert m.sample(5).dtype == torch.float32
    m = m.double()
    assert m.dtype == torch.float64
    s = m.sample(5, temperature=0.5)
    assert s.shape == (5, 10) and s.dtype == torch.float64 and torch.isfinite(s).all()
