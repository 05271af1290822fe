"""--recon-loss perceptual: the DFC-VAE feature term, a frozen feature net, self-contained runs, bad input."""

import json
import shutil

import pytest
import torch

import vaekit
from cli_helpers import cli
from vaekit.apps.feature_net import META_FILE, WEIGHTS_FILE, save_feature_net
from vaekit.data.spec import DataSpec
from vaekit.models import ModelConfig, build_model
from vaekit.modules.feature_nets import build_feature_net
from vaekit.training import fastpath

SPEC = DataSpec((1, 8, 8), "unit", 10)


def _meta(shape=(1, 8, 8), arch="small-cnn"):
    return {"format": "vaekit-feature-net", "architecture": arch, "arch_args": {}, "input_shape": list(shape),
            "num_classes": 10, "dataset": "digits", "test_accuracy": None}


def _model(arch="conv", weight=1.0):
    extra = {"perceptual": {"weight": weight, "net": _meta()}}
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, hidden=[8, 16] if arch == "conv" else [32], latent_dim=4,
                                   extra=extra), SPEC)


def test_feature_net_is_frozen_and_outside_the_optimizer():
    model = _model()
    assert list(model.perceptual.parameters()) == []  # buffers only
    net_tensors = {t.data_ptr() for t in model.perceptual.buffers()}
    assert net_tensors and not net_tensors & {p.data_ptr() for p in model.parameters()}
    assert all(not t.requires_grad for t in model.perceptual.buffers())
    out = model.loss(torch.rand(16, 1, 8, 8))
    out["loss"].backward()
    assert all(t.grad is None for t in model.perceptual.buffers())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert "perceptual" in out and out["perceptual"] > 0
    assert torch.allclose(out["elbo"], -(out["recon"] + out["kl"]))  # the ELBO stays the true one
    model.train()
    assert not model.perceptual.net.training  # dropout of the frozen net stays off


def test_perceptual_term_changes_the_decoder_gradient_only_through_x_hat():
    x = torch.rand(8, 1, 8, 8)
    grads = []
    for weight in (1.0, 0.0):
        model = _model(weight=weight)
        torch.manual_seed(1)
        model.loss(x)["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.decoder.parameters()]))
    assert not torch.allclose(grads[0], grads[1])
    m = _model()
    assert torch.all(m.perceptual(x, x) == 0) and torch.all(m.perceptual(x, 1 - x) > 0)


def test_fast_cpu_step_is_not_used_for_a_perceptual_model():
    plain = build_model(ModelConfig(hidden=[32], latent_dim=4, likelihood="bernoulli"), DataSpec((1, 8, 8), "binary"))
    assert fastpath.supports(plain)
    extra = {"perceptual": {"weight": 1.0, "net": _meta()}}
    perc = build_model(ModelConfig(hidden=[32], latent_dim=4, likelihood="bernoulli", extra=extra),
                       DataSpec((1, 8, 8), "binary"))
    assert not fastpath.supports(perc)


@pytest.fixture(scope="module")
def net_dir(tmp_path_factory):
    from vaekit.cli import main

    out = tmp_path_factory.mktemp("pnet") / "net"
    assert main(["features", "--data", "digits", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    return out


TINY = ["--arch", "conv", "--hidden", "8,16", "--latent-dim", "4", "--epochs", "1", "--batch-size", "64", "--quiet"]


def test_perceptual_run_trains_saves_loads_and_samples_without_the_net(net_dir, tmp_path, capsys):
    net = tmp_path / "net"
    shutil.copytree(net_dir, net)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--data", "digits", "--recon-loss", "perceptual", "--feature-net", net,
                         "--perceptual-weight", "0.5", "--out", run, "--json", *TINY)
    assert code == 0, err
    assert json.loads(out)["test"]["elbo"] < 0
    cfg = json.loads((run / "config.json").read_text())
    p = cfg["model"]["extra"]["perceptual"]
    assert p["weight"] == 0.5 and p["net"]["architecture"] == "small-cnn" and len(p["fingerprint"]) == 64
    assert cfg["train"]["recon_loss"] == "perceptual"
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first.get("val_perceptual", 0) > 0 or first.get("train_perceptual", 0) > 0  # logged, not in the ELBO
    shutil.rmtree(net)  # the run must not need the original feature net any more
    model = vaekit.load(run)
    from vaekit.apps.feature_net import load_feature_net

    original, _ = load_feature_net(net_dir)
    assert torch.equal(model.perceptual.net.features[0].weight, original.features[0].weight)
    code, out, err = cli(capsys, "sample", run, "--n", "4", "--out", tmp_path / "s.npy")
    assert code == 0, err and (tmp_path / "s.npy").exists()
    code, out, err = cli(capsys, "reconstruct", run, "--n", "4", "--out", tmp_path / "r.png")
    assert code == 0, err
    code, out, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", "2", "--quiet")
    assert code == 0, err  # resumes from its own checkpoint, the net included


def _bad(tmp_path, capsys, *args):
    code, out, err = cli(capsys, "train", "--data", "digits", "--out", tmp_path / "run", *args, *TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
    return err


def test_bad_input_one_line_and_nothing_written(net_dir, tmp_path, capsys):
    err = _bad(tmp_path, capsys, "--recon-loss", "perceptual")
    assert "--recon-loss perceptual needs --feature-net" in err
    err = _bad(tmp_path, capsys, "--recon-loss", "pixels")
    assert "unknown --recon-loss 'pixels'" in err
    err = _bad(tmp_path, capsys, "--feature-net", net_dir)
    assert "add --recon-loss perceptual" in err
    err = _bad(tmp_path, capsys, "--recon-loss", "perceptual", "--feature-net", tmp_path / "missing")
    assert "not found" in err
    wrong = save_feature_net(tmp_path / "wrong", build_feature_net("small-cnn", (1, 28, 28), 10), _meta((1, 28, 28)))
    err = _bad(tmp_path, capsys, "--recon-loss", "perceptual", "--feature-net", wrong)
    assert "(1, 28, 28)" in err and "(1, 8, 8)" in err and "vaekit features --data digits --out NET" in err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(net_dir, corrupt)
    (corrupt / WEIGHTS_FILE).write_bytes(b"\x00" * 40)
    err = _bad(tmp_path, capsys, "--recon-loss", "perceptual", "--feature-net", corrupt)
    assert "corrupt" in err and WEIGHTS_FILE in err
    unknown = tmp_path / "unknown"
    shutil.copytree(net_dir, unknown)
    meta = json.loads((unknown / META_FILE).read_text())
    (unknown / META_FILE).write_text(json.dumps({**meta, "architecture": "vgg16"}))
    err = _bad(tmp_path, capsys, "--recon-loss", "perceptual", "--feature-net", unknown)
    assert "'vgg16'" in err and "small-cnn" in err
    err = _bad(tmp_path, capsys, "--recon-loss", "perceptual", "--feature-net", net_dir, "--model", "iwae")
    assert "--model vae" in err


def test_a_corrupt_onnx_feature_net_is_refused_with_one_line(tmp_path, capsys):
    pytest.importorskip("onnx")
    (tmp_path / "net.onnx").write_bytes(b"\x08\x07")
    err = _bad(tmp_path, capsys, "--recon-loss", "perceptual", "--feature-net", tmp_path / "net.onnx")
    assert "not a valid ONNX model" in err and "net.onnx" in err


def test_resume_before_the_first_checkpoint_copies_the_net_in_again(net_dir, tmp_path, capsys):
    """A perceptual run killed after writing its config but before any checkpoint starts over on
    --resume: its feature net must hold the net's weights again, not the zeros of a bare build."""
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", "digits", "--recon-loss", "perceptual", "--feature-net", net_dir,
                       "--out", run, *TINY)
    assert code == 0, err
    for name in ("last.safetensors", "last.previous.safetensors", "model.safetensors", "metrics.jsonl"):
        (run / name).unlink(missing_ok=True)  # as if killed before its first checkpoint
    code, _, err = cli(capsys, "train", "--out", run, "--resume", "--quiet")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["model"]["extra"]["perceptual"]["weight"] == 0.1  # default
    from vaekit.apps.feature_net import load_feature_net

    original, _ = load_feature_net(net_dir)
    model = vaekit.load(run)
    assert torch.equal(model.perceptual.net.features[0].weight, original.features[0].weight)
