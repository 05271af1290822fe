"""The training step recorded as a CUDA graph and replayed (needs a CUDA GPU; skipped elsewhere).
tests/test_graphed.py checks the same step unrecorded on CPUs."""

import math

import pytest
import torch

from vaekit.config import TrainConfig
from vaekit.errors import TrainingError
from vaekit.models import ModelConfig, build_model
from vaekit.training.graphed import GraphedStep
from vaekit.training.optim import Adam
from vaekit.training.trainer import Trainer

from test_graphed import batches, two_layer_iwae
from test_trainer import tiny_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEV = torch.device("cuda")


def test_replayed_graph_matches_the_eager_step():
    """Same weights, data and noise (the CUDA generator reseeded before each step): a replayed
    graph makes the eager step's updates; recording leaves the weights as they were."""
    a, b = two_layer_iwae().to(DEV), two_layer_iwae().to(DEV)
    oa, ob = Adam(a.parameters(), lr=3e-3), Adam(b.parameters(), lr=3e-3)
    xs = [x.to(DEV) for x in batches(6)]
    eager = GraphedStep(a, oa, xs[0], capture=False)
    torch.cuda.manual_seed(0)
    graphed = GraphedStep(b, ob, xs[0], capture=True)
    assert graphed.graph is not None
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # warm-up undone
    assert all(float(s) == 0.0 for s in ob.steps)
    for i, (x, w) in enumerate(zip(xs, [0.2, 0.2, 0.6, 1.0, 1.0, 1.0])):
        for g in (eager, graphed):
            g.set_lr(3e-3 if i < 4 else 1e-3)
            torch.cuda.manual_seed(10 + i)
            g.step(x, w)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    ga, gb = eager.collect(), graphed.collect()
    assert gb["good"] == 6 and gb["skipped"] == 0
    for k in ("loss", "elbo", "recon", "kl"):
        assert gb["means"][k] == pytest.approx(ga["means"][k], rel=1e-4, abs=1e-4)


def test_replayed_graph_skips_non_finite_steps():
    m = two_layer_iwae().to(DEV)
    opt = Adam(m.parameters(), lr=1e-3)
    good = batches(1)[0].to(DEV)
    g = GraphedStep(m, opt, good)
    g.step(good)
    before = [p.clone() for p in m.parameters()]
    g.step(torch.full_like(good, math.nan))
    assert all(torch.equal(p, q) for p, q in zip(before, m.parameters()))
    g.step(good)
    got = g.collect()
    assert (got["good"], got["skipped"], got["longest_skipped_run"]) == (2, 1, 1)
    assert float(opt.steps[0]) == 2.0


def _trainer(graphs, run_dir=None, epochs=3, **kw):
    data = tiny_data(dynamic=True)
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="iwae", k=3, hidden=[32], latent_dim=4, latent_dim2=2, hidden2=[8],
                                    activation="tanh", gradient_estimator="dreg"), data.spec)
    cfg = TrainConfig(epochs=epochs, batch_size=32, seed=0, kl_warmup=2, device="cuda", cuda_graphs=graphs, **kw)
    return Trainer(model, data, cfg, run_dir, progress=False)


def test_trainer_records_the_step_on_cuda_and_trains_like_eager(tmp_path):
    (tmp_path / "g").mkdir()
    t, ref = _trainer(True, tmp_path / "g", epochs=8), _trainer(False, epochs=8)
    h, h_ref = t.fit(), ref.fit()
    assert t.graphed is not None and t.graphed.graph is not None and ref.graphed is None
    assert h[-1]["step"] == 8 * 7 and t.state["skipped_steps"] == 0
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_iwae"]) for r in h)
    assert h[-1]["val_iwae"] > h[0]["val_iwae"]  # it learns
    # different noise (the recording's warm-up draws some), same model and data: close curves
    assert h[-1]["val_iwae"] == pytest.approx(h_ref[-1]["val_iwae"], abs=1.0)
    # resumable from its checkpoint, on the GPU
    t2 = _trainer(True, tmp_path / "g", epochs=9)
    t2.resume()
    assert t2.state["epoch"] == 8
    h2 = t2.fit()
    assert len(h2) == 9 and math.isfinite(h2[-1]["val_iwae"])


def test_trainer_stops_on_a_run_of_non_finite_steps_on_cuda(tmp_path):
    (tmp_path / "r").mkdir()
    data = tiny_data(dynamic=False)
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="iwae", k=3, hidden=[32], latent_dim=4), data.spec)
    t = Trainer(model, data, TrainConfig(epochs=1, batch_size=32, device="cuda", max_nonfinite=5), tmp_path / "r",
                progress=False)
    t.fit()
    t.cfg.epochs = 2
    t.train_x.fill_(math.nan)
    with pytest.raises(TrainingError, match="non-finite"):
        t.fit()
    assert t.state["epoch"] == 1
