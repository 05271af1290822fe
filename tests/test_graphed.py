"""The recorded training step (training/graphed.py): the same updates as the eager step, skipped
non-finite steps, and the trainer's bookkeeping around it. On CPUs the step runs unrecorded (the
same code path minus the CUDA graph); tests/test_cuda.py records and replays it on a GPU."""

import math

import pytest
import torch

from vaekit.config import TrainConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import TrainingError
from vaekit.models import ModelConfig, build_model
from vaekit.training.graphed import GraphedStep
from vaekit.training.optim import Adam
from vaekit.training.trainer import Trainer

from test_trainer import tiny_data

SPEC = DataSpec((1, 8, 8), "binary")


def two_layer_iwae(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(model="iwae", k=4, hidden=[16, 12], latent_dim=5, latent_dim2=3, hidden2=[8],
                                   activation="tanh", gradient_estimator="dreg"), SPEC)


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(10, *SPEC.shape, generator=g) < 0.4).float() for _ in range(n)]


def test_step_matches_the_eager_step():
    """Same weights, data, KL weights and noise: the same parameters, moments and logged terms."""
    a, b = two_layer_iwae(), two_layer_iwae()
    oa, ob = Adam(a.parameters(), lr=3e-3), Adam(b.parameters(), lr=3e-3)
    xs, klws = batches(5), [0.1, 0.1, 0.5, 1.0, 1.0]
    g = GraphedStep(b, ob, xs[0], capture=False)
    g.set_lr(3e-3)
    losses = []
    for i, (x, w) in enumerate(zip(xs, klws)):
        torch.manual_seed(100 + i)
        out = a.loss(x, kl_weight=w)
        oa.zero_grad()
        out["loss"].backward()
        oa.step()
        losses.append([float(out[k].detach()) for k in ("loss", "elbo", "recon", "kl")])
        torch.manual_seed(100 + i)
        g.step(x, w)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for m, n in zip(oa.exp_avg_sq + oa.steps, ob.exp_avg_sq + ob.steps):
        torch.testing.assert_close(m, n, rtol=1e-5, atol=1e-9)
    got = g.collect()
    assert got["good"] == 5 and got["skipped"] == 0 and got["longest_skipped_run"] == 0
    want = [sum(col) / 5 for col in zip(*losses)]
    assert [got["means"][k] for k in ("loss", "elbo", "recon", "kl")] == pytest.approx(want, rel=1e-5)
    assert g.collect()["good"] == 0  # collect resets the sums


def test_learning_rate_tensor_is_used():
    a, b = two_layer_iwae(), two_layer_iwae()
    ga = GraphedStep(a, Adam(a.parameters(), lr=1e-3), batches(1)[0], capture=False)
    gb = GraphedStep(b, Adam(b.parameters(), lr=1e-3), batches(1)[0], capture=False)
    ga.set_lr(0.0)
    for g in (ga, gb):
        torch.manual_seed(0)
        g.step(batches(1)[0])
    p0 = two_layer_iwae()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), p0.parameters()))  # lr 0: unchanged
    assert not all(torch.equal(p, q) for p, q in zip(b.parameters(), p0.parameters()))


def test_non_finite_steps_are_skipped_and_counted():
    m = two_layer_iwae()
    opt = Adam(m.parameters(), lr=1e-3)
    good, bad = batches(1)[0], torch.full((10, *SPEC.shape), math.nan)
    g = GraphedStep(m, opt, good, capture=False)
    g.step(good)
    before = [t.clone() for t in (*m.parameters(), *opt.exp_avg, *opt.steps)]
    for _ in range(3):
        g.step(bad)
    after = [t.clone() for t in (*m.parameters(), *opt.exp_avg, *opt.steps)]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    g.step(good)
    g.step(bad)
    got = g.collect()
    assert (got["good"], got["skipped"], got["longest_skipped_run"]) == (2, 4, 3)
    assert all(math.isfinite(v) for v in got["means"].values())  # the skipped steps' NaN left out
    assert float(opt.steps[0]) == 2.0


def _trainer(graphs, run_dir=None, epochs=3, dynamic=True, **kw):
    data = tiny_data(dynamic=dynamic)
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="iwae", k=3, hidden=[32], latent_dim=4, latent_dim2=2, hidden2=[8],
                                    activation="tanh", gradient_estimator="dreg"), data.spec)
    t = Trainer(model, data, TrainConfig(epochs=epochs, batch_size=32, seed=0, kl_warmup=2, device="cpu", **kw),
                run_dir, progress=False)
    t.use_graphs = graphs  # on CPUs: the recorded step's code path, run unrecorded
    return t


def test_trainer_with_the_graphed_step_matches_eager_training():
    """200 examples in batches of 32: six steps through the graphed step, the last 8 eagerly.
    The weights after the first epoch agree to float rounding; later, Adam's normalised updates
    let rounding move weights whose gradients are noise (pixels that are almost never on), so
    three epochs are compared by what the weights do: the logged losses and validation bounds."""
    ref, t = _trainer(False, epochs=1), _trainer(True, epochs=1)
    for tr in (ref, t):
        torch.manual_seed(5)  # the models' noise
        tr.fit()
    assert t.graphed is not None and ref.graphed is None
    for p, q in zip(ref.model.parameters(), t.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    ref.cfg.epochs = t.cfg.epochs = 3
    torch.manual_seed(6)
    h_ref = ref.fit()
    torch.manual_seed(6)
    h = t.fit()
    assert len(h) == len(h_ref) == 3
    for a, b in zip(h_ref, h):
        assert a["step"] == b["step"] == 7 * (a["epoch"] + 1)
        for key in ("train_loss", "train_elbo", "train_kl", "val_elbo", "val_iwae"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), key


def test_trainer_graphed_non_finite_run_stops_with_the_checkpoint_intact(tmp_path):
    (tmp_path / "r").mkdir()
    t = _trainer(True, tmp_path / "r", epochs=2, dynamic=False, max_nonfinite=5)
    t.fit()
    saved = (tmp_path / "r" / "last.safetensors").read_bytes()
    t.cfg.epochs = 3
    t.train_x.fill_(math.nan)  # every step of epoch 3 is non-finite
    with pytest.raises(TrainingError, match="non-finite"):
        t.fit()
    assert (tmp_path / "r" / "last.safetensors").read_bytes() == saved
    assert t.state["skipped_steps"] == 7 and t.state["epoch"] == 2  # six graphed steps, the eager last one, stop


def test_a_step_that_cannot_be_recorded_stops_training_with_one_line(tmp_path, monkeypatch):
    import vaekit.training.trainer as trainer_mod

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    (tmp_path / "r").mkdir()
    t = _trainer(True, tmp_path / "r", epochs=2)
    monkeypatch.setattr(trainer_mod, "GraphedStep", refuse)
    with pytest.raises(TrainingError, match=r"CUDA graph failed \(RuntimeError: operation not permitted when "
                                            r"stream is capturing\); train with --cuda-graphs off"):
        t.fit()
    assert t.state["epoch"] == 0 and not (tmp_path / "r" / "last.safetensors").exists()
