"""The conditional VAE on labelled sequences (issue 20: "the same models must work as vae, iwae and cvae")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cli_helpers import cli
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.models import ModelConfig, build_model
from vaekit.models.sequence import SequenceCVAE


def ramps(n: int = 160, t: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of sequences (n, t, 1) that differ in shape: "up" rises, "down" falls (noise and
    a random level on top)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    ramp = np.arange(t) / (t - 1)
    x = np.where(y[:, None] == 0, ramp, 1 - ramp) * 2 + rng.normal(0, 0.2, (n, 1)) + 0.1 * rng.standard_normal((n, t))
    return x[..., None], np.where(y == 0, "up", "down")


def slope(x: np.ndarray) -> np.ndarray:
    """Mean of the last three steps minus mean of the first three, per sequence (n,)."""
    return x[:, -3:, 0].mean(1) - x[:, :3, 0].mean(1)


def model(t=12, d=1, classes=2, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(model="cvae", hidden=[16], latent_dim=3, **kw),
                       DataSpec((t, d), "continuous", classes))


# -- the model ---------------------------------------------------------------------------------------------
def test_sequence_cvae_is_built_for_labelled_sequences_and_reads_the_label():
    m = model(classes=3)
    assert isinstance(m, SequenceCVAE) and m.batch_fields == ("mask", "y") and m.config.arch == "gru"
    assert m.encoder.head.in_features == 2 * 16 + 3  # the summary and the one-hot label
    assert m.decoder.init.in_features == 3 + 3  # [z, one-hot label]
    assert isinstance(model(arch="lstm").decoder.rnn, torch.nn.LSTM)
    m.eval()
    x = torch.randn(4, 12, 1)
    mask = torch.ones_like(x)
    z = torch.randn(4, 3)
    a = m.log_likelihood(x, z, mask, y=torch.tensor([0, 0, 0, 0]))
    b = m.log_likelihood(x, z, mask, y=torch.tensor([1, 1, 1, 1]))
    assert not torch.allclose(a, b)  # the decoder is conditioned on y
    mu0, _ = m.encode(x, mask, y=torch.zeros(4, dtype=torch.long))
    mu1, _ = m.encode(x, mask, y=torch.ones(4, dtype=torch.long))
    assert not torch.allclose(mu0, mu1)  # and so is the encoder
    with pytest.raises(UsageError, match="conditional on class labels"):
        m.encode(x, mask)
    with pytest.raises(UsageError, match="class indices 0..2"):
        m.encode(x, mask, y=torch.tensor([0, 1, 2, 3]))
    # the unconditional models keep their networks
    v = build_model(ModelConfig(hidden=[16], latent_dim=3), DataSpec((12, 1), "continuous", 3))
    assert v.encoder.head.in_features == 32 and v.decoder.init.in_features == 3 and v.batch_fields == ("mask",)


def test_masked_likelihood_bound_and_conditional_prior():
    m = model(conditional_prior=True)
    x = torch.randn(5, 12, 1)
    mask = torch.ones_like(x)
    mask[0, 7:] = 0  # padding after step 7
    y = torch.tensor([0, 1, 0, 1, 1])
    x2 = x.clone()
    x2[0, 7:] = 99.0  # values under the padding never enter a loss
    torch.manual_seed(1)
    a = m.loss(x, mask=mask, y=y)
    torch.manual_seed(1)
    b = m.loss(x2, mask=mask, y=y)
    assert torch.allclose(a["loss"], b["loss"]) and math.isfinite(float(a["loss"].detach()))
    a["loss"].backward()
    assert m.prior_net is not None and m.prior_net[-1].weight.grad is not None  # p(z|y) is learned
    m.eval()
    torch.manual_seed(2)
    lw = m.log_weights(x, 64, mask=mask, y=y)
    elbo = -(lambda t: t["recon"] + t["kl"])(m.elbo_terms(x, mask=mask, y=y))
    assert lw.shape == (64, 5) and torch.isfinite(lw).all()
    iw = torch.logsumexp(lw, 0) - math.log(64)
    assert (iw >= lw.mean(0) - 1e-4).all()  # the k-sample bound is at least the mean log weight
    assert elbo.shape == (5,)
    s = m.sample(4, y=torch.tensor([0, 0, 1, 1]))
    assert s.shape == (4, 12, 1) and torch.isfinite(s).all()


def test_sequences_without_labels_refuse_cvae_in_one_line():
    with pytest.raises(UsageError, match="sentences \\(--tokens\\) have none"):
        build_model(ModelConfig(model="cvae"), DataSpec((12, 1), "tokens", vocab_size=10))
    with pytest.raises(UsageError, match="needs a class label per sequence.*an .npz with x"):
        build_model(ModelConfig(model="cvae"), DataSpec((12, 2), "continuous"))
    with pytest.raises(UsageError, match="at least two classes"):
        build_model(ModelConfig(model="cvae"), DataSpec((12, 2), "continuous", 1))


# -- end to end ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("seqcvae")
    x, y = ramps()
    np.savez(d / "train.npz", x=x, y=y)
    xt, yt = ramps(40, seed=1)
    np.savez(d / "test.npz", x=xt, y=yt)
    from vaekit.cli import main
    code = main(["train", "--data", str(d / "train.npz"), "--arch", "gru", "--model", "cvae", "--hidden", "16",
                 "--latent-dim", "2", "--epochs", "5", "--batch-size", "16", "--lr", "1e-2", "--out", str(d / "run"),
                 "--quiet", "--json"])
    assert code == 0
    return d


def test_cli_train_sequence_cvae_learns(cvae_run):
    run = cvae_run / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["model"] == "cvae" and cfg["spec"]["shape"] == [12, 1] and cfg["spec"]["num_classes"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"] + 5, [r["val_elbo"] for r in rows]
    assert (run / "report.html").exists()


def test_cli_sample_by_class_follows_the_label(cvae_run, capsys):
    run = cvae_run / "run"
    slopes = {}
    for label in ("up", "down"):
        out = cvae_run / f"{label}.npy"
        code, stdout, err = cli(capsys, "sample", run, "--label", label, "--n", "40", "--out", out, "--json")
        assert code == 0, err
        assert json.loads(stdout)["counts"] == {label: 40}
        s = np.load(out)
        assert s.shape == (40, 12, 1) and np.isfinite(s).all()
        slopes[label] = float(slope(s).mean())
    # in the data the ramps rise or fall by about 2; samples of each class follow their class
    assert slopes["up"] > 0.5 and slopes["down"] < -0.5, slopes
    code, stdout, err = cli(capsys, "sample", run, "--per-class", "3", "--out", cvae_run / "pc.npz", "--json")
    assert code == 0, err
    got = np.load(cvae_run / "pc.npz")
    assert got["x"].shape == (6, 12, 1) and got["y"].tolist() == [0, 0, 0, 1, 1, 1]
    assert list(got["classes"]) == ["down", "up"]


def test_encode_and_decode_under_labels(cvae_run, capsys):
    """Reconstructions under each sequence's own label beat those under the other label; embed,
    reconstruct, evaluate and detect take new labelled sequences."""
    from vaekit.apps.common import open_run, run_inputs
    from vaekit.apps.generate import reconstruct

    run = open_run(cvae_run / "run", device="cpu")
    s = run_inputs(run, str(cvae_run / "test.npz"))
    assert s.y is not None and len(s.y) == 40
    _, own = reconstruct(run.model, s)
    _, other = reconstruct(run.model, s.replace(y=1 - s.y))
    assert own["recon_nll"].mean() < other["recon_nll"].mean() - 5, (own["recon_nll"].mean(), other["recon_nll"].mean())
    for verb, extra in (("embed", ["--out", cvae_run / "z.csv", "--map", "none"]),
                        ("reconstruct", ["--out", cvae_run / "r.png"]),
                        ("detect", ["--out", cvae_run / "d.csv"])):
        code, stdout, err = cli(capsys, verb, run.dir, "--input", cvae_run / "test.npz", *extra, "--json")
        assert code == 0, (verb, err)
    assert len((cvae_run / "z.csv").read_text().splitlines()) == 41
    code, stdout, err = cli(capsys, "evaluate", run.dir, "--iw-samples", "8", "--json")
    assert code == 0, err
    assert math.isfinite(json.loads(stdout)["nll"])
    np.savez(cvae_run / "nolabels.npz", x=ramps(5)[0])  # a conditional run needs the labels
    code, _, err = cli(capsys, "embed", run.dir, "--input", cvae_run / "nolabels.npz", "--out", cvae_run / "z2.csv")
    assert code == 2 and "conditional on class labels" in err and len(err.strip().splitlines()) == 1
    assert not (cvae_run / "z2.csv").exists()


def test_cli_cvae_on_a_series_or_text_exits_2_and_writes_nothing(tmp_path, capsys):
    np.save(tmp_path / "series.npy", np.sin(np.arange(400) / 5.0))
    (tmp_path / "s.txt").write_text("the cat sat\nthe dog ran\n" * 10)
    np.savez(tmp_path / "nolabels.npz", x=ramps(20)[0])
    for argv, match in ((["--data", tmp_path / "series.npy", "--window", "16"], "windows of a series"),
                        (["--data", tmp_path / "s.txt", "--tokens", "word"], "sentences (--tokens) have none"),
                        (["--data", tmp_path / "nolabels.npz", "--arch", "gru"], "labels y (N,)")):
        code, _, err = cli(capsys, "train", *argv, "--model", "cvae", "--epochs", "1", "--out", tmp_path / "r")
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
