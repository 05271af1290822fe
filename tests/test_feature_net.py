"""The reference classifier / feature network: architectures, training, save/load, ``vaekit features``."""

import json

import numpy as np
import pytest
import torch

from cli_helpers import cli
from vaekit.apps.feature_net import (META_FILE, WEIGHTS_FILE, load_feature_net, save_feature_net,
                                     train_feature_net)
from vaekit.data import load_data
from vaekit.errors import CheckpointError, UsageError
from vaekit.modules.feature_nets import FEATURE_NETS, FeatureMLP, SmallCNN, build_feature_net, default_architecture


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def trained(digits):
    return train_feature_net(digits, epochs=2, seed=1)


def test_registry_and_shapes():
    assert {"small-cnn", "mlp"} <= set(FEATURE_NETS.names())
    cnn = build_feature_net("small-cnn", (1, 28, 28), 10)
    x = torch.rand(3, 1, 28, 28)
    assert cnn(x).shape == (3, 10) and cnn.embed(x).shape == (3, 128)
    assert [t.shape[1:] for t in cnn.layers(x)] == [(32, 28, 28), (64, 14, 14), (128,)]
    mlp = build_feature_net("mlp", (6,), 3, {"hidden": [16, 8]})
    assert isinstance(mlp, FeatureMLP) and mlp(torch.rand(5, 6)).shape == (5, 3) and mlp.embed(torch.rand(5, 6)).shape == (5, 8)
    assert default_architecture((1, 8, 8)) == "small-cnn" and default_architecture((6,)) == "mlp"
    with pytest.raises(UsageError, match="did you mean 'small-cnn'"):
        build_feature_net("small_cnn", (1, 28, 28), 10)


def test_training_learns_and_records_metadata(trained, digits):
    net, meta = trained
    assert isinstance(net, SmallCNN) and not net.training
    assert meta["architecture"] == "small-cnn" and meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["classes"] == [str(i) for i in range(10)] and meta["dataset"] == "digits"
    assert 0.3 < meta["test_accuracy"] <= 1.0  # far above chance (0.1) after two epochs
    assert meta["vaekit_version"] and len(meta["dataset_fingerprint"]) == 32


def test_training_inside_a_callers_no_grad(digits):
    """A benchmark's torch.no_grad() around reference_feature_net (a cache miss trains the net)
    must not turn training off: it raised in loss.backward()."""
    with torch.no_grad():
        net, meta = train_feature_net(digits, epochs=1, seed=1)
        assert not torch.is_grad_enabled()  # the caller's mode is restored
    assert meta["test_accuracy"] > 0.3


def test_save_load_round_trip_gives_identical_outputs(trained, digits, tmp_path):
    net, meta = trained
    out = save_feature_net(tmp_path / "net", net, meta)
    assert sorted(p.name for p in out.iterdir()) == [META_FILE, WEIGHTS_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["net"]  # no temporary directory left behind
    net2, meta2 = load_feature_net(out)
    x = digits.test.x[:50]
    with torch.no_grad():
        assert torch.equal(net(x), net2(x)) and torch.equal(net.embed(x), net2.embed(x))
    assert meta2 == json.loads(json.dumps(meta))
    assert load_feature_net(out / META_FILE)[1] == meta2  # the JSON file itself names the net too
    with pytest.raises(UsageError, match="already exists"):
        save_feature_net(out, net, meta)


def test_mlp_for_flat_labelled_data(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 6)) + 2.0 * np.eye(3)[y].repeat(2, axis=1)
    np.savez(tmp_path / "t.npz", x=x, y=y)
    data = load_data(str(tmp_path / "t.npz"))
    net, meta = train_feature_net(data, epochs=20)
    assert meta["architecture"] == "mlp" and meta["test_accuracy"] > 0.6
    net2, _ = load_feature_net(save_feature_net(tmp_path / "n", net, meta))
    assert torch.equal(net.embed(data.test.x), net2.embed(data.test.x))


def test_load_errors_name_the_file(trained, tmp_path):
    net, meta = trained
    with pytest.raises(CheckpointError, match="not found"):
        load_feature_net(tmp_path / "missing")
    bad = save_feature_net(tmp_path / "bad", net, meta)
    (bad / WEIGHTS_FILE).write_bytes((bad / WEIGHTS_FILE).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_feature_net(bad)
    unknown = save_feature_net(tmp_path / "unknown", net, {**meta, "architecture": "resnet-9000"})
    with pytest.raises(UsageError, match="resnet-9000.*valid: mlp, onnx, small-cnn"):
        load_feature_net(unknown)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_feature_net(tmp_path / "junk")


def test_cli_features_on_digits(tmp_path, capsys):
    out = tmp_path / "net"
    code, stdout, err = cli(capsys, "features", "--data", "digits", "--out", out, "--epochs", "1", "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["architecture"] == "small-cnn" and 0 < res["test_accuracy"] <= 1 and res["out"] == str(out)
    _, meta = load_feature_net(out)
    assert meta["test_accuracy"] == res["test_accuracy"]
    code, stdout, err = cli(capsys, "features", "--data", "digits", "--out", tmp_path / "net2", "--epochs", "1")
    assert code == 0 and "test accuracy" in stdout


@pytest.mark.parametrize("args, message", [
    (["--data", "UNLABELLED", "--epochs", "1"], "has no labels"),
    (["--data", "digits", "--epochs", "0"], "--epochs must be positive"),
    (["--data", "digits", "--arch", "vgg"], "unknown feature network architecture 'vgg'"),
])
def test_cli_features_bad_input(tmp_path, capsys, args, message):
    np.save(tmp_path / "u.npy", np.random.default_rng(0).random((50, 4)))
    args = [str(tmp_path / "u.npy") if a == "UNLABELLED" else a for a in args]
    code, stdout, err = cli(capsys, "features", *args, "--out", tmp_path / "net")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "net").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["u.npy"]


def test_cli_features_refuses_an_existing_out(tmp_path, capsys):
    (tmp_path / "net").mkdir()
    code, _, err = cli(capsys, "features", "--data", "digits", "--out", tmp_path / "net")
    assert code == 2 and "already exists" in err
