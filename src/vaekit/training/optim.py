"""Adam on torch's fused kernel, without ``torch.optim``'s start-up cost.

Constructing the first ``torch.optim`` optimizer imports ``torch._dynamo`` (about a second on a
small CPU, a sizeable part of a short run), and its ``step`` spends ~0.1 ms per call in Python
bookkeeping. This class calls the same fused kernel that ``torch.optim.Adam(fused=True)`` uses,
so updates are identical (tested), and keeps its state as plain tensors for safetensors.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


class Adam:
    """Adam (Kingma and Ba 2015) with L2 weight decay as in ``torch.optim.Adam``.

    ``lr`` may be changed between steps. State: per parameter ``exp_avg``, ``exp_avg_sq`` and a
    float32 ``step`` tensor, exposed by ``state_tensors`` / ``load_state_tensors``.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
        devices = {p.device.type for p in self.params}
        self.fused = devices <= {"cpu", "cuda"} and all(p.dtype in (torch.float32, torch.float64) for p in self.params)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero the gradients in place (their buffers are reused by the next backward), or with
        ``set_to_none`` drop them (the next backward allocates them afresh)."""
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self, *, lr: torch.Tensor | None = None, found_inf: torch.Tensor | None = None) -> None:
        """One update of every parameter that has a gradient.

        ``lr``: a one-element float32 tensor on the parameters' device, read when the update runs,
        in place of ``self.lr``. ``found_inf``: a one-element float32 tensor on that device; where
        it holds 1 the update changes nothing (parameters, moments and step counts stay as they
        were). With both, the fused path never waits for the device, so the step can be recorded
        in a CUDA graph and replayed with new values in those tensors.
        """
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        pick = (lambda xs: xs) if len(idx) == len(self.params) else (lambda xs: [xs[i] for i in idx])
        params, exp_avg, exp_avg_sq, steps = pick(self.params), pick(self.exp_avg), pick(self.exp_avg_sq), pick(self.steps)
        grads = [p.grad for p in params]
        b1, b2 = self.betas
        if self.fused:
            # The fused kernel walks every tensor of a parameter in memory order: a gradient or
            # moment stored in another layout than its parameter (channels-last weights, a
            # gradient assigned from elsewhere) would be updated element against the wrong element.
            grads = _as_layout(params, grads)
            if any(m.stride() != p.stride() for p, m in zip(params, exp_avg)):
                self._match_moments()
                exp_avg, exp_avg_sq = pick(self.exp_avg), pick(self.exp_avg_sq)
            if found_inf is None:
                torch._foreach_add_(steps, 1.0)
            else:  # a skipped update must not count: add 1 - found_inf. (A list, not the one tensor:
                # the single-tensor form of _foreach_add_ cannot be recorded in a CUDA graph, torch 2.11)
                torch._foreach_add_(steps, [1.0 - found_inf.reshape(())] * len(steps))
            torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], steps, amsgrad=False,
                               lr=self.lr if lr is None else lr, beta1=b1, beta2=b2, weight_decay=self.weight_decay,
                               eps=self.eps, maximize=False, found_inf=found_inf)
            return
        if found_inf is not None and float(found_inf) != 0:  # other devices: plain code, may wait
            return
        step_lr = self.lr if lr is None else float(lr)
        torch._foreach_add_(steps, 1.0)
        for p, g, m, v, s in zip(params, grads, exp_avg, exp_avg_sq, steps):
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            t = float(s)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_lr / (1 - b1**t))

    def _match_moments(self) -> None:
        """The moments in their parameters' layouts (after a parameter's layout changed)."""
        self.exp_avg = _as_layout(self.params, self.exp_avg)
        self.exp_avg_sq = _as_layout(self.params, self.exp_avg_sq)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, (m, v, s) in enumerate(zip(self.exp_avg, self.exp_avg_sq, self.steps)):
            out[f"{i}.exp_avg"], out[f"{i}.exp_avg_sq"], out[f"{i}.step"] = m, v, s
        return out

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from ``state_tensors()`` output; shapes must match (else ValueError)."""
        for name, bufs in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq), ("step", self.steps)):
            for i, buf in enumerate(bufs):
                t = state.get(f"{i}.{name}")
                if t is None or t.shape != buf.shape:
                    raise ValueError(f"optimizer state {i}.{name} is missing or has the wrong shape")
                buf.copy_(t)


def _as_layout(params: list[torch.Tensor], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` (each of its parameter's shape), any stored in another layout than its
    parameter replaced by a copy in the parameter's layout."""
    return [t if t.stride() == p.stride() else torch.empty_like(p).copy_(t) for p, t in zip(params, tensors)]
