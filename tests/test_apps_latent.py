"""Generate, reconstruct, interpolate, traverse, edit, embed and the HTML report: Python API."""

import numpy as np
import pytest
import torch

import vaekit
from vaekit.apps.common import open_run, run_inputs, to_original_units, write_examples
from vaekit.apps.generate import reconstruct, sample
from vaekit.apps.latent import attribute_vector, edit, embed, interpolate, map_2d, most_active_dims, slerp, traverse
from vaekit.apps.report_html import build_report
from vaekit.errors import UsageError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("apps") / "digits"
    vaekit.train("digits", out=out, epochs=25, hidden=[64], latent_dim=4, batch_size=64, progress=False,
                 figures=False)
    return open_run(out, device="cpu")


@pytest.fixture(scope="module")
def test_split(run):
    return run_inputs(run, None)


def test_sample_is_seeded_and_shaped(run):
    a = sample(run.model, 10, seed=3)
    b = sample(run.model, 10, seed=3)
    c = sample(run.model, 10, seed=4)
    assert a.shape == (10, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= a.min() and a.max() <= 1
    drawn = sample(run.model, 5, seed=0, mean=False)
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}  # Bernoulli draws


def test_low_temperature_samples_are_closer_to_the_prior_mean_image(run):
    centre = run.model.decode_mean(torch.zeros(1, run.model.latent_dim))
    near = (sample(run.model, 200, temperature=0.1) - centre).pow(2).mean()
    far = (sample(run.model, 200, temperature=1.0) - centre).pow(2).mean()
    assert near < 0.25 * far


def test_sample_rejects_bad_values(run):
    with pytest.raises(UsageError):
        sample(run.model, 0)
    with pytest.raises(UsageError):
        sample(run.model, 3, temperature=0.0)


def test_reconstruct_errors_match_the_likelihood(run, test_split):
    x = test_split.x[:20]
    x_hat, err = reconstruct(run.model, x, batch_size=7)  # batching must not change anything
    with torch.no_grad():
        mu, _ = run.model.encode(x)
        expected = -run.model.likelihood.log_prob(run.model.decoder(mu), x)
    assert x_hat.shape == x.shape
    torch.testing.assert_close(err["recon_nll"], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(err["sq_error"], (x_hat - x).pow(2).flatten(1).mean(1))


def test_interpolation_ends_at_the_reconstructions(run, test_split):
    x = test_split.x[:2]
    with torch.no_grad():
        rec = run.model.reconstruct(x)
    for method in ("linear", "slerp"):
        frames = interpolate(run.model, x[0], x[1], steps=7, method=method)
        assert frames.shape == (7, 1, 8, 8)
        torch.testing.assert_close(frames[0], rec[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(frames[-1], rec[1], atol=1e-5, rtol=1e-5)
        assert (frames[1:] - frames[:-1]).abs().sum() > 0
    with pytest.raises(UsageError):
        interpolate(run.model, x[0], x[1], steps=1)
    with pytest.raises(UsageError):
        interpolate(run.model, x[0], x[1], method="cubic")


def test_slerp_follows_the_great_circle():
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    t = torch.linspace(0, 1, 5)
    z = slerp(a, b, t)
    torch.testing.assert_close(z[0], a)
    torch.testing.assert_close(z[-1], b)
    torch.testing.assert_close(z.norm(dim=1), 2 + 2 * t)  # norms interpolate linearly
    angles = torch.atan2(z[:, 1], z[:, 0])
    torch.testing.assert_close(angles, t * torch.pi / 2)  # constant angular speed
    torch.testing.assert_close(slerp(a, 3 * a, t), (1 - t[:, None]) * a + t[:, None] * 3 * a)  # parallel: linear


def test_traverse_moves_only_the_swept_dimension(run):
    frames = traverse(run.model, [0, 2], span=2.0, steps=5)
    assert frames.shape == (2, 5, 1, 8, 8)
    # re-encoding is not exact, but the sweep must change the output monotonically in its own row
    assert (frames[0, 0] - frames[0, -1]).abs().sum() > 0
    base = torch.full((run.model.latent_dim,), 0.5)
    held = traverse(run.model, [1], base=base, steps=3)
    z = base.repeat(3, 1)
    z[:, 1] = torch.tensor([-3.0, 0.0, 3.0])
    torch.testing.assert_close(held[0], run.model.decode_mean(z).detach())
    with pytest.raises(UsageError, match="out of range"):
        traverse(run.model, [run.model.latent_dim])


def test_most_active_dims_orders_by_kl():
    assert most_active_dims([0.1, 3.0, 0.0, 1.0], 2) == [1, 3]


def test_attribute_vector_is_the_class_mean_difference():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0], [10.0, 10.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(attribute_vector(z, y, 1, source=0), torch.tensor([-1.0, 5.0]))
    torch.testing.assert_close(attribute_vector(z, y, 1), torch.tensor([0.0, 5.0]) - z[[0, 1, 4]].mean(0))
    with pytest.raises(vaekit.VaekitError):
        attribute_vector(z, y, 7)


def test_edit_moves_the_latent_toward_the_target_class(run, test_split):
    train = run_inputs(run, None, split="train")
    z, _ = embed(run.model, train.x)
    x, own = test_split.x[:1], int(test_split.y[0])
    target = (own + 1) % 10
    vec = attribute_vector(z, train.y, target, source=own)
    frames = edit(run.model, x, vec, [0.0, 1.0])
    torch.testing.assert_close(frames[0], run.model.reconstruct(x)[0].detach())
    centre = z[train.y == target].mean(0)
    before, after = (embed(run.model, f[None])[0][0] for f in frames)
    assert (after - centre).norm() < (before - centre).norm()


def test_embed_batches_and_variances(run, test_split):
    mu, var = embed(run.model, test_split.x, batch_size=13)
    mu2, _ = embed(run.model, test_split.x)
    assert mu.shape == (len(test_split.x), run.model.latent_dim) and (var > 0).all()
    torch.testing.assert_close(mu, mu2)


def test_map_2d_methods():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 5))
    z[:, 0] *= 10
    pca, label = map_2d(z)
    assert pca.shape == (60, 2) and "PCA" in label
    assert abs(np.corrcoef(pca[:, 0], z[:, 0])[0, 1]) > 0.95  # the first axis is the big direction
    from sklearn.decomposition import PCA

    ref = PCA(n_components=2).fit(z)
    assert np.allclose(np.abs(pca), np.abs(ref.transform(z)), atol=1e-8)  # the same projection, up to sign
    assert f"{100 * ref.explained_variance_ratio_.sum():.0f}% of variance" in label
    assert np.allclose(map_2d(-z)[0], -map_2d(z)[0])  # axes signed by their loadings, not by the data
    one, _ = map_2d(z[:1])  # a single example is a point at the origin, not an error
    assert one.shape == (1, 2) and np.allclose(one, 0)
    assert map_2d(z, method="tsne")[0].shape == (60, 2)
    assert map_2d(z[:, :1])[0].shape == (60, 2)
    with pytest.raises(UsageError):
        map_2d(z, method="umap")


def test_report_is_one_self_contained_page(run, test_split, tmp_path):
    out = build_report(run, test_split, out=tmp_path / "r.html")
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert page.count("data:image/png;base64,") >= 6  # curves, recon, samples, map, interpolation, histogram
    assert "src=\"http" not in page and "test -ELBO" in page


def test_tables_are_written_back_in_original_units(tmp_path):
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(1000, 50, 300), rng.normal(-3, 0.1, 300), rng.normal(0, 1, 300)])
    csv = tmp_path / "t.csv"
    np.savetxt(csv, data, delimiter=",", header="price,temp,z", comments="")
    vaekit.train(str(csv), out=tmp_path / "run", epochs=40, hidden=[32], latent_dim=2, progress=False, figures=False)
    r = open_run(tmp_path / "run", device="cpu")
    x = sample(r.model, 400, mean=False)
    back = to_original_units(x, r.source)
    assert abs(back[:, 0].mean() - 1000) < 25 and abs(back[:, 1].mean() + 3) < 0.05
    write_examples(tmp_path / "s.csv", x, r.spec, r.source)
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "price,temp,z" and len(lines) == 401
    np.testing.assert_allclose(np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1), back, rtol=1e-6)
    with pytest.raises(UsageError, match="image"):
        write_examples(tmp_path / "s.png", x, r.spec, r.source)
    assert not (tmp_path / "s.png").exists()


def test_score_histogram_leaves_out_non_finite_scores(tmp_path):
    # a model whose ELBO overflowed for some examples (NaN / inf scores) crashed the report's
    # histogram at the end of training (numpy: "autodetected range of [nan, nan] is not finite")
    from vaekit.apps.report_html import _score_histogram

    scores = np.array([1.0, 2.0, np.nan, 3.0, np.inf, 2.5])
    labels = np.array([0, 1, 0, 1, 0, 1])
    out = _score_histogram(tmp_path / "h.png", scores, labels, ["a", "b"])
    assert out is not None and out.stat().st_size > 1000
    assert _score_histogram(tmp_path / "none.png", np.full(4, np.nan), None, []) is None
    assert not (tmp_path / "none.png").exists()
