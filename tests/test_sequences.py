"""Series data, the recurrent VAE/IWAE and stream anomaly detection (issue 20)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cli_helpers import cli
from vaekit.apps.stream import point_adjust, point_scores, pot_threshold, stream_metrics
from vaekit.data.datasets import load_data
from vaekit.data.sequences import (apply_scaler, cut_windows, fit_scaler, read_labels, read_series, window_starts)
from vaekit.data.spec import DataSpec
from vaekit.errors import DataError, UsageError
from vaekit.models import ModelConfig, build_model
from vaekit.models.sequence import SequenceIWAE, SequenceVAE


def sines(n: int = 1500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack([np.sin(t / 8.0), np.cos(t / 13.0) + 0.05 * rng.standard_normal(n)], 1)


def write_csv(path, x, labels=None, time=True):
    cols = (["timestamp"] if time else []) + ["cpu", "mem"] + (["label"] if labels is not None else [])
    lines = [",".join(cols)]
    for i, r in enumerate(x):
        cells = ([f"2024-01-01 00:{i:05d}"] if time else []) + ["" if np.isnan(v) else repr(float(v)) for v in r]
        if labels is not None:
            cells.append(str(int(labels[i])))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


# -- reading ------------------------------------------------------------------------------------------
def test_csv_series_with_time_label_and_missing_cells(tmp_path):
    x = sines(50)
    x[3, 0] = np.nan
    lab = np.zeros(50, int)
    lab[10:12] = 1
    s = read_series(write_csv(tmp_path / "s.csv", x, lab))
    assert s.columns == ["cpu", "mem"] and s.values.shape == (50, 2)
    assert np.isnan(s.values[3, 0]) and np.allclose(np.nan_to_num(s.values), np.nan_to_num(x))
    assert s.index[0] == "2024-01-01 00:00000" and s.labels.tolist() == lab.tolist()
    s2 = read_series(write_csv(tmp_path / "n.csv", x, time=False))
    assert s2.index is None and s2.labels is None and s2.values.shape == (50, 2)


def test_npy_series_shapes(tmp_path):
    np.save(tmp_path / "one.npy", np.arange(10.0))
    assert read_series(tmp_path / "one.npy").values.shape == (10, 1)
    np.save(tmp_path / "bad.npy", np.zeros((4, 5, 6)))
    with pytest.raises(DataError, match=r"\(T,\) or \(T, D\)"):
        read_series(tmp_path / "bad.npy")


def test_a_text_column_is_named(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,x\n2,y\n")
    with pytest.raises(DataError, match="column 'b' is not numeric"):
        read_series(p)


def test_labels_files(tmp_path):
    np.save(tmp_path / "l.npy", np.array([0, 1, 0, 2]))
    assert read_labels(tmp_path / "l.npy", 4).tolist() == [0, 1, 0, 1]
    with pytest.raises(DataError, match="4 labels but the series has 5 rows"):
        read_labels(tmp_path / "l.npy", 5)


def test_windows_cover_every_row_and_carry_the_mask():
    v = np.arange(20.0).reshape(10, 2)
    v[4, 1] = np.nan
    x, m, starts = cut_windows(v, 4, 3)
    assert starts.tolist() == [0, 3, 6]  # 6 = the window ending on the last row (the stride stops at 3)
    assert x.shape == (3, 4, 2) and torch.equal(x[1, :, 0], torch.tensor([6.0, 8, 10, 12]))
    assert m[1, 1, 1] == 0 and x[1, 1, 1] == 0 and m.sum() == 3 * 8 - 1
    assert window_starts(3, 4, 1).tolist() == []


def test_scaler_ignores_missing_and_constant_channels():
    v = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0]])
    sc = fit_scaler(v)
    assert sc["mean"] == [2.0, 5.0] and sc["std"] == [1.0, 1.0]
    assert np.allclose(apply_scaler(v, sc)[:2, 0], [-1, 1])


def test_load_data_splits_in_time_and_masks_known_anomalies(tmp_path):
    x = sines(1000)
    x[900:] += 100.0  # test rows far off: they must not move the scaler
    lab = np.zeros(1000, int)
    lab[100:110] = 1
    d = load_data(str(write_csv(tmp_path / "s.csv", x, lab)), window=20, stride=5)
    assert d.spec == DataSpec((20, 2), "continuous")
    assert d.source["split_rows"] == {"train": 800, "val": 100, "test": 100}
    assert abs(np.mean(d.source["scaler"]["mean"]) - np.mean(x[:800].mean(0))) < 1e-9
    # every training window lies inside the first 800 rows: the last ends on row 799
    last = torch.as_tensor(apply_scaler(x[780:800], d.source["scaler"]), dtype=torch.float32)
    assert torch.allclose(d.train.x[-1], last, atol=1e-5)
    # the labelled rows 100..109 are masked out of the training windows
    w = d.train.mask[20]  # the window starting at row 100
    assert w.sum() == (20 - 10) * 2 and w[:10].sum() == 0
    assert d.test.x.abs().mean() > 20  # scaled by the training statistics
    kept = load_data(str(tmp_path / "s.csv"), window=20, stride=5, mask_anomalies=False)
    assert kept.train.mask[20].sum() == 40  # --mask-anomalies off: the labelled rows are trained on


@pytest.mark.parametrize("argv,match", [
    ({"window": 0}, "--window must be a positive integer"),
    ({"window": 5000}, "fewer than one window of 5000"),
    ({"window": 10, "stride": 0}, "--stride must be a positive integer"),
])
def test_bad_windows(tmp_path, argv, match):
    p = write_csv(tmp_path / "s.csv", sines(300))
    with pytest.raises((UsageError, DataError), match=match):
        load_data(str(p), **argv)


def test_nan_only_rows_do_not_count_toward_a_window(tmp_path):
    x = sines(30)
    x[5:] = np.nan
    with pytest.raises(DataError, match="5 rows with values .* fewer than one window of 10"):
        load_data(str(write_csv(tmp_path / "s.csv", x)), window=10)


# -- the model ----------------------------------------------------------------------------------------
def model(kind="vae", d=2, t=16, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(model=kind, hidden=[16], latent_dim=3, **kw), DataSpec((t, d), "continuous"))


def test_sequence_data_build_recurrent_models_and_other_data_refuse_them():
    m = model()
    assert isinstance(m, SequenceVAE) and m.config.arch == "gru"
    assert isinstance(model("iwae", k=4), SequenceIWAE)
    assert isinstance(model(arch="lstm").encoder.rnn, torch.nn.LSTM)
    with pytest.raises(UsageError, match="--arch gru is for sequences"):
        build_model(ModelConfig(arch="gru"), DataSpec((784,), "8bit"))
    with pytest.raises(UsageError, match="does not take sequences"):
        build_model(ModelConfig(model="aae"), DataSpec((16, 2), "continuous"))
    with pytest.raises(UsageError, match="--word-dropout must be in"):
        model(word_dropout=1.0)


def test_missing_values_never_enter_the_likelihood():
    m = model().eval()
    x = torch.randn(4, 16, 2)
    mask = torch.ones_like(x)
    mask[:, 5:9, 0] = 0
    z = torch.randn(4, 3)
    lp = m.log_likelihood(x, z, mask)
    x2 = x.clone()
    x2[:, 5:9, 0] = 1e3  # whatever sits where the values are missing
    assert torch.allclose(m.log_likelihood(x2, z, mask), lp)
    assert not torch.allclose(m.log_likelihood(x2, z), lp)


def test_the_decoder_is_causal():
    """Step t's distribution depends on x_<t only (teacher forcing shifts the inputs by one)."""
    m = model().eval()
    x = torch.randn(2, 16, 2)
    z = torch.randn(2, 3)
    p = m.decoder(z, x)
    x2 = x.clone()
    x2[:, 7] += 5.0
    p2 = m.decoder(z, x2)
    assert torch.allclose(p[:, :, :8], p2[:, :, :8]) and not torch.allclose(p[:, :, 8:], p2[:, :, 8:])


def test_word_dropout_only_while_training():
    m = model(word_dropout=0.5)
    x, z = torch.randn(3, 16, 2), torch.randn(3, 3)
    m.eval()
    assert torch.equal(m.decoder(z, x), m.decoder(z, x))
    m.train()
    torch.manual_seed(1)
    a = m.decoder(z, x)
    torch.manual_seed(2)
    assert not torch.allclose(a, m.decoder(z, x))


def test_iwae_bound_is_tighter_than_the_elbo_and_every_part_learns():
    m = model("iwae", k=20)
    x = torch.randn(8, 16, 2)
    mask = (torch.rand_like(x) > 0.2).float()
    out = m.loss(x, mask=mask)
    assert out["iwae"] >= out["elbo"]
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_generation_and_reconstruction_shapes():
    m = model().eval()
    assert m.sample(5).shape == (5, 16, 2)
    assert m.reconstruct(torch.randn(3, 16, 2)).shape == (3, 16, 2)
    assert m.log_weights(torch.randn(3, 16, 2), 7).shape == (7, 3)


def test_injected_missing_values_only_while_training():
    m = model(inject_missing=0.5)
    x = torch.randn(64, 16, 2)
    m.train()
    keep = m._training_mask(x, None)
    assert 0.4 < float(keep.mean()) < 0.6 and set(keep.unique().tolist()) == {0.0, 1.0}
    m.eval()
    assert m._training_mask(x, None) is None
    with pytest.raises(UsageError, match="--inject-missing marks values of a series"):
        build_model(ModelConfig(inject_missing=0.1), DataSpec((784,), "8bit"))


def test_padding_is_not_read_by_the_encoder():
    """A sequence padded to T encodes exactly as the same sequence alone (the encoder stops at its
    last observed step, in both directions)."""
    m = model(t=16).eval()
    x = torch.randn(1, 16, 2)
    mask = torch.ones_like(x)
    mask[:, 10:] = 0
    mu, logvar = m.encode(x, mask)
    x2 = x.clone()
    x2[:, 10:] = 7.0
    mu2, _ = m.encode(x2, mask)
    short = model(t=10).eval()
    short.load_state_dict(m.state_dict())
    mu3, _ = short.encode(x[:, :10], torch.ones(1, 10, 2))
    assert torch.allclose(mu, mu2) and torch.allclose(mu, mu3, atol=1e-6)


def test_npz_of_variable_length_sequences(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 12, 3)) * 4 + 1
    lengths = rng.integers(3, 13, 50)
    y = rng.integers(0, 2, 50)
    np.savez(tmp_path / "seq.npz", x=x, lengths=lengths, y=y)
    d = load_data(str(tmp_path / "seq.npz"), sequences=True, seed=0)
    assert d.spec.shape == (12, 3) and d.spec.kind == "continuous" and d.spec.num_classes == 2
    assert len(d.train) + len(d.val) + len(d.test) == 50 and d.train.y is not None
    steps = d.train.mask[:, :, 0].sum(1)  # observed steps per training sequence = its length
    assert set(steps.tolist()) <= set(lengths.tolist()) and (d.train.x[d.train.mask == 0] == 0).all()
    np.savez(tmp_path / "bad.npz", x=x, lengths=np.full(50, 13))
    with pytest.raises(DataError, match="outside 1..12"):
        load_data(str(tmp_path / "bad.npz"), sequences=True)


# -- stream metrics ------------------------------------------------------------------------------------
def test_point_scores_take_the_window_ending_on_each_row():
    steps = np.arange(12.0).reshape(3, 4)  # windows at 0, 1, 2 of width 4 over 6 rows
    s = point_scores(steps, np.array([0, 1, 2]), 6, 4)
    # rows 0..3 from window 0 (rows 0-2 before any window ends; row 3 ends it), row 4 from window 1's last, row 5 window 2's
    assert s.tolist() == [0, 1, 2, 3, 7, 11]


def test_point_adjustment_and_metrics():
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    flags = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 1], bool)
    assert point_adjust(flags, labels).astype(int).tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    scores = np.array([0, 5, 6, 5, 1, 0, 4, 4, 0, 0.5])
    m = stream_metrics(scores, flags, labels)
    assert m["precision"] == 0.5 and m["recall"] == 0.2
    assert math.isclose(m["f1_point_adjusted"], 2 * 0.75 * 0.6 / 1.35)
    assert m["auroc"] == 1.0 and m["auc_pr"] == 1.0 and m["best_f1"] == 1.0


def test_pot_threshold_is_a_far_quantile_of_the_reference():
    rng = np.random.default_rng(0)
    ref = rng.exponential(size=20000)
    t = pot_threshold(ref, risk=1e-3)
    assert abs(t - math.log(1000)) < 0.6  # the exponential's 0.999 quantile is ln 1000 = 6.9


# -- end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("series")
    x = sines(2400)
    x[300:304, 0] = np.nan
    csv = write_csv(d / "train.csv", x)
    code = None
    from vaekit.cli import main
    code = main(["train", "--data", str(csv), "--window", "24", "--stride", "2", "--arch", "gru", "--hidden", "24",
                 "--latent-dim", "4", "--epochs", "8", "--lr", "3e-3", "--out", str(d / "run"), "--quiet", "--json"])
    assert code == 0
    test = sines(800, seed=1)
    labels = np.zeros(800, int)
    test[400:415, 0] += 2.5
    labels[400:415] = 1
    test[600:610, 1] = -3.0
    labels[600:610] = 1
    test[100:103, 1] = np.nan
    np.save(d / "test.npy", test)
    np.save(d / "labels.npy", labels)
    write_csv(d / "test.csv", test, labels)
    return d


def test_cli_train_a_series_run(series_run):
    cfg = json.loads((series_run / "run" / "config.json").read_text())
    assert cfg["model"]["arch"] == "gru" and cfg["source"]["kind_of_source"] == "series"
    assert cfg["source"]["window"] == 24 and cfg["spec"]["shape"] == [24, 2]
    rows = [json.loads(line) for line in (series_run / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_elbo"] > rows[0]["val_elbo"]
    assert (series_run / "run" / "report.html").exists()


def test_cli_detect_scores_every_step_and_finds_the_anomalies(series_run, capsys):
    out = series_run / "scores.csv"
    code, stdout, err = cli(capsys, "detect", series_run / "run", "--input", series_run / "test.npy", "--labels",
                            series_run / "labels.npy", "--out", out, "--json")
    assert code == 0, err
    res = json.loads(stdout)
    for key in ("auc_pr", "auroc", "f1", "f1_point_adjusted", "best_f1", "threshold"):
        assert key in res
    assert res["auroc"] > 0.9 and res["auc_pr"] > 0.5, res
    lines = out.read_text().splitlines()
    assert lines[0] == "index,score,flag,threshold,label" and len(lines) == 801
    assert out.with_suffix(".png").exists()
    # a CSV with a time column and a label column: timestamps in the output, labels read from the file
    code, stdout, err = cli(capsys, "detect", series_run / "run", "--input", series_run / "test.csv", "--out",
                            series_run / "s2.csv", "--threshold", "pot", "--mcmc", "3", "--json")
    assert code == 0, err
    res2 = json.loads(stdout)
    assert res2["threshold_method"] == "pot" and res2["auroc"] > 0.9
    assert (series_run / "s2.csv").read_text().splitlines()[1].startswith("2024-01-01 00:00000,")


def test_cli_train_npz_sequences_with_an_lstm(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = np.arange(20)
    x = np.sin(t[None, :] / 3.0 + rng.uniform(0, 6, (120, 1)))[..., None]
    np.savez(tmp_path / "s.npz", x=x, lengths=rng.integers(8, 21, 120))
    code, out, err = cli(capsys, "train", "--data", tmp_path / "s.npz", "--arch", "lstm", "--hidden", "16",
                         "--latent-dim", "3", "--epochs", "2", "--out", tmp_path / "run", "--quiet", "--json")
    assert code == 0, err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["spec"]["shape"] == [20, 1] and cfg["source"]["variable_length"] is True
    assert math.isfinite(json.loads(out)["test"]["elbo"])


@pytest.mark.parametrize("argv,match", [
    (["--window", "99999"], "fewer than one window of 99999"),
    (["--window", "10", "--arch", "conv"], "take --arch gru | lstm"),
    (["--window", "10", "--model", "vaegan"], "does not take sequences"),
])
def test_cli_train_bad_input_exits_2_and_writes_nothing(series_run, tmp_path, capsys, argv, match):
    code, _, err = cli(capsys, "train", "--data", series_run / "train.csv", *argv, "--epochs", "1",
                       "--out", tmp_path / "r")
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_cli_detect_bad_input(series_run, tmp_path, capsys):
    p = tmp_path / "three.csv"
    p.write_text("a,b,c\n1,2,3\n" * 1)
    code, _, err = cli(capsys, "detect", series_run / "run", "--input", p, "--out", tmp_path / "o.csv")
    assert code == 2 and "3 value columns but the run was trained on 2" in err and not (tmp_path / "o.csv").exists()
    code, _, err = cli(capsys, "train", "--data", "digits", "--epochs", "1", "--hidden", "16", "--out", tmp_path / "d",
                       "--quiet")
    assert code == 0
    code, _, err = cli(capsys, "detect", tmp_path / "d", "--input", series_run / "test.npy", "--labels",
                       series_run / "labels.npy", "--out", tmp_path / "o.csv")
    assert code == 2 and "--labels" in err and "trained on a series" in err and not (tmp_path / "o.csv").exists()


# -- sentences -------------------------------------------------------------------------------------------
SENTENCES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the mat is red",
             "the log is brown", "a red cat", "a brown dog sat"]


def write_text(path, reps=40, extra=()):
    path.write_text("\n".join(list(SENTENCES) * reps + list(extra)) + "\n\n")
    return path


def test_text_vocabulary_from_the_training_split_with_unk_and_eos(tmp_path):
    from vaekit.data.text import EOS, UNK, ids_to_text

    d = load_data(str(write_text(tmp_path / "s.txt")), tokens="word", seed=0)
    vocab = d.source["vocab"]
    assert vocab[:3] == ["<pad>", UNK, EOS] and vocab[3] == "the" and d.spec.kind == "tokens"
    assert d.spec.shape == (7, 1) and d.spec.vocab_size == len(vocab)  # the longest sentence (6 words) + <eos>
    assert set(ids_to_text(d.train.x, d.train.mask, vocab, "word")) <= set(SENTENCES)
    # each sentence's mask covers its words and <eos>, not the padding
    assert sorted({int(v) for v in d.train.mask.sum((1, 2))}) == sorted({len(s.split()) + 1 for s in SENTENCES})
    small = load_data(str(tmp_path / "s.txt"), tokens="word", vocab_size=6)
    assert len(small.source["vocab"]) == 6 and (small.train.x == 1).any()  # rarer words became <unk>
    chars = load_data(str(tmp_path / "s.txt"), tokens="char")
    assert " " in chars.source["vocab"] and chars.spec.shape == (len("the dog sat on the log") + 1, 1)


@pytest.mark.parametrize("text,kw,match", [
    ("\n\n  \n", {"tokens": "word"}, "has no lines of text"),
    ("1,2,3\n4,5,6\n7,8,9\n", {"tokens": "word"}, "holds numbers, not sentences"),
    ("a b\n", {"tokens": "byte"}, "--tokens must be one of char, word"),
    ("a b\n", {"tokens": "word", "vocab_size": 2}, "--vocab-size must be more than 3"),
])
def test_text_bad_input(tmp_path, text, kw, match):
    p = tmp_path / "t.txt"
    p.write_text(text)
    with pytest.raises((UsageError, DataError), match=match):
        load_data(str(p), **kw)


def test_padding_and_eos_in_the_token_likelihood():
    """Tokens past a sentence's end change nothing; the likelihood is categorical over the vocabulary."""
    spec = DataSpec((6, 1), "tokens", vocab_size=9)
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[16], latent_dim=3), spec).eval()
    assert m.config.likelihood == "categorical" and m.likelihood.num_params == 9
    x = torch.tensor([[3.0, 4, 5, 2, 0, 0]])[..., None]
    mask = torch.tensor([[1.0, 1, 1, 1, 0, 0]])[..., None]
    z = torch.randn(1, 3)
    lp = m.log_likelihood(x, z, mask)
    x2 = x.clone()
    x2[0, 4:] = 7.0
    assert torch.allclose(m.log_likelihood(x2, z, mask), lp) and lp < 0
    params = m.decoder(z, x, mask)  # (1, V, T, 1): the log-probabilities of each step sum to 1 over V
    assert torch.allclose(torch.logsumexp(torch.log_softmax(params, 1), 1), torch.zeros(1, 6, 1), atol=1e-5)


def test_token_likelihood_at_observed_steps_only_equals_the_full_softmax():
    """The output layer runs at the observed tokens only: the same log p(x|z) and gradients as
    scoring every padded step and masking afterwards."""
    spec = DataSpec((7, 1), "tokens", vocab_size=11)
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=[16], latent_dim=3), spec)
    x = torch.randint(3, 11, (4, 7, 1)).float()
    lengths = torch.tensor([7, 3, 1, 5])
    mask = (torch.arange(7)[None] < lengths[:, None]).float()[..., None]
    z = torch.randn(4, 3)
    fast = m._teacher_log_px(z, x, mask)
    full = m._log_px(m.decoder(z, x, mask), x, mask)
    assert torch.allclose(fast, full, atol=1e-5)
    g_fast = torch.autograd.grad(fast.sum(), m.decoder.out.weight)[0]
    g_full = torch.autograd.grad(m._log_px(m.decoder(z, x, mask), x, mask).sum(), m.decoder.out.weight)[0]
    assert torch.allclose(g_fast, g_full, atol=1e-5)
    # and the k-sample weights use it too: the IWAE bound of the same model is unchanged
    m.eval()
    torch.manual_seed(1)
    lw = m.log_weights(x, 5, mask=mask)
    assert lw.shape == (5, 4) and torch.isfinite(lw).all()


def test_cli_text_train_sample_evaluate(tmp_path, capsys):
    data = write_text(tmp_path / "s.txt")
    code, out, err = cli(capsys, "train", "--data", data, "--tokens", "word", "--arch", "gru", "--hidden", "32",
                         "--latent-dim", "4", "--epochs", "30", "--batch-size", "16", "--lr", "3e-3", "--word-dropout", "0.2",
                         "--out", tmp_path / "run", "--quiet", "--json")
    assert code == 0, err
    code, out, err = cli(capsys, "sample", tmp_path / "run", "--n", "20", "--temperature", "0.5", "--json")
    assert code == 0, err
    sents = json.loads(out)["sentences"]
    vocab = set(" ".join(SENTENCES).split())
    assert len(sents) == 20 and all(set(s.split()) <= vocab for s in sents)
    assert sum(s in SENTENCES for s in sents) >= 5, sents  # it learned the training sentences
    code, out, err = cli(capsys, "evaluate", tmp_path / "run", "--iw-samples", "20", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["perplexity_from"] == "nll" and 1 < res["perplexity"] < 4, res  # 7 sentences: far below the vocabulary's 20
    assert math.isclose(res["perplexity"], math.exp(res["nll"] * res["n"] / res["tokens"]), rel_tol=1e-9)
    code, out, err = cli(capsys, "interpolate", tmp_path / "run", "--from", "the cat sat on the mat", "--to", "3",
                         "--steps", "5", "--out", tmp_path / "i.txt", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["from"] == "the cat sat on the mat" and len(res["sentences"]) == 5
    assert (tmp_path / "i.txt").read_text().splitlines() == res["sentences"]
    code, _, err = cli(capsys, "train", "--data", data, "--tokens", "word", "--window", "4", "--out", tmp_path / "x")
    assert code == 2 and "give one of them" in err and not (tmp_path / "x").exists()


def test_cli_embed_reconstruct_and_detect_take_new_series_and_sentences(series_run, tmp_path, capsys):
    """--input on a series run reads a series file cut into the run's windows with its scaler; on a
    text run a text file coded with its vocabulary."""
    run = series_run / "run"
    code, out, err = cli(capsys, "embed", run, "--input", series_run / "test.csv", "--out", tmp_path / "z.csv",
                         "--map", "none", "--json")
    assert code == 0, err
    n = json.loads(out)["n"]
    # 800 rows, window 24, stride 2: every second start plus one ending on the last row
    assert n == len(range(0, 800 - 24 + 1, 2)) + (1 if (800 - 24) % 2 else 0)
    code, out, err = cli(capsys, "reconstruct", run, "--input", series_run / "test.npy", "--n", "4",
                         "--out", tmp_path / "r.png", "--json")
    assert code == 0, err
    np.save(tmp_path / "three.npy", sines(100, seed=0)[:, :1])  # one channel, the run has two
    code, _, err = cli(capsys, "embed", run, "--input", tmp_path / "three.npy", "--out", tmp_path / "z2.csv")
    assert code == 2 and "channels" in err and not (tmp_path / "z2.csv").exists()

    data = write_text(tmp_path / "s.txt", reps=4)
    code, out, err = cli(capsys, "train", "--data", data, "--tokens", "word", "--arch", "gru", "--hidden", "16",
                         "--latent-dim", "3", "--epochs", "1", "--out", tmp_path / "trun", "--quiet")
    assert code == 0, err
    new = tmp_path / "new.txt"
    new.write_text("the cat sat on the mat\na zebra ran\n")
    code, out, err = cli(capsys, "embed", tmp_path / "trun", "--input", new, "--out", tmp_path / "t.csv",
                         "--map", "none", "--json")
    assert code == 0 and json.loads(out)["n"] == 2, err
    code, out, err = cli(capsys, "detect", tmp_path / "trun", "--input", new, "--out", tmp_path / "d.csv", "--json")
    assert code == 0, err
    assert len(np.loadtxt(tmp_path / "d.csv", delimiter=",", skiprows=1, usecols=1, ndmin=1)) == 2


def test_cli_impute_fills_the_gaps_of_a_series(series_run, capsys):
    """Missing values of a test series are filled close to the truth (far closer than the channel
    mean would be); observed values are kept exactly; timestamps carried over."""
    truth = sines(600, seed=3)
    holed = truth.copy()
    rng = np.random.default_rng(0)
    holes = rng.choice(np.arange(30, 600), 40, replace=False)
    holed[holes, 0] = np.nan
    holed[200:206, 1] = np.nan
    src = write_csv(series_run / "holed.csv", holed)
    out = series_run / "filled.csv"
    code, stdout, err = cli(capsys, "impute", series_run / "run", "--input", src, "--out", out, "--iters", "5", "--json")
    assert code == 0, err
    assert json.loads(stdout)["missing"] == 46
    lines = out.read_text().splitlines()
    assert lines[0] == "timestamp,cpu,mem" and len(lines) == 601
    got = np.array([[float(c) for c in ln.split(",")[1:]] for ln in lines[1:]])
    obs = ~np.isnan(holed)
    assert np.array_equal(got[obs], holed[obs])
    err_model = np.abs(got[holes, 0] - truth[holes, 0]).mean()
    err_mean = np.abs(np.nanmean(holed[:, 0]) - truth[holes, 0]).mean()
    assert err_model < 0.5 * err_mean, (err_model, err_mean)
