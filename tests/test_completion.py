"""Structured-output completion (``--model completion``, Sohn et al. 2015): the masks it draws, a loss on
the missing part only, completions that keep the given values, an importance-sampled conditional
NLL below the conditional -ELBO, and ``vaekit complete`` end to end, bad inputs included."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from cli_helpers import cli
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.functional.masks import content_uniforms, draw_masks, named_mask, paper_mask, quadrant_index
from vaekit.models import ModelConfig, build_model
from vaekit.run import load_run_data, read_config

MNIST = (1, 28, 28)


def _model(spec=DataSpec((1, 8, 8), "unit"), **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(model="completion", hidden=[32], latent_dim=4, **kw), spec)


# -- masks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [1, 2, 3])
def test_paper_layouts_give_exactly_q_quadrants(q):
    miss = draw_masks(str(q), MNIST, torch.rand(3, 0))  # no randomness: the same mask for all
    assert miss.shape == (3, *MNIST) and (miss == miss[:1]).all()
    assert int((~miss[0]).sum()) == q * 14 * 14
    given = set(quadrant_index(28, 28)[~miss[0, 0]].unique().tolist())
    assert given == {1: {2}, 2: {0, 2}, 3: {0, 1, 2}}[q]  # bottom left; left half; all but bottom right


def test_random_quadrants_are_whole_quadrants_one_to_three_given():
    u = torch.rand(3000, 5, generator=torch.Generator().manual_seed(0))
    miss = draw_masks("random", (2, 10, 12), u)
    assert (miss[:, 0] == miss[:, 1]).all()  # one mask for every channel
    q = quadrant_index(10, 12)
    per_quadrant = torch.stack([miss[:, 0][:, q == i].float().mean(1) for i in range(4)], 1)  # (N, 4)
    assert ((per_quadrant == 0) | (per_quadrant == 1)).all()  # whole quadrants only
    n_given = (per_quadrant == 0).sum(1)
    counts = torch.bincount(n_given, minlength=5)
    assert counts[0] == 0 and counts[4] == 0
    assert all(abs(int(c) / 3000 - 1 / 3) < 0.04 for c in counts[1:4])
    assert ((per_quadrant == 0).float().mean(0) - 0.5).abs().max() < 0.04  # each quadrant given half the time


def test_rect_and_pixel_masks():
    u = torch.rand(500, 200, generator=torch.Generator().manual_seed(1))
    rect = draw_masks("rect", (3, 12, 16), u)
    assert (rect[:, 0] == rect[:, 2]).all()
    rows, cols = rect[:, 0].any(2).sum(1), rect[:, 0].any(1).sum(1)
    assert rows.min() >= 3 and rows.max() <= 9 and cols.min() >= 4 and cols.max() <= 12
    assert (rect[:, 0].flatten(1).sum(1) == rows * cols).all()  # a filled rectangle
    vec = draw_masks("rect", (40,), u)
    starts = vec.float().argmax(1)
    lengths = vec.sum(1)
    assert all(vec[i, starts[i]:starts[i] + lengths[i]].all() for i in range(len(vec)))  # contiguous
    u = torch.rand(500, 300, generator=torch.Generator().manual_seed(2))
    share = draw_masks("pixels", (1, 16, 16), u).float().mean(dim=(1, 2, 3))
    assert ((share - (0.1 + 0.8 * u[:, 0])).abs() < 0.15).all()  # each example's own missing rate
    assert named_mask("q2", (3, 8, 8)).equal(paper_mask(2, 8, 8).expand(3, 8, 8))
    assert named_mask("bottom", (1, 8, 8))[0, 4:].all() and not named_mask("bottom", (1, 8, 8))[0, :4].any()


def test_bad_mask_modes():
    with pytest.raises(UsageError, match="pixels or rect"):
        _model(DataSpec((5,), "continuous"), given="random")
    with pytest.raises(UsageError, match="valid"):
        _model(given="4")
    with pytest.raises(UsageError, match="--model completion"):
        build_model(ModelConfig(given="2"), DataSpec((1, 8, 8), "unit"))
    m = _model()
    with pytest.raises(UsageError, match="mask has shape"):
        m.loss(torch.rand(2, 1, 8, 8), mask=torch.ones(3, 1, 8, 8))


def test_evaluation_masks_follow_each_example_not_the_batch():
    m = _model(given="random").eval()
    x = torch.rand(16, 1, 8, 8)
    a = m.given_mask(x)
    assert a.equal(m.given_mask(x)) and a[5:6].equal(m.given_mask(x[5:6]))
    assert a[torch.arange(15, -1, -1)].equal(m.given_mask(x.flip(0)))
    assert len({tuple(r.flatten().tolist()) for r in a}) > 2  # examples do get different masks
    u = content_uniforms(x, 7)
    assert u.shape == (16, 7) and (u >= 0).all() and (u < 1).all()
    m.train()
    assert not all(m.given_mask(x).equal(m.given_mask(x)) for _ in range(3))  # training draws at random


# -- the objective -------------------------------------------------------------------------------------------
def test_loss_counts_only_the_missing_values():
    m = _model(given="2")
    last = m.generation.net[-1]
    with torch.no_grad():  # constant logits c: the reconstruction term is known exactly
        last.weight.zero_()
        last.bias.fill_(0.3)
    x = torch.rand(5, 1, 8, 8)
    miss = paper_mask(2, 8, 8)
    out = m.loss(x, mask=miss)
    c = torch.tensor(0.3)
    per_value = torch.nn.functional.softplus(c) - x * c  # -log Bernoulli(x; logit c)
    want = per_value[:, :, miss].flatten(1).sum(1).mean()
    torch.testing.assert_close(out["recon"], want)
    changed = torch.where(miss, x, torch.rand_like(x))  # other given values change only the conditioning
    assert m.log_prob_missing(torch.full((5, 1, 1, 8, 8), 0.3), changed, miss.expand(x.shape)).allclose(
        -per_value[:, :, miss].flatten(1).sum(1))
    assert float(out["missing"]) == 0.5
    torch.testing.assert_close(out["elbo"], -(out["recon"] + out["kl"]))


def test_gsnn_term_mixes_in():
    x = torch.rand(4, 1, 8, 8)
    plain = _model(given="1")
    torch.manual_seed(3)
    a = plain.loss(x)
    mixed = _model(given="1", extra={"gsnn_weight": 1.0})
    torch.manual_seed(3)
    b = mixed.loss(x)
    assert "gsnn" in b and "gsnn" not in a
    torch.testing.assert_close(b["loss"], b["gsnn"])
    with pytest.raises(UsageError, match="gsnn_weight"):
        _model(extra={"gsnn_weight": 2.0})


def test_completions_keep_the_given_values_exactly():
    m = _model(given="random").eval()
    x = torch.rand(6, 1, 8, 8)
    miss = m.given_mask(x)
    x_nan = torch.where(miss, torch.full_like(x, float("nan")), x)
    c = m.complete(x_nan, miss, 5)
    assert c.shape == (5, 6, 1, 8, 8) and torch.isfinite(c).all()
    assert torch.equal(c[:, ~miss], x.expand(5, *x.shape)[:, ~miss])
    assert ((c >= 0) & (c <= 1)).all() and not torch.equal(c[0], c[1])  # several different completions
    from vaekit.apps.complete import complete

    d = complete(m, x_nan, miss, 3, seed=1)
    assert torch.equal(d, complete(m, x_nan, miss, 3, seed=1)) and torch.equal(d[:, ~miss], x[~miss].expand(3, -1))


def test_importance_sampled_nll_is_below_the_elbo_and_converges():
    m = _model(DataSpec((1, 8, 8), "binary"), given="1").double().eval()
    torch.manual_seed(0)
    x = (torch.rand(8, 1, 8, 8) > 0.5).double()
    miss = paper_mask(1, 8, 8)
    lw = m.log_weights(x, 20000, mask=miss)  # (K, B)
    neg_elbo = -lw.mean(0)  # E_q[log w] is the conditional ELBO
    t = m.elbo_terms(x.repeat(2000, 1, 1, 1), mask=miss)  # 2000 one-sample ELBOs of each example
    torch.testing.assert_close(neg_elbo, (t["recon"] + t["kl"]).view(2000, 8).mean(0), atol=0.3, rtol=0.01)

    def nll(k):  # the estimate from k samples, averaged over 20000 / k independent sets
        return -(torch.logsumexp(lw.view(-1, k, 8), 1) - math.log(k)).mean(0)

    n1, n10, n100, n_all = nll(1), nll(10), nll(100), nll(20000)
    assert (n_all < neg_elbo - 0.05).all()  # strictly tighter here: q and the prior network differ
    assert (n10 <= n1 + 1e-9).all() and (n100 <= n10 + 1e-9).all() and (n_all <= n100 + 1e-9).all()
    assert ((n100 - n_all).abs() < (n1 - n_all).abs()).all()


def test_nothing_given_view_is_a_vae():
    m = _model()
    x = torch.rand(3, 1, 8, 8)
    mu, logvar = m.encode(x)
    assert mu.shape == (3, 4) and m.decode(mu).log_prob(x).shape == (3,)
    assert m.sample(2).shape == (2, 1, 8, 8) and m.reconstruct(x).shape == x.shape


# -- the command line -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("completion")
    vaekit.train("digits", model="completion", given="2", epochs=2, hidden=[32], latent_dim=4, iw_samples=10,
                 out=folder / "comp", progress=False)
    vaekit.train("digits", epochs=1, hidden=[16], latent_dim=2, out=folder / "vae", progress=False,
                 evaluate_test=False, figures=False)
    return folder


def test_training_writes_completion_strips_and_report(runs):
    d = runs / "comp"
    assert (d / "completions.png").exists() and not (d / "samples.png").exists()
    assert "Completions" in (d / "report.html").read_text()
    ev = json.loads((d / "evaluation.json").read_text())
    assert ev["nll"] <= -ev["elbo"] + 0.5


def test_cli_png_mask_and_npy_output(runs, tmp_path, capsys):
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255  # white = missing: the right half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, out, err = cli(capsys, "complete", runs / "comp", "--input", "0:3", "--mask", tmp_path / "mask.png",
                         "--n", 4, "--out", tmp_path / "strip.png", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["examples"] == 3 and res["missing_values"] == 3 * 32 and res["given_fraction"] == 0.5
    w, h = Image.open(tmp_path / "strip.png").size
    assert w > h  # one row per example: the input, 4 completions, the original
    test_x = load_run_data(read_config(runs / "comp")[0]).test.x[:2].numpy()
    np.save(tmp_path / "in.npy", test_x)
    code, out, _ = cli(capsys, "complete", runs / "comp", "--input", tmp_path / "in.npy", "--mask", "q1",
                       "--n", 3, "--out", tmp_path / "c.npy")
    c = np.load(tmp_path / "c.npy")
    given = ~named_mask("q1", (1, 8, 8)).numpy()
    assert code == 0 and c.shape == (3, 2, 1, 8, 8)
    assert np.array_equal(c[:, :, given], np.broadcast_to(test_x[:, given], (3, 2, int(given.sum()))))


@pytest.mark.parametrize("run, extra, msg", [
    ("vae", ["--mask", "q2"], "vaekit impute"),
    ("comp", ["--mask", "zeros.npy"], "nothing missing"),
    ("comp", ["--mask", "ones.npy"], "everything missing"),
    ("comp", ["--mask", "big.png"], "pixels"),
    ("comp", ["--mask", "wrong.npy"], "mask has shape"),
    ("comp", ["--mask", "q9"], "valid"),
    ("comp", [], "no --mask"),
    ("comp", ["--mask", "q2", "--out", "o.jpg"], "expected one of"),
    ("comp", ["--mask", "q2", "--n", "0"], "--n"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(runs, tmp_path, capsys, monkeypatch, run, extra, msg):
    monkeypatch.chdir(tmp_path)
    np.save("zeros.npy", np.zeros((1, 8, 8)))
    np.save("ones.npy", np.ones((1, 8, 8)))
    np.save("wrong.npy", np.ones((1, 9, 9)))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save("big.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    run_files = sorted(p.name for p in (runs / run).iterdir())
    out = [] if "--out" in extra else ["--out", "o.png"]
    code, _, err = cli(capsys, "complete", runs / run, "--input", "0", *extra, *out)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in (runs / run).iterdir()) == run_files
