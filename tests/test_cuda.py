"""The whole tool on a CUDA GPU: training with its end-of-run evaluation, figures and report, every
application verb, ``evaluate`` against the CPU, the scikit-learn estimators and a two-layer IWAE.

Skipped where no CUDA device is available. Where a computation is deterministic (posterior means,
decoder means, the analytic KL, the common-random-number scores whose noise comes from a seeded CPU
generator) the GPU must give the CPU's numbers up to float32 rounding; where it draws its noise on
the device (one-sample ELBO, importance-sampled NLL) the two devices' draws differ, and the numbers
must agree within their Monte Carlo error.
"""

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from cli_helpers import cli
from vaekit.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEVICES = ("cuda", "cpu")
# small, but trained far enough that z matters (KL ~1.3 nats, Var E[z_d] ~0.6 on every dimension)
TINY = ["--hidden", "64", "--latent-dim", "3", "--batch-size", "32", "--epochs", "10", "--quiet"]
RUN_FILES = ("config.json", "model.safetensors", "last.safetensors", "metrics.jsonl", "evaluation.json",
             "reconstructions.png", "samples.png", "training_curves.png", "kl_per_dim.png", "report.html")
# float32 results of the same arithmetic on two devices (different kernels, summation orders)
CLOSE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained on the GPU through the CLI (its test evaluation, figures and report too)."""
    out = tmp_path_factory.mktemp("cuda") / "run"
    assert main(["train", "--data", "digits", "--out", str(out), "--iw-samples", "20",
                 "--device", "cuda", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def inputs(run):
    """The first test examples (N, 1, 8, 8) float32 on the CPU, as the verbs see them."""
    from vaekit.apps.common import open_run, run_inputs

    return run_inputs(open_run(run, device="cpu")).x


def finite(a) -> bool:
    return bool(np.isfinite(np.asarray(a, dtype=np.float64)).all())


def checkpoint_keys(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def both(capsys, make_argv):
    """Run the verb once per device; returns {device: parsed --json output}."""
    res = {}
    for dev in DEVICES:
        code, out, err = cli(capsys, *make_argv(dev), "--device", dev, "--json")
        assert code == 0, (dev, err)
        res[dev] = json.loads(out)
    return res


def test_train_on_cuda_writes_the_run_figures_and_report(run):
    for name in RUN_FILES:
        assert (run / name).stat().st_size > 0, name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["device"] == "cuda"
    assert "rng.cuda" in checkpoint_keys(run / "last.safetensors")  # saved by a trainer that ran on CUDA
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(finite([r["train_elbo"], r["val_elbo"]]) for r in records)
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["iw_samples"] == 20 and finite([ev["elbo"], ev["nll"], ev["kl"], ev["bits_per_dim"]])
    assert ev["elbo"] < 0 and ev["nll"] <= -ev["elbo"] + 1.0 and len(ev["kl_per_dim"]) == 3
    for name in ("reconstructions.png", "samples.png", "training_curves.png", "kl_per_dim.png"):
        assert min(Image.open(run / name).size) > 16, name
    page = (run / "report.html").read_text()
    assert "data:image/png;base64," in page and "Latent space" in page and page.count("<img") >= 6


def test_evaluate_iw_samples_on_cuda_agrees_with_cpu(run, capsys):
    res = both(capsys, lambda dev: ["evaluate", run, "--iw-samples", "200"])
    g, c = res["cuda"], res["cpu"]
    assert g["n"] == c["n"] == 180 and g["iw_samples"] == c["iw_samples"] == 200
    for key in ("elbo", "recon", "kl", "nll", "bits_per_dim", "elbo_std_err", "nll_std_err"):
        assert finite(g[key]), key
    # No noise here: the analytic KL and the posterior means' variance are the same arithmetic.
    assert g["kl"] == pytest.approx(c["kl"], rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(g["kl_per_dim"], c["kl_per_dim"], **CLOSE)
    np.testing.assert_allclose(g["posterior_mean_var"], c["posterior_mean_var"], **CLOSE)
    assert g["active_units"] == c["active_units"]
    # The ELBO's z and the importance samples are drawn on each device: independent noise. The
    # reported standard errors are over examples, so each holds the between-example spread plus the
    # Monte Carlo noise; the difference of the two means has only the Monte Carlo part (same
    # examples), so its standard deviation is below hypot(se_cuda, se_cpu). 4 of those: a false
    # alarm has probability < 1e-4, while a wrong model, wrong data or a broken sampler on the GPU
    # moves these means by nats.
    for key in ("elbo", "nll"):
        tol = 4 * math.hypot(g[f"{key}_std_err"], c[f"{key}_std_err"])
        assert abs(g[key] - c[key]) < tol, (key, g[key], c[key], tol)
    # the seed fixes the GPU's draws: the same seed repeats them, another seed changes them
    code, out, _ = cli(capsys, "evaluate", run, "--iw-samples", "200", "--device", "cuda", "--json")
    again = json.loads(out)
    assert code == 0 and again["nll"] == pytest.approx(g["nll"], rel=1e-6) and again["elbo"] == pytest.approx(g["elbo"], rel=1e-6)
    code, out, _ = cli(capsys, "evaluate", run, "--iw-samples", "200", "--device", "cuda", "--json", "--seed", "1")
    assert code == 0 and json.loads(out)["nll"] != g["nll"]


def test_scores_on_cuda_match_cpu(run, inputs):
    """Per example: common-random-number terms (noise from a CPU generator) equal the CPU's; the
    importance-sampled NLL (noise drawn on the device) agrees in the mean of the paired differences."""
    from vaekit.apps.anomaly import crn_terms
    from vaekit.apps.common import open_run
    from vaekit.metrics import per_example_scores

    g, c = open_run(run, device="cuda").model, open_run(run, device="cpu").model
    assert g.device.type == "cuda" and c.device.type == "cpu"
    tg, tc = crn_terms(g, inputs, samples=16), crn_terms(c, inputs, samples=16)
    for key in ("recon", "kl", "nll", "elbo", "entropy"):
        assert tg[key].device.type == "cpu" and tg[key].shape == (len(inputs),)
        torch.testing.assert_close(tg[key], tc[key], rtol=1e-4, atol=1e-3)
    ng = per_example_scores(g, inputs, kind="nll", iw_samples=100)
    nc = per_example_scores(c, inputs, kind="nll", iw_samples=100)
    assert ng.device.type == "cpu" and ng.shape == (len(inputs),) and torch.isfinite(ng).all()
    d = (ng - nc).double()
    # paired differences of independent unbiased-in-the-same-way estimates: mean 0; 5 standard errors
    assert abs(float(d.mean())) < 5 * float(d.std()) / math.sqrt(len(d)) + 1e-3
    torch.testing.assert_close(per_example_scores(g, inputs, kind="nll", iw_samples=100), ng)  # seeded on the GPU


def test_sample_on_cuda(run, tmp_path, capsys):
    def sample(out, *extra):
        code, text, err = cli(capsys, "sample", run, "--n", 12, "--device", "cuda", "--out", tmp_path / out, "--json",
                              *extra)
        assert code == 0, err
        return json.loads(text)

    assert sample("a.npy")["n"] == 12
    a = np.load(tmp_path / "a.npy")
    assert a.shape == (12, 1, 8, 8) and finite(a) and a.min() >= 0 and a.max() <= 1
    sample("b.npy")
    sample("c.npy", "--seed", "1")
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), a, rtol=0, atol=1e-6)  # the seed fixes the GPU draws
    assert np.abs(np.load(tmp_path / "c.npy") - a).max() > 1e-3
    sample("g.png")
    assert min(Image.open(tmp_path / "g.png").size) > 24
    sample("folder")
    assert len(list((tmp_path / "folder").glob("*.png"))) == 12
    sample("d.npz", "--draw")
    assert set(np.unique(np.load(tmp_path / "d.npz")["x"])) <= {0.0, 1.0}


def test_reconstruct_and_denoise_on_cuda_match_cpu(run, inputs, tmp_path, capsys):
    res = both(capsys, lambda dev: ["reconstruct", run, "--n", 10, "--out", tmp_path / f"r-{dev}.png"])
    for dev in DEVICES:
        assert res[dev]["n"] == 10 and res[dev]["mean_recon_nll"] > 0 and (tmp_path / f"r-{dev}.png").exists()
    err = {dev: np.loadtxt(tmp_path / f"r-{dev}-errors.csv", delimiter=",", skiprows=1) for dev in DEVICES}
    assert err["cuda"].shape == (10, 3) and finite(err["cuda"])
    np.testing.assert_allclose(err["cuda"], err["cpu"], **CLOSE)

    rng = np.random.default_rng(0)
    noisy = np.clip(inputs[:7].numpy() + rng.normal(0, 0.2, (7, 1, 8, 8)), 0, 1).astype(np.float32)
    np.save(tmp_path / "noisy.npy", noisy)
    res = both(capsys, lambda dev: ["denoise", run, "--input", tmp_path / "noisy.npy", "--out", tmp_path / f"d-{dev}.npy"])
    assert res["cuda"]["n"] == 7 and (tmp_path / "d-cuda-before-after.png").exists()
    d = {dev: np.load(tmp_path / f"d-{dev}.npy") for dev in DEVICES}
    assert d["cuda"].shape == (7, 1, 8, 8) and finite(d["cuda"])
    np.testing.assert_allclose(d["cuda"], d["cpu"], **CLOSE)


def test_latent_verbs_on_cuda_match_cpu(run, tmp_path, capsys):
    both(capsys, lambda dev: ["interpolate", run, "--from", 0, "--to", 3, "--steps", 5, "--out", tmp_path / f"i-{dev}.npy"])
    i = {dev: np.load(tmp_path / f"i-{dev}.npy") for dev in DEVICES}
    assert i["cuda"].shape == (5, 1, 8, 8) and finite(i["cuda"])
    np.testing.assert_allclose(i["cuda"], i["cpu"], **CLOSE)
    code, _, err = cli(capsys, "interpolate", run, "--from", 1, "--to", 2, "--method", "slerp", "--device", "cuda",
                       "--out", tmp_path / "i.png")
    assert code == 0, err
    assert (tmp_path / "i.png").exists()

    code, out, err = cli(capsys, "traverse", run, "--device", "cuda", "--json", "--out", tmp_path / "t.png")
    assert code == 0, err
    assert sorted(json.loads(out)["dims"]) == [0, 1, 2] and (tmp_path / "t.png").exists()
    both(capsys, lambda dev: ["traverse", run, "--dim", "1", "--steps", 4, "--input", 2, "--out", tmp_path / f"t-{dev}.npy"])
    t = {dev: np.load(tmp_path / f"t-{dev}.npy") for dev in DEVICES}
    assert t["cuda"].shape == (1, 4, 1, 8, 8) and finite(t["cuda"])
    np.testing.assert_allclose(t["cuda"], t["cpu"], **CLOSE)

    res = both(capsys, lambda dev: ["edit", run, "--input", 0, "--toward", 3, "--strength", 2, "--steps", 3,
                                    "--out", tmp_path / f"e-{dev}.npy"])
    assert res["cuda"]["toward"] == "3" and res["cuda"]["vector_norm"] > 0
    assert res["cuda"]["vector_norm"] == pytest.approx(res["cpu"]["vector_norm"], rel=1e-4)
    e = {dev: np.load(tmp_path / f"e-{dev}.npy") for dev in DEVICES}
    assert e["cuda"].shape == (3, 1, 8, 8) and finite(e["cuda"])
    np.testing.assert_allclose(e["cuda"], e["cpu"], **CLOSE)


def test_embed_and_report_on_cuda(run, tmp_path, capsys):
    res = both(capsys, lambda dev: ["embed", run, "--out", tmp_path / f"z-{dev}.npy", "--variance", "--limit", 50])
    assert res["cuda"]["n"] == 50 and res["cuda"]["latent_dim"] == 3
    z = {dev: np.load(tmp_path / f"z-{dev}.npy") for dev in DEVICES}
    assert z["cuda"].shape == (50, 6) and finite(z["cuda"]) and (z["cuda"][:, 3:] > 0).all()  # means, variances
    np.testing.assert_allclose(z["cuda"], z["cpu"], **CLOSE)
    assert (tmp_path / "z-cuda-map.png").exists()
    code, _, err = cli(capsys, "embed", run, "--device", "cuda", "--out", tmp_path / "z.csv", "--limit", 20)
    assert code == 0, err
    assert len((tmp_path / "z.csv").read_text().splitlines()) == 21

    code, out, err = cli(capsys, "report", run, "--device", "cuda", "--out", tmp_path / "page.html", "--json")
    assert code == 0, err
    assert json.loads(out)["report"] == str(tmp_path / "page.html")
    page = (tmp_path / "page.html").read_text()
    assert page.count("<img") >= 6 and "data:image/png;base64," in page


def test_detect_on_cuda(run, tmp_path, capsys):
    res = both(capsys, lambda dev: ["detect", run, "--normal-label", "0", "--out", tmp_path / f"s-{dev}.csv"])
    g, c = res["cuda"], res["cpu"]
    assert g["n"] == 180 and g["score"] == "excess" and g["threshold_from"] == "reference"
    assert finite(g["threshold"]) and 0 <= g["auroc"] <= 1 and 0 < g["average_precision"] <= 1
    assert (tmp_path / "s-cuda.png").exists()
    s = {dev: np.genfromtxt(tmp_path / f"s-{dev}.csv", delimiter=",", names=True) for dev in DEVICES}
    assert len(s["cuda"]) == 180 and finite(s["cuda"]["score"])
    # "excess" scores use common random numbers from a seeded CPU generator: the same noise on both devices
    np.testing.assert_allclose(s["cuda"]["score"], s["cpu"]["score"], rtol=1e-4, atol=1e-3)
    assert g["threshold"] == pytest.approx(c["threshold"], rel=1e-4, abs=1e-3)
    for score in ("elbo", "nll", "recon"):
        code, out, err = cli(capsys, "detect", run, "--score", score, "--iw-samples", 20, "--device", "cuda",
                             "--out", tmp_path / f"{score}.csv", "--json")
        assert code == 0, err
        assert json.loads(out)["n"] == 180 and finite(np.genfromtxt(tmp_path / f"{score}.csv", delimiter=",",
                                                                     names=True)["score"])


def test_impute_on_cuda(run, inputs, tmp_path, capsys):
    from vaekit.apps.impute import METHODS

    xm = inputs[:4].numpy().copy()
    xm[:, :, 4:] = np.nan  # the bottom half is missing
    np.save(tmp_path / "in.npy", xm)
    for method in METHODS:
        code, out, err = cli(capsys, "impute", run, "--input", tmp_path / "in.npy", "--method", method, "--iters", 10,
                             "--chains", 2, "--device", "cuda", "--out", tmp_path / f"{method}.npy", "--json")
        assert code == 0, (method, err)
        assert json.loads(out)["missing_values"] == 4 * 32
        o = np.load(tmp_path / f"{method}.npy")
        assert o.shape == (4, 1, 8, 8) and finite(o), method
        assert np.array_equal(o[:, :, :4], xm[:, :, :4]), method  # observed values kept bit for bit
        assert o.min() >= 0 and o.max() <= 1, method  # Bernoulli means
    # seeded on the GPU: the same seed repeats the chains
    assert cli(capsys, "impute", run, "--input", tmp_path / "in.npy", "--iters", 10, "--chains", 2, "--device", "cuda",
               "--out", tmp_path / "again.npy")[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "again.npy"), np.load(tmp_path / "hmc.npy"), rtol=0, atol=1e-6)
    mask = np.zeros((8, 8), np.uint8)
    mask[4:] = 255  # white = missing
    Image.fromarray(mask).save(tmp_path / "mask.png")
    np.save(tmp_path / "clean.npy", inputs[:4].numpy())
    code, out, err = cli(capsys, "impute", run, "--input", tmp_path / "clean.npy", "--mask", tmp_path / "mask.png",
                         "--iters", 10, "--chains", 2, "--device", "cuda", "--out", tmp_path / "o.png", "--json")
    assert code == 0, err
    assert json.loads(out)["missing_values"] == 4 * 32 and (tmp_path / "o.png").exists()


def test_python_api_on_cuda(run, inputs):
    import vaekit
    from vaekit.apps.denoise import denoise
    from vaekit.apps.generate import reconstruct, sample
    from vaekit.apps.impute import impute
    from vaekit.apps.latent import attribute_vector, edit, embed, interpolate, map_2d, traverse

    model = vaekit.load(run, device="cuda")
    assert model.device.type == "cuda"
    x = inputs[:20]
    xg = x.cuda()  # inputs already on the GPU are accepted too
    mu, var = embed(model, xg)
    assert mu.device.type == "cpu" and mu.shape == var.shape == (20, 3)
    torch.testing.assert_close(mu, embed(model, x)[0])
    assert map_2d(mu.cuda())[0].shape == (20, 2)
    assert sample(model, 5, seed=0).device.type == "cpu"
    x_hat, err = reconstruct(model, xg)
    assert x_hat.device.type == "cpu" and x_hat.shape == x.shape and torch.isfinite(err["recon_nll"]).all()
    assert interpolate(model, xg[0], xg[1], steps=4).shape == (4, 1, 8, 8)
    assert traverse(model, [0, 2], base=mu[0].cuda(), steps=3).shape == (2, 3, 1, 8, 8)
    y = torch.arange(20) % 2
    vec = attribute_vector(mu.cuda(), y, 1)
    assert edit(model, xg[0], vec, [0.0, 1.0]).device.type == "cpu"
    assert torch.isfinite(denoise(model, xg)).all()
    xm = x[:3].clone()
    xm[:, :, 4:] = float("nan")
    a = impute(model, xm.cuda(), iters=6, chains=2, seed=5)
    assert a.device.type == "cpu" and torch.isfinite(a).all()
    torch.testing.assert_close(a, impute(model, xm, iters=6, chains=2, seed=5))  # same seed, same chains


def test_sklearn_estimators_on_cuda():
    from sklearn.datasets import load_digits
    from sklearn.metrics import roc_auc_score

    from vaekit.apps.anomaly import SCORES
    from vaekit.sklearn import VAEAnomalyDetector, VAETransformer

    d = load_digits()
    x, y = d.data / 16.0, d.target
    normal, other = x[y == 0], x[y == 1]
    rng_before = torch.cuda.get_rng_state()
    det = VAEAnomalyDetector(device="cuda", random_state=0, epochs=40).fit(normal[:150])
    assert torch.equal(torch.cuda.get_rng_state(), rng_before)  # the caller's GPU random stream is left alone
    assert det.model_.device.type == "cuda" and det.likelihood_ == "bernoulli"
    assert det.correction_.mode == "complexity"
    test = np.r_[normal[150:], other[:50]]
    lab = np.r_[np.zeros(len(normal) - 150), np.ones(50)]
    pred = det.predict(test)
    assert pred.shape == (len(test),) and set(np.unique(pred)) <= {-1, 1}
    s = det.score_samples(test)
    assert s.shape == (len(test),) and finite(s)
    assert roc_auc_score(lab, -s) > 0.9
    for score in SCORES:
        a = det.anomaly_scores(test, score)
        assert a.shape == (len(test),) and finite(a), score
    assert finite(det.log_likelihood(test)) and math.isfinite(det.score(test))
    # the fitted model moved to the CPU scores the same (float64 weights, common random numbers)
    cpu = copy.deepcopy(det)
    cpu.model_ = cpu.model_.cpu()
    np.testing.assert_allclose(cpu.score_samples(test), s, rtol=1e-6, atol=1e-6)

    rng = np.random.default_rng(0)
    fractions = rng.uniform(size=(300, 6))  # values in [0, 1] that are not binary events: the residual score
    det = VAEAnomalyDetector(contamination=0.1, device="cuda", random_state=0, epochs=5).fit(fractions)
    assert det.correction_.mode == "residual" and det.model_.device.type == "cuda"
    assert abs((det.predict(fractions) == -1).mean() - 0.1) <= 0.01
    table = rng.normal(size=(400, 5)) * [1, 2, 3, 4, 5] + 10
    det = VAEAnomalyDetector(contamination=0.05, device="cuda", random_state=0, epochs=5).fit(table)
    assert det.likelihood_ == "gaussian" and det.correction_.mode == "none"
    assert abs((det.predict(table) == -1).mean() - 0.05) <= 0.01

    tr = VAETransformer(n_components=2, device="cuda", random_state=0, epochs=5).fit(x[:300])
    assert tr.model_.device.type == "cuda" and tr.n_components_ == 2
    z = tr.transform(x[:20])
    assert z.shape == (20, 2) and finite(z)
    back = tr.inverse_transform(z)
    assert back.shape == (20, 64) and finite(back) and back.min() >= 0 and back.max() <= 1


def test_two_layer_iwae_on_cuda(tmp_path, capsys):
    out = tmp_path / "h2"
    args = ["--data", "digits", "--model", "iwae", "--k", "5", "--hidden", "24", "--latent-dim", "5",
            "--latent-dim2", "2", "--hidden2", "8", "--batch-size", "100", "--iw-samples", "20"]
    code, text, err = cli(capsys, "train", *args, "--epochs", "2", "--device", "cuda", "--out", out, "--quiet", "--json")
    assert code == 0, err
    res = json.loads(text)
    assert res["epochs"] == 2 and res["test"]["elbo"] < 0 and finite([res["test"]["elbo"], res["test"]["nll"]])
    assert len(res["test"]["kl_per_dim"]) == 5 + 2
    assert json.loads((out / "config.json").read_text())["model"]["latent_dim2"] == 2
    assert "rng.cuda" in checkpoint_keys(out / "last.safetensors")
    for name in RUN_FILES:
        assert (out / name).exists(), name
    # one more epoch with doubly reparameterised gradients, resumed on the GPU (its RNG state restored)
    code, text, err = cli(capsys, "train", "--out", out, "--resume", "--epochs", "3", "--gradient-estimator", "dreg",
                          "--device", "cuda", "--quiet", "--json")
    assert code == 0, err
    assert json.loads(text)["epochs"] == 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(finite([r["train_loss"], r["val_iwae"], r["val_elbo"]]) for r in records)
    # the verbs on two stochastic layers: Monte Carlo scores, HMC on (z1, z2)
    code, text, err = cli(capsys, "detect", out, "--device", "cuda", "--out", tmp_path / "s.csv", "--json")
    assert code == 0, err
    assert json.loads(text)["n"] == 180 and finite(json.loads(text)["threshold"])
    from vaekit.apps.common import open_run, run_inputs

    xm = run_inputs(open_run(out, device="cpu")).x[:3].numpy().copy()
    xm[:, :, 4:] = np.nan
    np.save(tmp_path / "in.npy", xm)
    for method in ("hmc", "pseudo-gibbs"):
        code, _, err = cli(capsys, "impute", out, "--input", tmp_path / "in.npy", "--method", method, "--iters", 6,
                           "--chains", 2, "--device", "cuda", "--out", tmp_path / f"{method}.npy")
        assert code == 0, (method, err)
        o = np.load(tmp_path / f"{method}.npy")
        assert o.shape == (3, 1, 8, 8) and finite(o) and np.array_equal(o[:, :, :4], xm[:, :, :4])
    for verb in (["traverse", out, "--out", tmp_path / "t.npy"], ["sample", out, "--n", 4, "--out", tmp_path / "x.npy"],
                 ["evaluate", out, "--iw-samples", "10"]):
        code, _, err = cli(capsys, *verb, "--device", "cuda", "--json")
        assert code == 0, (verb, err)
    assert np.load(tmp_path / "t.npy").shape[0] == 5  # the z1 dimensions carrying the most KL: all 5


# -- mixed precision (--precision bf16|fp16, training/precision.py) --------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(run, tmp_path, capsys, precision):
    """The run fixture's settings under bf16 (recorded as a CUDA graph with autocast inside) and fp16
    (eager, with a loss scale saved in the checkpoint's JSON): float32 weights and a test -ELBO
    within 1 nat of the fp32 run's (10 epochs of the tiny model)."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    out = tmp_path / precision
    code, _, err = cli(capsys, "train", "--data", "digits", "--out", out, "--device", "cuda",
                       "--precision", precision, *TINY)
    assert code == 0, err
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
    with safe_open(str(out / "last.safetensors"), framework="pt") as f:
        state = json.loads(f.metadata()["trainer_state"])
    if precision == "fp16":
        scale = state["loss_scale"]["model"]
        assert scale["scale"] > 0 and math.isfinite(scale["scale"])
    else:
        assert "loss_scale" not in state
    ref = json.loads((run / "evaluation.json").read_text())["elbo"]
    got = json.loads((out / "evaluation.json").read_text())["elbo"]
    assert abs(got - ref) < 1.0, (precision, got, ref)
    # resumed under the other precision: allowed, and trains on
    other = "fp16" if precision == "bf16" else "bf16"
    code, _, err = cli(capsys, "train", "--out", out, "--resume", "--epochs", "11", "--precision", other, "--quiet")
    assert code == 0, err


def test_bf16_graph_step_on_cuda_matches_eager():
    """Under bf16 the training step is recorded as a CUDA graph with autocast inside, and trains as
    the eager autograd step does."""
    from vaekit.config import TrainConfig
    from vaekit.data import load_data
    from vaekit.models import ModelConfig, build_model
    from vaekit.training.trainer import Trainer

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    data = load_data("digits", seed=0)
    val = {}
    for graphs in (True, False):
        torch.manual_seed(0)
        model = build_model(ModelConfig(hidden=[64], latent_dim=4), data.spec)
        t = Trainer(model, data, TrainConfig(epochs=2, batch_size=64, seed=0, device="cuda", precision="bf16",
                                             cuda_graphs=graphs, weight_average=0), progress=False)
        t.fit()
        assert (t.graphed is not None) == graphs
        assert all(p.dtype == torch.float32 for p in t.model.parameters())
        assert t.state["skipped_steps"] == 0
        val[graphs] = t.history[-1]["val_elbo"]
    # the graph draws its noise differently from the eager step: the same training, other draws
    assert abs(val[True] - val[False]) < 1.0, val
