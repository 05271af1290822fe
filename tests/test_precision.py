"""--precision fp32|bf16|fp16 (training/precision.py): the forward under autocast, the loss terms in
float32, fp16's loss scale (its algorithm, its place in the checkpoint), and the bad input.

fp16 is refused on CPUs at the command line; the unit tests below still run its code on the CPU
(torch's CPU autocast and the scaler's kernels exist there) by building the policy directly.
"""

import json

import pytest
import torch
from safetensors import safe_open

from cli_helpers import cli
from vaekit.config import TrainConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import UsageError
from vaekit.functional.bounds import log_mean_exp
from vaekit.metrics import loss_terms
from vaekit.models import ModelConfig, build_model
from vaekit.training import trainer as trainer_mod
from vaekit.training.graphed import GraphedStep
from vaekit.training.precision import LossScaler, Precision, check_precision
from vaekit.training.steps import AutogradStep, Guard, PlayersStep
from vaekit.training.trainer import Trainer

from test_trainer import make_trainer, tiny_data

TINY = ["--hidden", "32", "--latent-dim", "4", "--batch-size", "32", "--quiet"]


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


# -- loss terms in float32 ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["vae", "iwae"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "discretized-logistic"])
def test_loss_terms_are_float32_under_autocast(model, likelihood):
    spec = DataSpec((1, 8, 8), "8bit")
    torch.manual_seed(0)
    m = build_model(ModelConfig(model=model, hidden=[32], latent_dim=4, k=5, likelihood=likelihood), spec)
    x = torch.randint(0, 256, (16, 1, 8, 8)).float() / 255
    with _bf16():
        params = m.decoder(torch.zeros(16, 4))
        mu, logvar = m.encoder(x)
        out = m.loss(x)
        log_px = m.likelihood.log_prob(params, x)
        kl = m.prior.kl(mu, logvar)
    assert params.dtype == torch.bfloat16  # the networks do run in bf16...
    assert mu.dtype == logvar.dtype == torch.float32  # ...but q's parameters come out float32
    assert log_px.dtype == kl.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out.values())
    out["loss"].backward()
    assert all(p.grad.dtype == torch.float32 for p in m.parameters())


def test_iwae_bound_is_float32_and_close_to_fp32():
    """The k-sample bound's log-sum-exp runs in float32 under bf16 autocast; with the same noise its
    value is the fp32 bound's up to the networks' bf16 rounding."""
    spec = DataSpec((1, 8, 8), "unit")
    torch.manual_seed(0)
    m = build_model(ModelConfig(model="iwae", hidden=[32], latent_dim=4, k=50), spec)
    x = torch.rand(64, 1, 8, 8)
    torch.manual_seed(1)
    ref = m.loss(x)["iwae"]
    torch.manual_seed(1)
    with _bf16():
        got = m.loss(x)["iwae"]
    assert got.dtype == torch.float32
    assert abs(float(got) - float(ref)) < 0.01 * abs(float(ref))
    # a bf16 input is summed in float32 (in bf16, -300 + log-terms would round to the nearest 2)
    t = (torch.randn(50, 8) - 300).bfloat16()
    with _bf16():
        lme = log_mean_exp(t, dim=0)
    assert lme.dtype == torch.float32
    torch.testing.assert_close(lme, log_mean_exp(t.float(), dim=0))


def test_full_precision_is_untouched():
    """Outside autocast the float32 wrappers change nothing: float64 stays float64."""
    x = torch.randn(5, 3, dtype=torch.float64)
    assert log_mean_exp(x).dtype == torch.float64
    assert Precision().autocast().__class__.__name__ == "nullcontext"


# -- training under bf16 ------------------------------------------------------------------------------
def test_bf16_training_matches_fp32_quality():
    """The same small digits model trained fp32 and bf16: test ELBOs (evaluated in fp32) close, the
    weights and Adam's moments float32, and bf16 uses autograd (not the fp32 hand-derived step)."""
    from vaekit.data import load_data

    data = load_data("digits", seed=0)
    elbo = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(hidden=[64], latent_dim=8), data.spec)
        t = Trainer(model, data, TrainConfig(epochs=4, batch_size=64, seed=0, device="cpu", precision=prec), progress=False)
        t.fit()
        assert (t.fast is None) == (prec == "bf16")
        assert isinstance(t.step, AutogradStep) and t.precision.name == prec
        assert all(p.dtype == torch.float32 for p in t.model.parameters())
        assert all(m.dtype == torch.float32 for m in t.opt.exp_avg)
        elbo[prec] = loss_terms(t.eval_model, data.test, seed=0)["elbo"]
    assert abs(elbo["bf16"] - elbo["fp32"]) < 2.0, elbo


def test_bf16_several_players_and_graph_step():
    """The adversarial autoencoder's several-player step trains under bf16 (each update outside
    autocast, on float32 weights); the CUDA-graph step's body (run eagerly here) makes the same
    update as the autograd step under the same precision."""
    t = make_trainer(epochs=1, model_kw={"model": "aae"}, precision="bf16")
    t.fit()
    assert isinstance(t.step, PlayersStep) and t.history[0]["skipped_steps"] == 0
    assert all(p.dtype == torch.float32 for p in t.model.parameters())

    data = tiny_data()
    x = data.train.x[:32]
    results = []
    for graphed in (False, True):
        torch.manual_seed(0)
        m = build_model(ModelConfig(hidden=[32], latent_dim=4), data.spec)
        t = Trainer(m, data, TrainConfig(epochs=1, batch_size=32, seed=0, device="cpu", precision="bf16",
                                         fast_path=False), progress=False)
        torch.manual_seed(1)
        if graphed:
            GraphedStep(t.model, t.opt, x, capture=False, precision=t.precision).step(x, 1.0)
        else:
            AutogradStep(t.model, t.opt, t.guard, t.precision)(data.train[:32], 1.0)
        results.append([p.detach().clone() for p in t.model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="fp16"):
        GraphedStep(t.model, t.opt, x, capture=False, precision=Precision("fp16", "cpu"))


# -- fp16's loss scale --------------------------------------------------------------------------------
def test_loss_scaler_follows_torch_gradscaler():
    """Same scale sequence as torch.amp.GradScaler for a pattern of overflows and good steps."""
    ours = LossScaler("cpu", init_scale=1024.0, growth_interval=3)
    ref = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.0)
    for bad in (1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0):
        opt.zero_grad()
        ref.scale((w * (float("inf") if bad else 1.0)).sum()).backward()
        ref.step(opt)
        ref.update()
        ours.update(torch.tensor([float(bad)]))
        assert float(ours.scale) == ref.get_scale()
    state = ours.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert {k: v for k, v in ref.state_dict().items() if k in state} == state


def test_guard_unscales_checks_and_updates_the_scale():
    state = {"skipped_steps": 0}
    w = torch.nn.Parameter(torch.zeros(3))
    s = LossScaler("cpu", init_scale=8.0)
    for clip in (0.0, 100.0):
        guard = Guard(state, 5, clip, torch.device("cpu"))
        s.scale.fill_(8.0)
        w.grad = torch.tensor([8.0, 16.0, -8.0])
        assert guard.finite(torch.tensor(1.0), [w], scaler=s)
        torch.testing.assert_close(w.grad, torch.tensor([1.0, 2.0, -1.0]))  # unscaled before use
        w.grad = torch.tensor([float("inf"), 1.0, 1.0])
        assert not guard.finite(torch.tensor(1.0), [w], scaler=s)
        assert float(s.scale) == 4.0  # backed off


def _fp16_on_cpu(monkeypatch):
    """Let a Trainer run fp16 on the CPU (the command line refuses it; the code is the same)."""
    monkeypatch.setattr(trainer_mod, "check_precision", lambda name, device: None)


def test_fp16_scale_round_trips_through_the_checkpoint(tmp_path, monkeypatch):
    _fp16_on_cpu(monkeypatch)
    run = tmp_path / "r"
    run.mkdir()
    t = make_trainer(run, epochs=1, precision="fp16")
    assert t.fast is None and set(t.precision.scalers) == {"model"}
    t.fit()  # a real fp16 step on the CPU: trains, weights stay float32
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    fake = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    t.precision.scalers["model"].load_state_dict(fake)
    t._save()
    with safe_open(str(run / "last.safetensors"), framework="pt") as f:
        saved = json.loads(f.metadata()["trainer_state"])
    assert saved["loss_scale"] == {"model": fake}  # JSON in the trainer state, nothing pickled
    again = make_trainer(run, epochs=2, precision="fp16")
    again.resume()
    assert again.precision.state_dict() == {"model": fake}
    assert "loss_scale" not in again.state
    # resumed under another precision: the scale is dropped, not an error
    other = make_trainer(run, epochs=2, precision="bf16")
    other.resume()
    assert other.precision.state_dict() == {} and "loss_scale" not in other.state


def test_fp16_several_players_each_have_a_scale(monkeypatch):
    _fp16_on_cpu(monkeypatch)
    t = make_trainer(epochs=1, model_kw={"model": "aae"}, precision="fp16")
    t.fit()
    assert set(t.precision.scalers) == set(t.opts) and len(t.opts) > 1
    # overflowing first steps are skipped (counted) while the scale backs off from 2**16
    scales = {p: float(s.scale) for p, s in t.precision.scalers.items()}
    skipped = t.state.get("skipped_by_player", {})
    for p, s in scales.items():
        assert s <= 2.0**16 and (s == 2.0**16 or skipped.get(p, 0) > 0)


# -- the command line ---------------------------------------------------------------------------------
def test_fp16_on_a_cpu_is_one_line_exit_2_nothing_written(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = cli(capsys, "train", "--data", "digits", "--epochs", "1", "--device", "cpu",
                       "--precision", "fp16", "--out", out, *TINY)
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "fp16 needs a CUDA GPU" in lines[0] and "bf16 or fp32" in lines[0]
    with pytest.raises(UsageError, match="CUDA"):
        check_precision("fp16", torch.device("cpu"))


def test_unknown_precision_exits_2(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, err = cli(capsys, "train", "--data", "digits", "--epochs", "1", "--precision", "fp8", "--out", out, *TINY)
    assert code == 2 and not out.exists()
    assert "fp8" in err and "fp32, bf16, fp16" in err and len(err.strip().splitlines()) == 1


def test_resume_may_change_the_precision(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli(capsys, "train", "--data", "digits", "--epochs", "1", "--out", out, *TINY)[0] == 0
    code, _, err = cli(capsys, "train", "--out", out, "--resume", "--epochs", "2", "--precision", "bf16", "--quiet")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["train"]["precision"] == "bf16"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
