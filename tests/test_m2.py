"""The semi-supervised VAE M2: its objective against the formulas computed by hand, the exact
class sum of its importance weights, gradients, training on digits with few labels, and the
trainer's batch composition and selection by validation accuracy."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vaekit.data.batch import UNLABELLED
from vaekit.data.datasets import Split
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.config import TrainConfig
from vaekit.models import ModelConfig, build_model
from vaekit.models.m2 import M2
from vaekit.training.trainer import Trainer

K = 3


def _model(alpha=0.7, latent_dim=2, spec=DataSpec((1, 4, 4), "unit", K), **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(model="m2", hidden=[12, 8], latent_dim=latent_dim, alpha=alpha, **kw), spec)


def _x(n=5):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def _by_hand(m, x, seed):
    """Per class c and example: -L(x, c) = recon + KL_z + log K with the draws ``loss`` makes
    (one eps of shape (K, B, D) after reseeding), each class encoded and decoded on its own; and log q(y|x)."""
    torch.manual_seed(seed)
    eps = torch.randn(K, len(x), m.latent_dim)
    neg_l = []
    for c in range(K):
        yc = torch.full((len(x),), c)
        mu, logvar = m.encode(x, yc)
        z = mu + eps[c] * torch.exp(0.5 * logvar)
        recon = -m.decode(z, yc).log_prob(x)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)
        neg_l.append(recon + kl + math.log(K))
    return torch.stack(neg_l), torch.log_softmax(m.classifier(x), -1)  # (K, B), (B, K)


def test_unlabelled_bound_is_the_explicit_sum_over_classes():
    m, x = _model(), _x()
    neg_l, logq = _by_hand(m, x, seed=3)
    q = logq.exp()
    neg_u = (q * neg_l.T).sum(-1) + (q * logq).sum(-1)  # sum_y q(y|x) (-L) - H(q)
    torch.manual_seed(3)
    out = m.loss(x)  # no labels at all
    torch.testing.assert_close(out["loss"], neg_u.mean())
    torch.testing.assert_close(out["elbo"], -neg_u.mean())
    torch.manual_seed(3)
    out_minus = m.loss(x, y=torch.full((5,), UNLABELLED))  # every label hidden: the same
    torch.testing.assert_close(out_minus["loss"], out["loss"])
    assert "accuracy" not in out_minus
    torch.manual_seed(3)
    t = m.elbo_terms(x, torch.arange(5) % K)  # labels ignored: the marginal bound per example
    torch.testing.assert_close(-(t["recon"] + t["kl"]), -neg_u)
    torch.testing.assert_close(t["kl_dims"].sum(-1) + t["kl_extra"], t["kl"])


def _by_hand_mixed(m, x, y, seed):
    """-L(x,y) of the labelled rows and -U(x) of the others, with the draws ``loss`` makes (the
    labelled rows' eps first, then one eps per class for the unlabelled rows)."""
    lab = y >= 0
    torch.manual_seed(seed)
    eps_l = torch.randn(int(lab.sum()), m.latent_dim)
    eps_u = torch.randn(K, int((~lab).sum()), m.latent_dim)
    xl, yl, xu = x[lab], y[lab], x[~lab]
    mu, logvar = m.encode(xl, yl)
    z = mu + eps_l * torch.exp(0.5 * logvar)
    own = -m.decode(z, yl).log_prob(xl) + 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1) + math.log(K)
    neg_u = torch.zeros(0)
    if len(xu):
        neg_l = []
        for c in range(K):
            yc = torch.full((len(xu),), c)
            mu, logvar = m.encode(xu, yc)
            z = mu + eps_u[c] * torch.exp(0.5 * logvar)
            neg_l.append(-m.decode(z, yc).log_prob(xu) + 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)
                         + math.log(K))
        logq = torch.log_softmax(m.classifier(xu), -1)
        neg_u = (logq.exp() * torch.stack(neg_l).T).sum(-1) + (logq.exp() * logq).sum(-1)
    return own, neg_u, torch.log_softmax(m.classifier(xl), -1)


@pytest.mark.parametrize("y", [[2, 0, UNLABELLED, 1, UNLABELLED], [2, 0, 1, 1, 0]])
def test_labelled_and_mixed_batches(y):
    """Labelled rows: -L(x,y) at their own class (+ alpha times the mean cross-entropy); the
    others: -U(x); the reported bound is the mean of both over the batch."""
    m, x, y = _model(alpha=0.7), _x(), torch.tensor(y)
    own, neg_u, logq_l = _by_hand_mixed(m, x, y, seed=4)
    ce = F.nll_loss(logq_l, y[y >= 0])
    torch.manual_seed(4)
    out = m.loss(x, y=y)
    bound = (own.sum() + neg_u.sum()) / len(x)
    torch.testing.assert_close(out["loss"], bound + 0.7 * ce)
    torch.testing.assert_close(out["elbo"], -bound)
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["elbo"], -(out["recon"] + out["kl"]))
    assert out["accuracy"] == (logq_l.argmax(-1) == y[y >= 0]).float().mean()


def test_gradients_reach_the_right_networks():
    x = _x()
    m = _model(alpha=0.0)
    m.loss(x, y=torch.tensor([0, 1, 2, 0, 1]))["loss"].backward()
    # all labelled and alpha = 0: nothing depends on q(y|x)
    assert all(p.grad is None or not p.grad.any() for p in m.classifier.parameters())
    assert m.enc_y.weight.grad.abs().sum() > 0 and m.dec_y.weight.grad.abs().sum() > 0
    m = _model(alpha=0.0)
    m.loss(x)["loss"].backward()  # unlabelled: the classifier learns from the bound through q(y|x)
    assert all(p.grad.abs().sum() > 0 for p in m.parameters())
    m = _model(alpha=1.0)
    m.loss(x, y=torch.tensor([0, 1, 2, 0, 1]))["loss"].backward()
    assert all(p.grad.abs().sum() > 0 for p in m.classifier.parameters())


def test_log_weights_sum_classes_out_exactly():
    """latent_dim 1: p(x) = (1/K) sum_c integral p(x|c,z) N(z; 0, 1) dz by quadrature, against the
    importance-sampled estimate (unbiased for p(x), so its log-mean-exp converges to log p(x))."""
    spec = DataSpec((6,), "binary", K)
    m = _model(latent_dim=1, spec=spec).double()
    x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    grid = torch.linspace(-9, 9, 4001, dtype=torch.float64)
    dz = float(grid[1] - grid[0])
    exact = []
    for c in range(K):
        z = grid[:, None].expand(-1, 1)
        dist = m.decode(z, torch.full((len(grid),), c))
        lp = torch.stack([dist.log_prob(xi.expand(len(grid), 6)) for xi in x], 1)  # (G, B)
        lp = lp - 0.5 * grid[:, None] ** 2 - 0.5 * math.log(2 * math.pi)
        exact.append(torch.logsumexp(lp, 0) + math.log(dz))
    exact = torch.logsumexp(torch.stack(exact), 0) - math.log(K)
    with torch.no_grad():
        torch.manual_seed(0)
        lw = m.log_weights(x, 40000)
    est = torch.logsumexp(lw, 0) - math.log(40000)
    torch.testing.assert_close(est, exact, atol=0.02, rtol=0)
    with torch.no_grad():  # the marginal ELBO is below log p(x)
        elbo = -torch.stack([(lambda t: t["recon"] + t["kl"])(m.elbo_terms(x)) for _ in range(200)]).mean(0)
    assert (elbo < exact + 1e-6).all()


def test_decoder_without_labels_is_the_class_mixture():
    m = _model()
    z, x = torch.randn(5, 2), _x()
    per_class = torch.stack([m.decode(z, torch.full((5,), c)).log_prob(x) for c in range(K)])
    torch.testing.assert_close(m.decode(z).log_prob(x), torch.logsumexp(per_class, 0) - math.log(K))
    means = torch.stack([m.decode_mean(z, torch.full((5,), c)) for c in range(K)])
    torch.testing.assert_close(m.decode_mean(z), means.mean(0))
    torch.testing.assert_close(m.decode(z).mean, means.mean(0))
    assert m.decode(z).sample().shape == (5, 1, 4, 4)


def test_sample_encode_and_bad_labels():
    m = _model()
    torch.manual_seed(0)
    s = m.sample(6, y=torch.tensor([0, 1, 2, 0, 1, 2]), mean=True)
    torch.manual_seed(0)
    z = torch.randn(6, 2)
    torch.testing.assert_close(s, m.decode_mean(z, torch.tensor([0, 1, 2, 0, 1, 2])))
    x = _x()
    guess = m.classify(x).argmax(-1)
    torch.testing.assert_close(m.encode(x, torch.full((5,), UNLABELLED))[0], m.encode(x, guess)[0])
    with pytest.raises(UsageError, match="class indices"):
        m.sample(2, y=torch.tensor([0, 3]))
    with pytest.raises(UsageError, match="at least two classes"):
        build_model(ModelConfig(model="m2"), DataSpec((4,), "continuous"))
    with pytest.raises(UsageError, match="free-bits"):
        build_model(ModelConfig(model="m2", free_bits=0.5), DataSpec((4,), "continuous", 2))
    with pytest.raises(UsageError, match="labelled"):
        _model().check_data(Split(_x(), torch.full((5,), UNLABELLED)))


def _digits_data(per_class, seed=0):
    from vaekit.data.datasets import load_data

    return load_data("digits", labels_per_class=per_class, label_seed=seed)


def test_batches_carry_a_share_of_labelled_examples():
    d = _digits_data(3)
    m = build_model(ModelConfig(model="m2", hidden=[16], latent_dim=2), d.spec)
    assert m.labelled_per_batch == 0.3
    tr = Trainer(m, d, TrainConfig(epochs=1, batch_size=50, device="cpu"), progress=False)
    order = tr._epoch_order()
    y = d.train.y[order]
    first = (y[:50] != UNLABELLED).sum()
    assert first == 15 and (y[:15] != UNLABELLED).all()  # 0.3 * 50 labelled, first in the batch
    assert int((d.train.y != UNLABELLED).sum()) == 30
    assert sorted(set(order.tolist())) == list(range(len(d.train.y)))  # every example appears


def test_few_labels_on_digits_beat_chance_and_select_by_accuracy():
    d = _digits_data(5)
    torch.manual_seed(0)
    m = build_model(ModelConfig(model="m2", hidden=[64], latent_dim=4, alpha=1.0), d.spec)
    hist = Trainer(m, d, TrainConfig(epochs=12, batch_size=64, device="cpu", seed=0), progress=False).fit()
    accs = [r["val_accuracy"] for r in hist]
    assert max(accs) > 0.5  # chance is 0.1 with 50 labels among 1437 examples
    best = hist[-1]["best_epoch"]
    assert accs[best] == max(accs) and accs.index(max(accs)) == best  # the first epoch with the best accuracy
    assert all(math.isfinite(r["val_elbo"]) and r["val_elbo"] < 0 for r in hist)


def test_m2_is_registered_with_labels_in_its_batch():
    assert M2.batch_fields == ("y",) and M2.selection_metric == "val_accuracy"
    assert isinstance(_model(), M2)


def test_augment_keeps_only_samples_its_classifier_agrees_with(monkeypatch):
    from vaekit.apps.generate import augment

    m = _model()

    def classify(x):  # a pseudo-random but deterministic class per image, about a third each
        cls = (x.flatten(1)[:, 0] * 1e4).long() % K
        return F.one_hot(cls, K).double() * 0.8 + 0.2 / K

    monkeypatch.setattr(m, "classify", classify)
    x, y = augment(m, 7, agree=True, seed=4)
    assert x.shape == (3 * 7, 1, 4, 4) and y.tolist() == [0] * 7 + [1] * 7 + [2] * 7
    assert (classify(torch.from_numpy(x)).argmax(1).numpy() == y).all()
    x_all, y_all = augment(m, 7, seed=4)  # without the filter about two in three disagree
    assert (classify(torch.from_numpy(x_all)).argmax(1).numpy() != y_all).sum() > 5
    x2, _ = augment(m, 7, agree=True, seed=4)
    np.testing.assert_array_equal(x, x2)  # seeded: the same examples again
    x3, y3 = augment(m, 4, agree=True, classes=[2], seed=1)
    assert y3.tolist() == [2] * 4 and (classify(torch.from_numpy(x3)).argmax(1) == 2).all()

    monkeypatch.setattr(m, "classify", lambda x: F.one_hot(torch.zeros(len(x), dtype=torch.long), K).double())
    with pytest.raises(UsageError, match="agreed with only 0 of .* class 1"):
        augment(m, 3, agree=True)
    cvae = build_model(ModelConfig(model="cvae", hidden=[8], latent_dim=2), DataSpec((1, 4, 4), "unit", K))
    with pytest.raises(UsageError, match="its own classifier"):
        augment(cvae, 3, agree=True)
