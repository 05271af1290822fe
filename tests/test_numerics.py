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


# -- every thread: the mode is per thread, and the intra-op workers inherit it when they start --
_CHECK_ALL = """
import sys, torch
{before}
from vaekit.numerics import flush_denormals_in_all_threads
ok = flush_denormals_in_all_threads()
big = torch.full((1 << 20,), 1e-30) * 1e-9  # split among the threads
print(ok, int((big != 0).sum()))
"""


def _run(code: str) -> str:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_flushing_before_any_parallel_work_reaches_every_thread():
    ok, left = _run(_CHECK_ALL.format(before="torch.set_num_threads(2)"))
    assert ok == "True" and left == "0"


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one thread: no workers to start before the call")
def test_workers_started_before_the_call_are_reported_not_flushing():
    # a parallel op starts the workers with the mode off; the call turns on this thread's only
    ok, left = _run(_CHECK_ALL.format(before="torch.set_num_threads(2); (torch.ones(1 << 20) * 2).sum()"))
    assert ok == "False" and int(left) > 0


def test_the_program_flushes_before_it_runs_the_command(monkeypatch):
    import vaekit.cli as cli
    import vaekit.numerics as numerics

    calls = []
    monkeypatch.setattr(numerics, "flush_denormals_in_all_threads", lambda: calls.append("flush") or True)
    monkeypatch.setattr(cli, "main", lambda argv=None: calls.append("main") or 0)
    assert cli.program() == 0 and calls == ["flush", "main"]
