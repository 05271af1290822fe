"""numerics.float_mode: subnormals flushed and the matmul precision set inside training and
evaluation, both restored exactly afterwards (also on errors and when the caller had set them)."""

import pytest
import torch

from test_trainer import make_trainer, patch_step
from vaekit.metrics import evaluate
from vaekit.models import ModelConfig, build_model
from vaekit.data.spec import DataSpec
from vaekit.numerics import denormals_flushed, float_mode

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush subnormals")


def tiny_product() -> float:
    return (torch.full((1,), 1e-30) * 1e-9).item()


def test_float_mode_flushes_inside_and_restores():
    assert not denormals_flushed() and tiny_product() > 0  # 1e-39 survives as a subnormal
    before = torch.get_float32_matmul_precision()
    with float_mode("medium"):
        assert denormals_flushed() and tiny_product() == 0.0
        assert torch.get_float32_matmul_precision() == "medium"
    assert not denormals_flushed() and torch.get_float32_matmul_precision() == before
    with float_mode(None, flush_denormals=False):
        assert not denormals_flushed()
    with pytest.raises(RuntimeError), float_mode("high"):
        raise RuntimeError("boom")
    assert not denormals_flushed() and torch.get_float32_matmul_precision() == before


def test_a_caller_who_flushes_keeps_flushing():
    torch.set_flush_denormal(True)
    try:
        with float_mode(None, flush_denormals=False):
            pass  # asked not to touch it, and it must not turn it off on the way out either
        assert denormals_flushed()
        with float_mode():
            assert denormals_flushed()
        assert denormals_flushed()
    finally:
        torch.set_flush_denormal(False)


def test_training_and_evaluation_flush_then_restore():
    t = make_trainer(epochs=1, matmul_precision="high")
    seen = []

    def spy(step):
        def wrapped(*a, **kw):
            seen.append((denormals_flushed(), torch.get_float32_matmul_precision()))
            return step(*a, **kw)
        return wrapped

    patch_step(t, spy)
    t.fit()
    assert seen and all(s == (True, "high") for s in seen)
    assert not denormals_flushed() and torch.get_float32_matmul_precision() == "highest"

    m = build_model(ModelConfig(hidden=[16], latent_dim=3), DataSpec((1, 4, 4), "unit"))
    m.decoder.register_forward_hook(lambda mod, i, o: seen.append(denormals_flushed()))
    seen.clear()
    evaluate(m, torch.rand(6, 1, 4, 4), iw_samples=3)
    assert seen and all(seen) and not denormals_flushed()
