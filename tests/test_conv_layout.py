"""Convolution weights stored channels-last on CPU (training.memory.channels_last): the trainer's
conv models train to the same weights as in the default layout (up to float rounding), and Adam's
fused update stays element-for-element right when a gradient or moment is stored in another layout
than its parameter."""

import pytest
import torch

from vaekit.models import ModelConfig, build_model
from vaekit.config import TrainConfig
from vaekit.training import trainer as trainer_module
from vaekit.training.memory import channels_last
from vaekit.training.optim import Adam
from vaekit.training.trainer import Trainer

from test_trainer import tiny_data

CL = torch.channels_last


def _conv_weight(seed=0):
    return torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("case", ["grad", "moments"])
def test_adam_update_is_the_same_whatever_the_layouts(fused, case):
    """A channels-last parameter with a default-layout gradient ("grad"), or one whose layout changed
    after the optimizer was built ("moments"): the same update as all in the default layout (the fused
    kernel walks memory order, so without the layout check the update lands on the wrong elements)."""
    ref = _conv_weight().requires_grad_()
    p = _conv_weight().contiguous(memory_format=CL).requires_grad_() if case == "grad" else _conv_weight().requires_grad_()
    opt_ref, opt = Adam([ref], lr=0.1), Adam([p], lr=0.1)
    opt_ref.fused = opt.fused = fused
    if case == "moments":
        p.data = p.data.contiguous(memory_format=CL)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        grad = torch.randn(ref.shape, generator=g)
        ref.grad, p.grad = grad.clone(), grad.clone()  # p's gradient in the default layout
        opt_ref.step()
        opt.step()
    assert p.is_contiguous(memory_format=CL)
    torch.testing.assert_close(p.detach(), ref.detach(), rtol=0, atol=1e-7)
    torch.testing.assert_close(opt.exp_avg_sq[0], opt_ref.exp_avg_sq[0], rtol=0, atol=1e-7)


def _conv_trainer(layout: bool, model: str = "vae") -> Trainer:
    data = tiny_data()
    torch.manual_seed(0)
    net = build_model(ModelConfig(model=model, arch="conv", hidden=[8, 16], latent_dim=4), data.spec)
    trainer_module.channels_last = channels_last if layout else (lambda m: False)
    try:
        return Trainer(net, data, TrainConfig(epochs=2, batch_size=32, seed=0, device="cpu"), None, progress=False)
    finally:
        trainer_module.channels_last = channels_last


@pytest.mark.parametrize("model", ["vae", "vaegan"])
def test_conv_models_train_channels_last_alike(model):
    default, last = _conv_trainer(False, model), _conv_trainer(True, model)
    convs = [p for p in last.model.parameters() if p.dim() == 4]
    # (a weight with one input channel, or 1x1 kernels, is both layouts at once)
    assert convs and all(p.is_contiguous(memory_format=CL) for p in convs)
    assert any(not p.is_contiguous() for p in convs)
    assert all(p.is_contiguous() for p in default.model.parameters())
    # the optimizer's moments in the weights' layout from the start (no copies in the update)
    assert all(m.stride() == p.stride() for opt in last.opts.values() for p, m in zip(opt.params, opt.exp_avg))
    # the same gradients up to rounding (weights themselves drift apart under Adam: a weight whose
    # gradient is ~0, e.g. behind a dead ReLU, moves by +-lr on the sign of its rounding noise)
    x = default.train.x[:32]
    grads = []
    for t in (default, last):
        torch.manual_seed(5)
        loss = t.model.loss(x)["loss"]
        grads.append(torch.autograd.grad(loss, list(t.model.parameters()), allow_unused=True))
    assert sum(a is not None for a in grads[0]) >= len(convs)
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    h_default, h_last = default.fit(), last.fit()
    assert len(h_last) == 2
    for a, b in zip(h_default, h_last):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 * abs(a["train_loss"])


def test_models_without_convolutions_are_left_as_they_are():
    data = tiny_data()
    mlp = build_model(ModelConfig(hidden=[32], latent_dim=4), data.spec)
    before = [p.stride() for p in mlp.parameters()]
    assert channels_last(mlp) is False
    assert [p.stride() for p in mlp.parameters()] == before
