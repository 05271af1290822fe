"""M2 and M1+M2 from the command line: train, classify (JSON, CSV, --input), sample --label,
evaluate, and the bad inputs of the semi-supervised verbs (one line, exit 2, nothing written)."""

import csv
import json

import numpy as np
import pytest

from cli_helpers import cli

M2_ARGS = ["--model", "m2", "--labels-per-class", "10", "--hidden", "64", "--latent-dim", "4", "--alpha", "1",
           "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("m2cli")
    m2, m1, m12 = root / "m2", root / "m1", root / "m12"
    from vaekit.cli import main

    assert main(["train", "--data", "digits", "--epochs", "30", "--out", str(m2), *M2_ARGS]) == 0
    assert main(["train", "--data", "digits", "--epochs", "15", "--hidden", "64", "--latent-dim", "8",
                 "--out", str(m1), "--quiet"]) == 0
    assert main(["train", "--data", "digits", "--epochs", "8", "--features", str(m1), "--out", str(m12),
                 *M2_ARGS]) == 0
    return {"m2": m2, "m1": m1, "m12": m12, "root": root}


def test_validation_accuracy_is_logged_and_picks_the_best_epoch(runs):
    rows = [json.loads(line) for line in (runs["m2"] / "metrics.jsonl").read_text().splitlines()]
    accs = [r["val_accuracy"] for r in rows]
    assert rows[-1]["best_epoch"] == int(np.argmax(accs)) and max(accs) > 0.5
    cfg = json.loads((runs["m2"] / "config.json").read_text())
    assert cfg["model"]["model"] == "m2" and cfg["data"]["labels_per_class"] == 10


def test_classify_json_and_csv(runs, capsys, tmp_path):
    out = tmp_path / "preds.csv"
    code, stdout, _ = cli(capsys, "classify", runs["m2"], "--out", out, "--json")
    assert code == 0
    res = json.loads(stdout)
    assert res["n"] == res["n_labelled"] == 180 and res["accuracy"] > 0.5
    conf = np.array(res["confusion"])
    assert conf.shape == (10, 10) and conf.sum() == 180 and np.trace(conf) / 180 == pytest.approx(res["accuracy"])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "predicted", *[f"p_{k}" for k in range(10)], "label"]
    probs = np.array([[float(r[f"p_{k}"]) for k in range(10)] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    pred = [r["predicted"] for r in rows]
    assert pred == [str(int(np.argmax(p))) for p in probs]
    assert np.mean([r["predicted"] == r["label"] for r in rows]) == pytest.approx(res["accuracy"])
    code, stdout, _ = cli(capsys, "classify", runs["m2"], "--split", "val", "--out", tmp_path / "v.csv")
    assert code == 0 and "accuracy" in stdout and "confusion matrix" in stdout


def test_sample_label_is_conditional(runs, capsys, tmp_path):
    """The run's own classifier labels the samples drawn for class k as k far more often than chance."""
    f = tmp_path / "synth.npz"
    code, _, err = cli(capsys, "sample", runs["m2"], "--per-class", "30", "--out", f)
    assert code == 0, err
    d = np.load(f)
    assert d["x"].shape == (300, 1, 8, 8) and (d["y"] == np.repeat(np.arange(10), 30)).all()
    code, stdout, _ = cli(capsys, "classify", runs["m2"], "--input", f, "--out", tmp_path / "p.csv", "--json")
    res = json.loads(stdout)  # the .npz carries y: accuracy = share labelled as the class asked for
    assert code == 0 and res["n_labelled"] == 300 and res["accuracy"] > 0.3, res["accuracy"]  # chance: 0.1
    code, _, err = cli(capsys, "sample", runs["m2"], "--label", "7", "--n", "5", "--out", tmp_path / "seven.png")
    assert code == 0 and (tmp_path / "seven.png").exists(), err


def test_sample_agree_keeps_only_what_the_runs_classifier_agrees_with(runs, capsys, tmp_path):
    f = tmp_path / "agreed.npz"
    code, stdout, err = cli(capsys, "sample", runs["m2"], "--per-class", "20", "--agree", "--out", f, "--json")
    assert code == 0, err
    assert json.loads(stdout)["agree"] is True
    d = np.load(f)
    assert d["x"].shape == (200, 1, 8, 8) and (d["y"] == np.repeat(np.arange(10), 20)).all()
    code, stdout, _ = cli(capsys, "classify", runs["m2"], "--input", f, "--out", tmp_path / "p.csv", "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] >= 0.99  # without --agree: > 0.3 (test above)
    code, _, err = cli(capsys, "sample", runs["m2"], "--label", "4", "--n", "6", "--agree", "--out", tmp_path / "a.npy")
    assert code == 0, err
    code, stdout, _ = cli(capsys, "classify", runs["m2"], "--input", tmp_path / "a.npy", "--out", tmp_path / "q.csv",
                          "--json")
    assert code == 0 and json.loads(stdout)["predicted_counts"] == [0, 0, 0, 0, 6, 0, 0, 0, 0, 0]
    bad = tmp_path / "never.npz"
    code, _, err = cli(capsys, "sample", runs["m2"], "--agree", "--out", bad)
    assert code == 2 and "--per-class N or --label L" in err and len(err.strip().splitlines()) == 1
    assert not bad.exists()


def test_m1_m2_maps_inputs_through_m1(runs, capsys, tmp_path):
    from vaekit.data.datasets import load_data

    cfg = json.loads((runs["m12"] / "config.json").read_text())
    assert cfg["data"]["features"] == str(runs["m1"]) and cfg["model"]["extra"]["features"]["model"]["model"] == "vae"
    assert cfg["spec"]["shape"] == [1, 8, 8]  # the run models images; M1's codes are inside the model
    test = load_data("digits").test
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=test.x[:60].numpy(), y=test.y[:60].numpy())
    code, stdout, _ = cli(capsys, "classify", runs["m12"], "--input", npz, "--out", tmp_path / "p.csv", "--json")
    res = json.loads(stdout)
    assert code == 0 and res["n_labelled"] == 60 and res["accuracy"] > 0.3
    code, _, _ = cli(capsys, "sample", runs["m12"], "--label", "3", "--n", "8", "--out", tmp_path / "s.npy")
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (8, 1, 8, 8)  # images, through M1's decoder
    code, stdout, _ = cli(capsys, "evaluate", runs["m12"], "--iw-samples", "20", "--json")
    ev = json.loads(stdout)
    assert code == 0 and ev["nll"] <= -ev["elbo"] + 0.5 and np.isfinite(ev["nll"])
    import vaekit

    stacked = vaekit.load(runs["m12"])  # self-contained: M1's weights are in the run
    m1 = vaekit.load(runs["m1"])
    for a, b in zip(stacked.m1.state_dict().values(), m1.state_dict().values()):
        assert (a == b).all()


def test_bad_inputs(runs, capsys, tmp_path):
    code, _, err = cli(capsys, "classify", runs["m1"])
    assert code == 2 and "only m2" in err and len(err.strip().splitlines()) == 1
    assert not list(runs["m1"].glob("predictions*"))
    other = tmp_path / "other.npz"  # a different dataset (another source, another shape)
    rng = np.random.default_rng(0)
    np.savez(other, x=rng.random((200, 20)), y=rng.integers(0, 3, 200))
    out = tmp_path / "never"
    code, _, err = cli(capsys, "train", "--data", other, "--features", runs["m1"], "--out", out, *M2_ARGS[:2],
                       "--epochs", "1", "--quiet")
    assert code == 2 and "was trained on digits" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = cli(capsys, "train", "--data", "digits", "--features", runs["m1"], "--model", "vae",
                       "--out", out, "--quiet")
    assert code == 2 and "--model m2" in err and not out.exists()
    code, _, err = cli(capsys, "train", "--data", "digits", "--model", "m2", "--labels-per-class", "1000",
                       "--out", out, "--quiet")
    assert code == 2 and "labels-per-class 1000" in err and not out.exists()
    code, _, err = cli(capsys, "train", "--data", "digits", "--model", "m2", "--features", runs["m12"],
                       "--out", out, "--quiet")
    assert code == 2 and "M1 must be" in err and not out.exists()


def test_m1_m2_resumes_without_reading_m1_again(runs, capsys, tmp_path):
    """The M1+M2 run holds M1's weights: resuming works even after the M1 run is gone."""
    m1_copy, m12 = tmp_path / "m1", tmp_path / "m12"
    import shutil

    shutil.copytree(runs["m1"], m1_copy)
    code, _, err = cli(capsys, "train", "--data", "digits", "--epochs", "2", "--features", m1_copy, "--out", m12,
                       *M2_ARGS)
    assert code == 0, err
    shutil.rmtree(m1_copy)
    code, _, err = cli(capsys, "train", "--data", "digits", "--epochs", "4", "--features", m1_copy, "--out", m12,
                       *M2_ARGS, "--resume")
    assert code == 0, err
    assert len((m12 / "metrics.jsonl").read_text().splitlines()) == 4
    code, stdout, _ = cli(capsys, "classify", m12, "--json", "--out", tmp_path / "p.csv")
    assert code == 0 and json.loads(stdout)["n_labelled"] == 180


def test_the_report_of_a_classifier_shows_its_confusion_matrix(runs, capsys):
    """report.html of an M2 run has a Classifier section: the accuracy of classify's own count and
    the confusion matrix image; a plain VAE run has none."""
    import re

    page = (runs["m2"] / "report.html").read_text()
    assert "<h2>Classifier</h2>" in page and 'alt="confusion matrix"' in page
    code, stdout, _ = cli(capsys, "classify", runs["m2"], "--json")
    acc = json.loads(stdout)["accuracy"]
    shown = float(re.search(r"accuracy ([0-9.]+)% \((\d+) labelled\)", page).group(1))
    assert shown == pytest.approx(100 * acc, abs=0.006)
    assert "<h2>Classifier</h2>" not in (runs["m1"] / "report.html").read_text()


def test_evaluate_splits_the_kl_into_z_dimensions_and_the_class(runs, capsys):
    code, stdout, _ = cli(capsys, "evaluate", runs["m2"], "--json")
    res = json.loads(stdout)
    assert code == 0 and len(res["kl_per_dim"]) == 4 and res["kl_extra"] > 0
    assert sum(res["kl_per_dim"]) + res["kl_extra"] == pytest.approx(res["kl"], rel=1e-4)


def test_m2_on_data_with_unlabelled_examples_in_every_split(tmp_path, capsys):
    # y = -1 (scikit-learn's "unlabelled") in an .npz: the test split keeps unlabelled examples, and
    # the end-of-training report and `reconstruct` decoded them with label -1 ("labels must be ...
    # class indices", exit 2 after training, the run left without its report)
    from sklearn.datasets import load_digits

    d = load_digits()
    y = d.target.astype(np.int64)
    y[1::2] = -1
    np.savez(tmp_path / "semi.npz", x=(d.images / 16.0).astype(np.float32), y=y)
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", tmp_path / "semi.npz", "--model", "m2", "--epochs", "2",
                       "--hidden", "32", "--latent-dim", "4", "--out", run, "--quiet")
    assert code == 0, err
    assert (run / "report.html").exists() and (run / "evaluation.json").exists()
    code, stdout, err = cli(capsys, "reconstruct", run, "--out", tmp_path / "rec.png", "--json")
    assert code == 0, err
    assert json.loads(stdout)["n"] > 0 and (tmp_path / "rec.png").exists()
    code, stdout, _ = cli(capsys, "classify", run, "--json")
    res = json.loads(stdout)
    assert code == 0 and 0 < res["n_labelled"] < res["n"]  # accuracy over the labelled ones only
    # new inputs with -1 labels (and a class): -1 is "unlabelled" for a run whose classes are 0..9
    np.savez(tmp_path / "sub.npz", x=(d.images[:6] / 16.0).astype(np.float32), y=np.array([-1, -1, 3, -1, 3, -1]))
    code, stdout, err = cli(capsys, "reconstruct", run, "--input", tmp_path / "sub.npz", "--out", tmp_path / "r2.png")
    assert code == 0, err
    # the samples scored against test examples without labels get the model's own classes
    from vaekit.apps.common import open_run, run_inputs
    from vaekit.apps.sample_quality import model_samples

    r = open_run(run, device="cpu")
    test = run_inputs(r, None)
    assert bool((test.y < 0).any())
    assert model_samples(r.model, test, 50, seed=0).shape == (50, 1, 8, 8)
    # M1+M2 on the same data: the report and reconstruct fill its labels too
    m1, m12 = tmp_path / "m1", tmp_path / "m12"
    assert cli(capsys, "train", "--data", tmp_path / "semi.npz", "--epochs", "2", "--hidden", "32", "--latent-dim", "4",
               "--out", m1, "--quiet")[0] == 0
    code, _, err = cli(capsys, "train", "--data", tmp_path / "semi.npz", "--model", "m2", "--features", m1, "--epochs",
                       "2", "--hidden", "32", "--latent-dim", "4", "--out", m12, "--quiet")
    assert code == 0 and (m12 / "report.html").exists(), err
    assert cli(capsys, "reconstruct", m12, "--out", tmp_path / "r3.png")[0] == 0


def test_classify_refuses_classes_the_run_does_not_have(runs, capsys, tmp_path):
    # a folder "3" / "seven" was silently re-numbered by its own order (seven -> 1), so the
    # accuracy compared predictions against the wrong classes
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for name, digit in (("3", 3), ("seven", 7)):
        (tmp_path / "in" / name).mkdir(parents=True)
        for i, img in enumerate(d.images[d.target == digit][:3]):
            Image.fromarray((img * 255 / 16).astype(np.uint8)).save(tmp_path / "in" / name / f"{i}.png")
    out = tmp_path / "p.csv"
    code, stdout, err = cli(capsys, "classify", runs["m2"], "--input", tmp_path / "in", "--out", out, "--json")
    assert code == 2 and "'seven' are not classes of this run" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    (tmp_path / "in" / "seven").rename(tmp_path / "in" / "7")
    code, stdout, _ = cli(capsys, "classify", runs["m2"], "--input", tmp_path / "in", "--out", out, "--json")
    res = json.loads(stdout)
    assert code == 0 and res["n_labelled"] == 6 and res["accuracy"] > 0.3
    with open(out) as f:
        assert [r["label"] for r in csv.DictReader(f)] == ["3"] * 3 + ["7"] * 3
