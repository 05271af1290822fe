"""The conditional VAE as a model: its terms, the conditional prior, conv and conditioning inputs,
labelled augmentation, and that the condition really steers what it generates."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from vaekit.apps.generate import augment, sample
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.models import ModelConfig, build_model

SPEC = DataSpec((1, 8, 8), "unit", 3)


def _x(n=64, seed=0, spec=SPEC):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *spec.shape, generator=g)


def _model(spec=SPEC, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(model="cvae", hidden=kw.pop("hidden", [16]), latent_dim=4, **kw), spec)


def _perturb(module, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_reads_labels_or_conditions():
    assert _model().batch_fields == ("y",)
    assert _model(DataSpec((5,), "continuous", None, (2,))).batch_fields == ("c",)
    with pytest.raises(UsageError, match="this model is conditional"):
        _model().encode(_x(4))


@pytest.mark.parametrize("conditional_prior", [False, True])
def test_terms_shapes_and_the_bound(conditional_prior):
    m = _model(conditional_prior=conditional_prior)
    if conditional_prior:
        _perturb(m.prior_net)  # away from its N(0, I) start, so p(z|c) differs per class
    x, y = _x(200), torch.arange(200) % 3
    out = m.loss(x, y=y, kl_weight=0.5)
    assert {"loss", "elbo", "recon", "kl"} <= set(out) and out["loss"].dim() == 0
    torch.testing.assert_close(out["elbo"], -(out["recon"] + out["kl"]))
    out["loss"].backward()
    assert all(p.grad is not None for p in m.parameters())
    with torch.no_grad():
        t = m.elbo_terms(x, y=y)
        assert t["recon"].shape == t["kl"].shape == (200,) and t["kl_dims"].shape == t["mu"].shape == (200, 4)
        elbo = float(torch.stack([-(m.elbo_terms(x, y=y)["recon"] + m.elbo_terms(x, y=y)["kl"]).mean()
                                  for _ in range(5)]).mean())
        lw = m.log_weights(x, 64, y=y)
        assert lw.shape == (64, 200) and torch.isfinite(lw).all()
        iw = float((torch.logsumexp(lw, 0) - math.log(64)).mean())
    # the mean log weight estimates the same ELBO (analytic KL vs. log p(z|c) - log q at samples) ...
    assert abs(float(lw.mean()) - elbo) < 0.02 * abs(elbo) + 0.5
    # ... and the k-sample bound lies above it
    assert iw >= elbo


def test_conditional_prior_starts_standard_and_is_sampled():
    m = _model(conditional_prior=True)
    x, y = _x(8), torch.arange(8) % 3
    mu, logvar = m.encode(x, y=y)
    h = m.condition(y=y)
    torch.testing.assert_close(m._kl(mu, logvar, mu, h), m.prior.kl(mu, logvar))  # N(0, I) at the start
    _perturb(m.prior_net)
    mu_p, logvar_p = m.prior_params(m.condition(y=y))
    assert not torch.allclose(mu_p[0], mu_p[1])  # one prior per class
    torch.manual_seed(3)
    cold = m.sample(8, y=y, temperature=1e-6)
    torch.testing.assert_close(cold, m.decode_mean(mu_p, y=y), atol=1e-4, rtol=1e-4)


def test_conv_with_labels_and_a_conditioning_image():
    spec = DataSpec((1, 12, 12), "unit", 2)
    m = _model(spec, arch="conv", hidden=None)
    assert m.encoder.head.in_features == 64 * 3 * 3 + 2  # the one-hot joins the flattened features
    x, y = _x(6, spec=spec), torch.tensor([0, 1, 0, 1, 0, 1])
    assert m.reconstruct(x, y=y).shape == x.shape and m.log_weights(x, 3, y=y).shape == (3, 6)
    z = torch.randn(1, 4).expand(2, 4)
    assert not torch.allclose(*m.decode_mean(z, y=torch.tensor([0, 1])))  # the label reaches the decoder
    cspec = DataSpec((1, 12, 12), "unit", None, (1, 12, 12))
    mc = _model(cspec, arch="conv", hidden=None, conditional_prior=True)
    assert mc.batch_fields == ("c",) and mc.cond.net is not None  # a small conv embedding of the image
    c = _x(6, seed=1, spec=cspec)
    out = mc.loss(x, c=c)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and mc.cond.net[0].weight.grad.abs().sum() > 0
    assert mc.sample(6, c=c).shape == (6, 1, 12, 12)


def test_a_model_without_conditions_or_with_one_class_is_refused():
    with pytest.raises(UsageError, match="needs labels or a condition"):
        build_model(ModelConfig(model="cvae"), DataSpec((1, 8, 8), "unit"))
    with pytest.raises(UsageError, match="at least two classes"):
        build_model(ModelConfig(model="cvae"), DataSpec((1, 8, 8), "unit", 1))


def test_sample_checks_its_conditions():
    m = _model()
    with pytest.raises(UsageError, match="4 examples need 4 values of y"):
        sample(m, 4, y=torch.tensor([0, 1]))
    with pytest.raises(UsageError, match="does not read 'c'"):
        sample(m, 2, c=torch.zeros(2, 3))
    with pytest.raises(UsageError, match="conditional on class labels"):
        augment(build_model(ModelConfig(hidden=[8], latent_dim=2), SPEC), 3)


@pytest.fixture(scope="module")
def digits_cvae():
    """A cvae trained for a few seconds on sklearn's digits (no files written)."""
    return vaekit.train("digits", model="cvae", epochs=6, batch_size=32, hidden=[64], latent_dim=8, progress=False,
                        evaluate_test=False, weight_average=0)


def test_samples_of_class_k_look_like_class_k(digits_cvae):
    """Conditioning is real: the mean of the samples drawn for class k lies nearer the training
    mean of class k than of any other class, for every class, and most single samples do too."""
    tr = digits_cvae.data.train
    means = torch.stack([tr.x[tr.y == k].mean(0).flatten() for k in range(10)])
    x, y = augment(digits_cvae.model, 40)
    x, y = torch.as_tensor(x).reshape(len(x), -1), torch.as_tensor(y)
    assert x.shape == (400, 64) and y.dtype == torch.int64 and (y.bincount() == 40).all()
    per_class = torch.stack([x[y == k].mean(0) for k in range(10)])
    assert torch.equal(torch.cdist(per_class, means).argmin(1), torch.arange(10))
    assert float((torch.cdist(x, means).argmin(1) == y).float().mean()) > 0.6


def test_augment_returns_arrays_for_a_classifier(digits_cvae):
    x, y = augment(digits_cvae.model, 3, classes=[2, 5], seed=1)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (6, 1, 8, 8)
    assert y.tolist() == [2, 2, 2, 5, 5, 5]
    x2, _ = augment(digits_cvae.model, 3, classes=[2, 5], seed=1)
    np.testing.assert_array_equal(x, x2)  # seeded
    with pytest.raises(UsageError, match="indices in 0..9"):
        augment(digits_cvae.model, 3, classes=[10])


@pytest.mark.parametrize("cfg,cond_shape", [(dict(hidden=[12, 8], free_bits=0.2), None),
                                            (dict(hidden=[10], beta=2.0), (3,))])
def test_fast_step_matches_autograd(cfg, cond_shape):
    """The hand-derived step serves the cvae (labels or vectors, N(0, I) prior): same loss and gradients."""
    from vaekit.training.fastpath import FastStep, supports

    spec = DataSpec((1, 5, 6), "8bit", 4, cond_shape)
    torch.manual_seed(0)
    m = build_model(ModelConfig(model="cvae", latent_dim=3, **cfg), spec).double()
    x = torch.rand(9, *spec.shape, dtype=torch.float64)
    f = {"y": torch.arange(9) % 4} if cond_shape is None else {"c": torch.randn(9, 3, dtype=torch.float64)}
    assert supports(m)
    torch.manual_seed(5)
    ref = m.loss(x, kl_weight=0.7, **f)
    ref["loss"].backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    got = FastStep(m).step(x, kl_weight=0.7, **f)
    for k in ("loss", "elbo", "recon", "kl"):
        torch.testing.assert_close(got[k], ref[k].detach(), rtol=1e-10, atol=1e-9)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-8, atol=1e-10, msg=n)
    assert not supports(_model(conditional_prior=True))  # the learned prior goes through autograd
    assert not supports(_model(DataSpec((1, 8, 8), "unit", None, (1, 8, 8))))  # so does an embedded image


SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Fashion-MNIST not in ../shared/data")
def test_fashion_mnist_classes_have_names():
    from vaekit.apps.common import label_index
    from vaekit.data.datasets import load_data

    d = load_data("fashion-mnist", data_dir=str(SHARED), download=False)
    assert d.source["classes"][7] == "Sneaker" and d.spec.num_classes == 10
    assert d.test.y[:3].tolist() == [9, 2, 1]  # the file's label order is kept
    assert label_index("Sneaker", d.source, 10) == label_index("7", d.source, 10) == 7
    # the official names (with a space or a slash) and any case find the stored ones
    assert label_index("Ankle boot", d.source, 10) == label_index("ankle-boot", d.source, 10) == 9
    assert label_index("T-shirt/top", d.source, 10) == 0
