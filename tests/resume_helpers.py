"""The interrupted-inside-an-epoch harness the several-player models' resume tests share."""

import pytest
import torch


def interrupt_inside_an_epoch(t, *, save_at: int, kill_at: int) -> None:
    """``t.fit()`` with a checkpoint written right after training step ``save_at`` (checkpoints are
    otherwise off) and a KeyboardInterrupt at step ``kill_at``, as a kill inside an epoch would."""
    calls = {"n": 0}
    owner, attr = (t.fast, "step") if t.fast is not None else (t.model, "train_step")  # the hand-derived AAE step
    step = getattr(owner, attr)

    def dying(x, **kw):
        calls["n"] += 1
        t.cfg.checkpoint_every = 1e-9 if calls["n"] == save_at else 0
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return step(x, **kw)

    setattr(owner, attr, dying)
    with pytest.raises(KeyboardInterrupt):
        t.fit()


def assert_same_training(ref, r, players=()) -> None:
    """Equal weights, and equal Adam second moments for each of ``players``."""
    for (n, p), q in zip(ref.model.state_dict().items(), r.model.state_dict().values()):
        assert torch.equal(p, q), n
    for name in players:
        for a, b in zip(ref.opts[name].exp_avg_sq, r.opts[name].exp_avg_sq):
            assert torch.equal(a, b)
