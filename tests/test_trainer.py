"""The training loop: resume equals uninterrupted, non-finite steps, checkpoints, round trip."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from vaekit.config import TrainConfig
from vaekit.data.datasets import Data, Split
from vaekit.data.spec import DataSpec
from vaekit.errors import CheckpointError, TrainingError, UsageError
from vaekit.models import ModelConfig, build_model
from vaekit.training.average import WeightAverage
from vaekit.training.trainer import Trainer, lr_at


def tiny_data(n=300, seed=0, dynamic=False):
    g = torch.Generator().manual_seed(seed)
    proto = torch.rand(3, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (proto[y] + 0.1 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    spec = DataSpec((1, 8, 8), "binary" if dynamic else "unit", 3)
    sp = [Split(x[:200], y[:200]), Split(x[200:250], y[200:250]), Split(x[250:], y[250:])]
    return Data(spec=spec, train=sp[0], val=sp[1], test=sp[2], source={"source": "tiny"}, dynamic_binarize=dynamic)


def make_trainer(run_dir=None, epochs=4, model_kw=None, **kw):
    data = tiny_data(dynamic=kw.pop("dynamic", False))
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=[32], latent_dim=4, **(model_kw or {})), data.spec)
    kw.setdefault("device", "cpu")
    cfg = TrainConfig(epochs=epochs, batch_size=32, seed=0, **kw)
    return Trainer(model, data, cfg, run_dir, progress=False)


def patch_step(t, wrapper):
    """Wrap whichever step the trainer uses (the fast MLP step, else model.loss)."""
    if t.fast is not None:
        t.fast.step = wrapper(t.fast.step)
    else:
        t.model.loss = wrapper(t.model.loss)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dynamic,fast", [(False, True), (True, True), (False, False)])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, dynamic, fast):
    ref = make_trainer(tmp_path / "a", dynamic=dynamic, kl_warmup=2, fast_path=fast)
    (tmp_path / "a").mkdir()
    ref.fit()

    (tmp_path / "b").mkdir()
    t = make_trainer(tmp_path / "b", dynamic=dynamic, kl_warmup=2, fast_path=fast)
    assert (t.fast is not None) == fast
    calls = {"n": 0}

    def interrupting(step):  # dies in the middle of the third epoch (7 training steps an epoch)
        def wrapped(x, **kw):
            calls["n"] += 1
            if calls["n"] == 2 * 7 + 3:
                raise KeyboardInterrupt
            return step(x, **kw)
        return wrapped

    patch_step(t, interrupting)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    t2 = make_trainer(tmp_path / "b", dynamic=dynamic, kl_warmup=2, fast_path=fast)
    t2.resume()
    assert t2.state["epoch"] == 2
    t2.fit()
    for k, v in weights(ref.model).items():
        assert torch.equal(v, t2.model.state_dict()[k]), k
    for k, v in weights(ref.eval_model).items():  # the weight average resumes too
        assert torch.equal(v, t2.eval_model.state_dict()[k]), k
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    ref_rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_elbo"] for r in rows] == [r["val_elbo"] for r in ref_rows]


def test_training_improves_and_writes_checkpoints(tmp_path):
    t = make_trainer(tmp_path, epochs=6)
    hist = t.fit()
    assert hist[-1]["val_elbo"] > hist[0]["val_elbo"]
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "last.safetensors").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    best = load_file(str(tmp_path / "model.safetensors"))
    assert set(best) == set(t.model.state_dict())
    assert all(k in hist[0] for k in ("train_elbo", "train_kl", "val_elbo", "samples_per_s", "kl_weight", "lr"))


def test_training_inside_a_callers_no_grad_is_the_same_training():
    """An evaluation script's torch.no_grad() around fit() must not turn the autograd step off
    (it raised 'element 0 of tensors does not require grad' in the backward pass)."""
    t = make_trainer(epochs=2, fast_path=False)
    t.fit()
    with torch.no_grad():
        u = make_trainer(epochs=2, fast_path=False)
        u.fit()
    a, b, init = weights(t.model), weights(u.model), weights(make_trainer(epochs=2, fast_path=False).model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(b[k], init[k]) for k in b)  # it did train


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_steps_are_skipped_then_stop(tmp_path, fast, where):
    t = make_trainer(tmp_path, epochs=3, max_nonfinite=3, fast_path=fast)
    calls = {"n": 0}
    first = next(t.model.parameters())

    def bad_now():  # one bad step in epoch 1, then every step of epoch 3 (7 steps an epoch)
        return calls["n"] == 2 or calls["n"] > 14

    # autograd path: a gradient hook poisons one gradient while the loss stays finite
    first.register_hook(lambda g: g * float("nan") if where == "grad" and bad_now() else g)

    def flaky(step):
        def wrapped(x, **kw):
            if not t.model.training:  # validation passes are not training steps
                return step(x, **kw)
            calls["n"] += 1
            out = step(x, **kw)
            if bad_now() and where == "loss":
                out["loss"] = out["loss"] * float("nan")
            elif bad_now() and "grad_check" in out:  # fast path: poison a gradient it computed
                first.grad[0, 0] = float("nan")
                out["grad_check"] = out["grad_check"] + first.grad[0, 0]
            return out
        return wrapped

    patch_step(t, flaky)
    with pytest.raises(TrainingError, match="non-finite"):
        t.fit()
    assert t.state["skipped_steps"] >= 1
    # the last good checkpoint (end of epoch 2) is intact and loads
    t2 = make_trainer(tmp_path, epochs=3)
    t2.resume()
    assert t2.state["epoch"] == 2 and t2.state["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in t2.model.parameters())


def test_early_stopping(tmp_path):
    t = make_trainer(tmp_path, epochs=50, patience=2, lr=0.5)  # a huge lr stops improving quickly
    hist = t.fit()
    assert len(hist) < 50
    assert hist[-1]["epoch"] - hist[-1]["best_epoch"] == 2


def test_lr_schedules():
    cfg = TrainConfig(epochs=11, lr=1.0, lr_schedule="cosine", lr_min_factor=0.1)
    assert lr_at(cfg, 0) == 1.0 and math.isclose(lr_at(cfg, 10), 0.1) and math.isclose(lr_at(cfg, 5), 0.55)
    cfg = TrainConfig(lr=1.0, lr_schedule="exponential", lr_decay=0.5)
    assert lr_at(cfg, 3) == 0.125


def test_bad_train_config():
    with pytest.raises(UsageError, match="lr schedule"):
        make_trainer(lr_schedule="sometimes")
    with pytest.raises(UsageError, match="--lr must be"):
        make_trainer(lr=-1.0)
    with pytest.raises(UsageError, match="device"):
        make_trainer(device="tpu")
    with pytest.raises(UsageError, match="--weight-average"):
        make_trainer(weight_average=1.0)


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "last.safetensors").write_bytes(b"not a checkpoint")
    t = make_trainer(tmp_path)
    with pytest.raises(CheckpointError, match="corrupt"):
        t.resume()
    with pytest.raises(CheckpointError, match="does not exist"):
        make_trainer(tmp_path / "nothing").resume()


def test_checkpoint_from_another_model_is_rejected(tmp_path):
    t = make_trainer(tmp_path, epochs=1)
    t.fit()
    data = tiny_data()
    other = build_model(ModelConfig(hidden=[16], latent_dim=4), data.spec)
    t2 = Trainer(other, data, TrainConfig(epochs=1, device="cpu"), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="another model"):
        t2.resume()


@pytest.mark.parametrize("every", [1, 3])
def test_weight_average_follows_its_formula(every):
    live = torch.nn.Linear(3, 2)
    avg = WeightAverage(live, 0.9, every=every)
    ref = [p.detach().clone() for p in live.parameters()]
    g = torch.Generator().manual_seed(0)
    m = 0
    for n in range(12):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        avg.update(n)
        if (n + 1) % every == 0:
            d = min(0.9**every, (1 + m) / (10 + m))
            ref = [d * r + (1 - d) * p.detach() for r, p in zip(ref, live.parameters())]
            m += 1
    for r, a in zip(ref, avg.model.parameters()):
        assert torch.allclose(r, a, atol=1e-6)
    assert not torch.allclose(ref[0], live.weight)  # it is an average, not a copy
    with pytest.raises(ValueError):
        WeightAverage(live, 1.0)


def test_the_average_is_validated_saved_and_returned(tmp_path):
    from vaekit.metrics import loss_terms

    t = make_trainer(tmp_path, epochs=3)
    hist = t.fit()
    assert t.eval_model is not t.model
    best = load_file(str(tmp_path / "model.safetensors"))
    assert hist[-1]["best_epoch"] == 2  # (the tiny problem improves every epoch)
    for k, v in t.eval_model.state_dict().items():
        assert torch.equal(best[k], v), k
    assert not torch.equal(best["decoder.net.0.weight"], t.model.state_dict()["decoder.net.0.weight"])
    val = loss_terms(t.eval_model, t.data.val.x, batch_size=t.cfg.eval_batch_size, seed=t.cfg.seed + 1)
    assert hist[-1]["val_elbo"] == pytest.approx(val["elbo"])
    last = load_file(str(tmp_path / "last.safetensors"))
    assert torch.equal(last["model.decoder.net.0.weight"], t.model.state_dict()["decoder.net.0.weight"])
    assert torch.equal(last["average.decoder.net.0.weight"], best["decoder.net.0.weight"])

    off = make_trainer(tmp_path / "off", epochs=1, weight_average=0.0)
    (tmp_path / "off").mkdir()
    off.fit()
    assert off.eval_model is off.model
    assert not any(k.startswith("average.") for k in load_file(str(tmp_path / "off" / "last.safetensors")))
    # a run saved without an average resumes with one that starts at its weights
    t2 = make_trainer(tmp_path / "off", epochs=2)
    t2.resume()
    for k, v in t2.model.state_dict().items():
        assert torch.equal(v, t2.eval_model.state_dict()[k]), k
    t2.fit()


def test_an_iwae_is_selected_by_its_k_sample_bound(tmp_path):
    """An IWAE's best checkpoint follows the validation k-sample bound it trains on, not the
    one-sample ELBO (which can fall while the bound rises); a VAE's follows the ELBO."""
    t = make_trainer(tmp_path, epochs=2, model_kw=dict(model="iwae", k=5))
    hist = t.fit()
    assert all("val_iwae" in r for r in hist) and t.state["best_metric"] == "val_iwae"
    assert hist[-1]["val_iwae"] > hist[-1]["val_elbo"]  # the 5-sample bound is the tighter one
    # records where the two criteria disagree: the ELBO improves at epoch 3, the bound at epoch 2
    top = t.state["best_val"]
    for e, (elbo, bound, kept) in enumerate([(-5.0, 1.0, True), (-4.0, 2.0, True), (-3.0, 1.5, False)], start=2):
        (tmp_path / "model.safetensors").unlink(missing_ok=True)
        t._end_epoch(e, {"epoch": e, "train_elbo": top + elbo, "val_elbo": top + elbo, "val_iwae": top + bound})
        assert (tmp_path / "model.safetensors").exists() == kept, e
    assert t.state["best_epoch"] == 3 and t.state["best_val"] == top + 2.0 and t.state["since_best"] == 1

    vae = make_trainer(tmp_path / "vae", epochs=1)
    (tmp_path / "vae").mkdir()
    rec = vae.fit()[-1]
    assert "val_iwae" not in rec and vae.state["best_metric"] == "val_elbo"
    assert vae.state["best_val"] == rec["val_elbo"]


def test_a_checkpoint_from_before_the_named_criterion_resumes(tmp_path):
    """Checkpoints saved before ``best_metric`` existed held "best_val_elbo"; such a run resumes,
    and an IWAE's first epoch after it starts its best from the k-sample bound."""
    from vaekit.training.checkpoint import load_checkpoint, save_checkpoint

    t = make_trainer(tmp_path, epochs=1, model_kw=dict(model="iwae", k=5))
    t.fit()
    rng, state, _ = load_checkpoint(tmp_path / "last.safetensors", t.model, t.opt, t.eval_model)
    state["best_val_elbo"] = -1e-3  # an ELBO better than any bound this model reaches
    del state["best_val"], state["best_metric"]
    save_checkpoint(tmp_path / "last.safetensors", t.model, t.opt, rng, state, t.eval_model)
    t2 = make_trainer(tmp_path, epochs=2, model_kw=dict(model="iwae", k=5))
    t2.resume()
    assert t2.state["best_metric"] == "val_elbo" and t2.state["best_val"] == -1e-3
    rec = t2.fit()[-1]
    assert t2.state["best_metric"] == "val_iwae" and t2.state["best_epoch"] == 1
    assert t2.state["best_val"] == rec["val_iwae"]
