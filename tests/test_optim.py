"""vaekit's Adam against torch.optim.Adam: the same updates, fused and fallback paths."""

import pytest
import torch

from vaekit.training.optim import Adam


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_matches_torch_adam(fused, wd):
    ours, ref = _params(), _params()
    opt = Adam(ours, lr=3e-3, weight_decay=wd)
    opt.fused = fused
    ref_opt = torch.optim.Adam(ref, lr=3e-3, weight_decay=wd)
    g = torch.Generator().manual_seed(1)
    for step in range(25):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, q, gr in zip(ours, ref, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        if step == 10:
            opt.lr = ref_opt.param_groups[0]["lr"] = 1e-3
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_state_round_trip_and_shape_check():
    ps = _params()
    opt = Adam(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    state = {k: v.clone() for k, v in opt.state_tensors().items()}
    opt2 = Adam(_params())
    opt2.load_state_tensors(state)
    assert float(opt2.steps[0]) == 1.0 and torch.equal(opt2.exp_avg[0], opt.exp_avg[0])
    state["0.exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match="wrong shape"):
        opt2.load_state_tensors(state)


def test_parameters_without_gradient_are_left_alone():
    ps = _params()
    before = ps[1].detach().clone()
    opt = Adam(ps)
    ps[0].grad = torch.ones_like(ps[0])
    opt.step()
    assert torch.equal(ps[1].detach(), before) and float(opt.steps[1]) == 0.0


@pytest.mark.parametrize("fused", [True, False])
def test_tensor_lr_and_found_inf(fused):
    """A tensor learning rate gives the float one's update; found_inf = 1 leaves every tensor
    (weights, moments, step counts) as it was, and the next good step carries on from there."""
    a, b = _params(), _params()
    oa, ob = Adam(a, lr=2e-3), Adam(b, lr=5.0)  # ob's float lr must be ignored
    oa.fused = ob.fused = fused
    lr, found = torch.tensor(2e-3), torch.zeros(1)
    g = torch.Generator().manual_seed(3)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g) for p in a]
        for p, q, gr in zip(a, b, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        if step == 2:  # a skipped step on b only: b must end equal to a without that step
            found.fill_(1.0)
            before = [t.clone() for t in (*b, *ob.exp_avg, *ob.exp_avg_sq, *ob.steps)]
            ob.step(lr=lr, found_inf=found)
            after = [t.clone() for t in (*b, *ob.exp_avg, *ob.exp_avg_sq, *ob.steps)]
            assert all(torch.equal(x, y) for x, y in zip(before, after))
            found.zero_()
            continue
        oa.step()
        ob.step(lr=lr, found_inf=found)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert [float(s) for s in ob.steps] == [float(s) for s in oa.steps] == [5.0, 5.0]
